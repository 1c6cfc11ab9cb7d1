"""The fast lane makes exactly the decisions of the exact rule, and leaves the same state.

A :class:`MemoryBackend` (which opens the lane whenever nobody waits) and a bare
:class:`ScopeState` (the reference, no lane) get the same operations at the same times; a plain
request first tries the lane, as the limiters do. Every decision and every limit's level must
match after every step.
"""

from __future__ import annotations

import sys
import threading

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quotaflow import Limiter, ManualClock, SyncLimiter, WouldBlockError
from quotaflow.backends.base import Request
from quotaflow.backends.memory import MemoryBackend
from quotaflow.limits import RPM, TPM, Concurrent, Limit, fixed_windows
from quotaflow.scheduler.lane import FastLane
from quotaflow.scheduler.scope import ScopeState

PERIOD = 1.0

QUOTAS = {
    "rolling": [RPM(6, PERIOD), TPM(60, PERIOD)],
    "and images": [RPM(6, PERIOD), TPM(60, PERIOD), Limit("ipm", 4, PERIOD, metric="images")],
    "with a day": [
        RPM(6, PERIOD),
        TPM(60, PERIOD),
        Limit("rpd", 15, 3.0, "requests", fixed_windows(3.0), fail_fast=True),
        Limit("tpd", 150, 3.0, "input_tokens", fixed_windows(3.0), fail_fast=True),
    ],
    "days only": [
        Limit("rpd", 8, 0.5, "requests", fixed_windows(0.5), fail_fast=True),
        Limit("tpd", 80, 0.5, "input_tokens", fixed_windows(0.5), fail_fast=True),
    ],
    "two widths": [RPM(6, PERIOD), TPM(60, 2 * PERIOD)],
    "concurrency": [RPM(6, PERIOD), Limit("conc", 3, 1.0, reset=Concurrent())],
}

acquire = st.tuples(st.just("acquire"), st.sampled_from([0, 5, 10, 20, 30]), st.booleans())
op = st.one_of(
    acquire,
    acquire,
    acquire,
    st.tuples(st.just("settle"), st.integers(0, 30), st.integers(-1, 40), st.booleans()),
    st.tuples(st.just("settle"), st.integers(0, 30), st.integers(-1, 40), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(st.just("wait"), st.floats(0, 0.6)),  # time passes and a timer fires
    st.tuples(st.just("tick"), st.floats(0, 0.6)),  # time passes, nobody looks
    st.tuples(st.just("tick"), st.sampled_from([0.001, 0.002, 0.01])),
    st.tuples(st.just("pause"), st.floats(0, 0.5)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(
        st.just("status"),
    ),
)


def _take(backend: MemoryBackend, lane: FastLane, tokens: int, now: float) -> str | None:
    """A grant through the lane, as :class:`~quotaflow.scheduler.gate.LaneGate` makes it: its lease
    id."""
    with backend.lock:
        lease = lane.take(tokens, now, lane.version)
    return lane.lease_id(lease) if lease else None


@settings(max_examples=300, deadline=None)
@example(  # two grants in a new day window, one settled as counted a hair before its grant
    quota="days only",
    ops=[
        ("wait", 0.5),
        ("acquire", 0, False),
        ("acquire", 0, False),
        ("settle", 0, 0, False),
        ("settle", 0, 0, True),
        ("status",),
    ],
)
@given(
    quota=st.sampled_from(
        [
            "rolling",
            "rolling",
            "and images",
            "with a day",
            "with a day",
            "days only",
            "two widths",
            "concurrency",
        ]
    ),
    ops=st.lists(op, min_size=5, max_size=80),
)
def test_lane_decides_like_the_exact_rule(quota: str, ops: list[tuple[object, ...]]) -> None:
    limits = QUOTAS[quota]
    now = 0.0
    backend = MemoryBackend(aging=None, backfill_depth=4)
    backend.configure("s", limits, now)
    ref = ScopeState(limits, now, aging=None, backfill_depth=4)
    # leases held: the reference's id, the backend's, when granted
    granted: list[tuple[str, str, float]] = []
    waiting: list[str] = []
    for n, (kind, *args) in enumerate(ops):
        rid = f"r{n}"
        if kind == "acquire":
            tokens, nowait = int(args[0]), bool(args[1])  # type: ignore[call-overload]
            cost = {
                lim.name: {"requests": 1, "input_tokens": tokens}.get(lim.metric, 0)
                for lim in limits
            }
            req = Request(rid, cost, 0, None, nowait)
            expected, _ = ref.submit(req, now)
            lane_id = _take(backend, backend.lane("s"), tokens, now)
            if lane_id is not None:
                assert expected.outcome == "granted", "the lane granted what the rule would not"
                got = expected
            else:
                got = backend.submit("s", req, now)
            assert (got.outcome, got.reason) == (expected.outcome, expected.reason)
            if got.outcome == "granted":
                granted.append((rid, lane_id or rid, now))
            elif got.outcome == "waiting":
                waiting.append(rid)
        elif kind in ("settle", "release") and granted:
            lease, held, since = granted.pop(int(args[0]) % len(granted))  # type: ignore[call-overload]
            if kind == "settle":
                real, early = int(args[1]), bool(args[2])  # type: ignore[call-overload]
                actual = (
                    None
                    if real < 0
                    else {
                        lim.name: {"requests": int(real % 5 > 0), "images": real % 3}.get(
                            lim.metric, real
                        )
                        for lim in limits[: len(limits) - (real % 7 == 0)]  # some: partial
                    }
                )
                # counted a hair early, but never before it was granted
                at = max(since, now - 0.004) if early else now
                if real % 2:  # the backend's general way
                    backend.settle("s", held, actual, at, now)
                else:  # the quick way the permits of the lane use: input tokens only
                    backend.settle_tokens("s", held, None if real < 0 else real, at, now)
                    actual = (
                        None if real < 0 else {k: real for k in ("tpm", "tpd") if k in ref.buckets}
                    )
                ref.settle(lease, actual, at, now)
            else:
                backend.release("s", held, now)
                ref.release(lease, now)
        elif kind == "cancel" and waiting:
            rid_w = waiting.pop(int(args[0]) % len(waiting))  # type: ignore[call-overload]
            won = backend.cancel("s", rid_w, now)
            won_ref, _ = ref.cancel(rid_w, now)
            assert (won is None) == (won_ref is None)
        elif kind == "wait":
            now += float(args[0])  # type: ignore[arg-type]
            backend.dispatch("s", now)
            for d in ref.dispatch(now, timer=True):
                if d.outcome == "granted" and d.id in waiting:
                    waiting.remove(d.id)
                    granted.append((d.id, d.id, now))
        elif kind == "tick":
            now += float(args[0])  # type: ignore[arg-type]
        elif kind == "pause":
            first = limits[0].name
            backend.pause("s", first, now + float(args[0]), now)  # type: ignore[arg-type]
            ref.pause(first, now + float(args[0]), now)  # type: ignore[arg-type]
        lane = backend.lane("s")
        if lane.open:  # the lane's figures are lower bounds of the exact free room
            for lim in limits:
                room = ref.buckets[lim.name].room(now)
                if lim.metric == "requests":
                    assert lane.room_requests <= room, f"after step {n}: {kind}"
                elif lim.metric == "input_tokens":
                    assert lane.room_tokens <= room, f"after step {n}: {kind}"
        if kind == "status":  # writes the lane out (and reopens it): everything must agree
            assert backend.status("s", now) == ref.status(now), f"after step {n}"
    assert backend.status("s", now) == ref.status(now)


def test_the_lane_serves_plain_requests_and_steps_aside_for_the_line() -> None:
    clock = ManualClock(0.0)
    backend = MemoryBackend()
    lim = SyncLimiter(
        None, quotas={"m": [RPM(3, 1.0), TPM(100, 1.0)]}, backend=backend, clock=clock
    )
    with lim.acquire("m", tokens=10) as first:  # the first acquire configures (slow path)
        first.settle(input_tokens=8)
    lane = backend.lane("default/m")
    assert lane.open
    permit = lim.acquire_nowait("m", tokens=50)
    assert lane.lease_of(permit.id) in lane.leases  # served by the lane
    assert lim.status("m")["tpm"].in_flight == 50  # status writes the lane out first
    permit.settle(input_tokens=20)
    assert lim.status("m")["tpm"].used == 28
    with pytest.raises(Exception, match="no room"):
        lim.acquire_nowait("m", tokens=80)  # 28 + 80 > 100: the exact rule refuses
    clock.advance(1.01)
    assert lim.status("m")["tpm"].used == 0


@pytest.mark.anyio
async def test_a_calibrated_limit_reaches_the_lane() -> None:
    clock = ManualClock(0.0)
    lim = Limiter(None, quotas={"m": [RPM(10, 1.0)]}, clock=clock)
    await (await lim.acquire("m")).settle()
    await lim.set_limit("m", "rpm", 2)  # e.g. a 429's quotaValue
    await (await lim.acquire("m")).settle()
    with pytest.raises(Exception, match="no room"):
        await lim.acquire_nowait("m")
    with anyio.fail_after(5):
        assert (await lim.status("m"))["rpm"].limit == 2


@pytest.mark.parametrize("quota", ["with a day", "days only"])
def test_settles_on_both_sides_of_a_reset_count_in_their_own_windows(quota: str) -> None:
    limits = QUOTAS[quota]
    backend = MemoryBackend()
    backend.configure("s", limits, 0.0)
    ref = ScopeState(limits, 0.0, aging=60.0, backfill_depth=32)
    lane = backend.lane("s")
    for rid in ("a", "b"):
        assert _take(backend, lane, 10, 0.0)
        ref.submit(
            Request(rid, {lim.name: 1 if lim.metric == "requests" else 10 for lim in limits}), 0.0
        )
    backend.status("s", 0.0)  # writes the lane out; it reopens at once
    c, d = _take(backend, lane, 10, 0.01), _take(backend, lane, 10, 0.01)
    assert c is not None and d is not None
    for rid in ("c", "d"):
        ref.submit(
            Request(rid, {lim.name: 1 if lim.metric == "requests" else 10 for lim in limits}), 0.01
        )
    day = limits[-1].reset.window_end(0.0)  # type: ignore[union-attr]
    backend.settle("s", c, None, day - 0.1, day - 0.1)
    ref.settle("c", None, day - 0.1, day - 0.1)
    backend.settle("s", d, None, day + 0.05, day + 0.05)  # the day turned in between
    ref.settle("d", None, day + 0.05, day + 0.05)
    assert backend.status("s", day + 0.05) == ref.status(day + 0.05)


def test_the_lane_stays_closed_for_kinds_it_does_not_serve() -> None:
    for quota in ("two widths", "concurrency"):
        backend = MemoryBackend()
        backend.configure("s", QUOTAS[quota], 0.0)
        assert not backend.lane("s").open
        assert _take(backend, backend.lane("s"), 1, 0.0) is None


def test_the_transports_cost_of_one_request_takes_the_lane_and_other_costs_do_not() -> None:
    backend = MemoryBackend()
    lim = SyncLimiter(None, quotas={"m": [RPM(10, 60.0), TPM(1000, 60.0)]}, backend=backend)
    lim.acquire_nowait("m", tokens=1).settle()  # configures the scope
    lane = backend.lane("default/m")
    one = lim.acquire_nowait("m", tokens=5, cost={"requests": 1})
    assert lane.lease_of(one.id) in lane.leases
    two = lim.acquire_nowait("m", tokens=5, cost={"requests": 2})  # a batch: the full rule
    assert lane.lease_of(two.id) == 0
    assert lim.status("m")["rpm"].used == 4
    with pytest.raises(ValueError, match="requests"):
        lim.acquire_nowait("m", cost={"requests": True})  # validated by the full rule


def test_threads_sharing_the_lane_lose_nothing() -> None:
    clock = ManualClock(0.0)
    backend = MemoryBackend()
    lim = SyncLimiter(
        None, quotas={"m": [RPM(10**6, 1.0), TPM(10**9, 1.0)]}, backend=backend, clock=clock
    )
    totals: list[int] = []  # per thread: the input tokens it settled

    def work(seed: int) -> None:
        total = 0
        for i in range(500):
            permit = lim.acquire_nowait("m", tokens=10 + (seed + i) % 7)
            if i % 5 == 0:
                permit.release()
            else:
                permit.settle(input_tokens=(seed + i) % 11)
                total += (seed + i) % 11
        totals.append(total)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = lim.status("m")
    assert status["rpm"].in_flight == status["tpm"].in_flight == 0
    assert status["rpm"].used == 4 * 400
    assert status["tpm"].used == sum(totals)


def test_a_zero_settle_then_a_late_one_anchors_each_in_its_own_slot() -> None:
    clock = ManualClock(0.0)
    backend = MemoryBackend()
    lim = SyncLimiter(None, quotas={"m": [RPM(6, 1.0), TPM(60, 1.0)]}, backend=backend, clock=clock)
    lim.acquire_nowait("m").release()  # configures; the lane opens
    p1, p2 = lim.acquire_nowait("m"), lim.acquire_nowait("m")
    lane = backend.lane("default/m")
    assert lane.lease_of(p1.id) in lane.leases
    clock.advance(0.1)
    p2.mark_response_started()  # the server counted p2 at t=0.1
    clock.advance(0.4)
    p1.settle(requests=0)  # the server did not count p1
    p2.settle()  # arrives late: anchored at 0.1, not 0.5
    clock.advance(0.7)  # t=1.2: p2's request came back at about 1.1017
    assert lim.status("m")["rpm"].used == 0


def test_a_settle_naming_one_of_two_token_limits_keeps_the_other_as_granted() -> None:
    limits = [RPM(6, 1.0), TPM(60, 1.0), Limit("tpd", 150, 3.0, "input_tokens", fixed_windows(3.0))]
    backend = MemoryBackend(aging=None)
    backend.configure("s", limits, 0.0)
    ref = ScopeState(limits, 0.0, aging=None, backfill_depth=32)
    held = _take(backend, backend.lane("s"), 10, 0.0)
    assert held is not None
    ref.submit(Request("a", {"rpm": 1, "tpm": 10, "tpd": 10}), 0.0)
    backend.settle("s", held, {"tpm": 3}, 0.1, 0.1)  # the Backend protocol allows it
    ref.settle("a", {"tpm": 3}, 0.1, 0.1)
    assert backend.status("s", 0.2) == ref.status(0.2)


@pytest.mark.parametrize("requests", [1.0, True, "1"])
def test_a_request_cost_that_is_not_an_int_fails_the_same_with_the_lane(requests: object) -> None:
    lim = SyncLimiter(None, quotas={"m": [RPM(6, 1.0)]}, backend=MemoryBackend())
    with pytest.raises(ValueError):  # cold: the full rule
        lim.acquire_nowait("m", cost={"requests": requests})  # type: ignore[dict-item]
    lim.acquire_nowait("m").settle()  # the lane is open now
    with pytest.raises(ValueError):
        lim.acquire_nowait("m", cost={"requests": requests})  # type: ignore[dict-item]


def test_a_limiter_whose_limits_are_not_the_scopes_keeps_to_the_full_rule() -> None:
    from quotaflow import Share

    backend = MemoryBackend()
    quotas = {"m": [RPM(100, 60.0)]}
    plain = SyncLimiter(None, quotas=quotas, backend=backend)
    plain.acquire_nowait("m").settle()
    lane = backend.lane("default/m")
    assert plain._core.lanes  # the plain limiter's limits are the scope's: it uses the lane
    shared = SyncLimiter(None, quotas=quotas, backend=backend, shares={"a": Share(ceiling=0.5)})
    shared.acquire_nowait("m", agent="a").settle()  # adds the agent's limit to the scope
    assert "rpm@a" in lane.scope_limits
    for _ in range(3):
        plain.acquire_nowait("m").settle()  # the full rule: charges only "rpm"
    status = shared.status("m")
    assert (status["rpm"].used, status["rpm@a"].used) == (5, 1)


def test_threads_on_the_lane_and_on_the_general_way_at_once_lose_nothing() -> None:
    """Lane grants and settles (under the backend's mutex) while other threads close and
    reopen the lane: status reads, requests only the full rule takes,
    releases. Thread switches are forced often; every amount must come back exactly."""
    clock = ManualClock(0.0)
    backend = MemoryBackend()
    lim = SyncLimiter(
        None,
        quotas={"m": [RPM(10**6, 1.0), TPM(10**9, 1.0), Limit("ipm", 10**6, 1.0, "images")]},
        backend=backend,
        clock=clock,
    )
    lim.acquire_nowait("m").settle(input_tokens=0)  # configures; the lane opens
    totals: list[tuple[int, int, int]] = []  # per thread: requests, tokens, images settled
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        requests = tokens = images = 0
        try:
            for i in range(10_000):
                k = (seed * 7 + i) % 10
                if seed % 2 and k == 0:
                    lim.status("m")  # writes the lane out and reopens it
                    continue
                cost = {"requests": 1, "images": 1} if seed % 2 and k == 1 else None
                permit = lim.acquire_nowait("m", tokens=1 + k, cost=cost)
                if k == 2:
                    permit.release()
                    continue
                permit.settle(input_tokens=k)
                requests, tokens, images = requests + 1, tokens + k, images + (cost is not None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        totals.append((requests, tokens, images))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    status = lim.status("m")
    assert status["rpm"].in_flight == status["tpm"].in_flight == status["ipm"].in_flight == 0
    assert status["rpm"].used == 1 + sum(t[0] for t in totals)
    assert status["tpm"].used == sum(t[1] for t in totals)
    assert status["ipm"].used == sum(t[2] for t in totals) > 0


def test_a_lane_grant_for_another_set_of_limits_is_refused() -> None:
    """The gate passes the version of the limits it knows; the lane compares it in the same
    step that grants (a reconfiguration between the gate's check and the grant is caught)."""
    backend = MemoryBackend()
    backend.configure("s", [RPM(5, 1.0)], 0.0)
    lane = backend.lane("s")
    assert lane.open
    assert lane.take(0, 0.0, lane.version + 1) == 0
    assert lane.take(0, 0.0, lane.version) > 0


@pytest.mark.anyio
async def test_a_backend_whose_lock_is_a_plain_lock_takes_the_general_way() -> None:
    """A MemoryBackend whose ``lock`` was replaced by a ``threading.Lock`` (no ``take``/``give``
    for the gate) still limits, through the full rule only."""
    backend = MemoryBackend()
    backend.lock = threading.Lock()  # type: ignore[assignment]
    lim = Limiter(None, quotas={"m": [RPM(3)]}, backend=backend, clock=ManualClock(0.0))
    for _ in range(3):
        await (await lim.acquire("m")).settle()
    assert not lim._core.lanes
    with pytest.raises(WouldBlockError):
        await lim.acquire_nowait("m")


def test_lease_ids_the_lane_never_spelled_are_not_its_own() -> None:
    backend = MemoryBackend()
    backend.configure("s", [RPM(5, 1.0)], 0.0)
    lane = backend.lane("s")
    lease = lane.take(0, 0.0, lane.version)
    assert lane.lease_of(lane.lease_id(lease)) == lease
    for other in ("05", "+5", " 5", "5 ", "\u00b2", "\u0665", "", "0", "x"):
        assert lane.lease_of(lane.prefix + other.replace("5", str(lease))) == 0, other
    assert lane.lease_of("r" + lane.lease_id(lease)) == 0
    backend.release("s", lane.prefix + "0" + str(lease), 0.0)  # not this lease: no effect
    assert backend.status("s", 0.0)["rpm"].in_flight == 1
