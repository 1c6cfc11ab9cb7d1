"""The Lua scripts against the Python reference: same operations, same times, same decisions.

Hypothesis draws a configuration and a sequence of operations; both the memory backend (the
Python rules as they are) and the Redis backend (the Lua port, its clock driven by the test
through the scripts' test-only ``now`` override) run them, and every returned value, every
decision delivered to listeners and every status must be identical, floats bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotaflow.backends.base import Decision, Request
from quotaflow.backends.memory import MemoryBackend
from quotaflow.limits import Concurrent, Limit, Rolling, TokenBucket, fixed_windows

pytestmark = [
    pytest.mark.redis,
    # Hypothesis flags any use of the global `random` module while it generates data, even from
    # another thread (a background thread left by an earlier test, e.g. a client's jittered
    # retry). These strategies do not use it; the warning must not fail the run.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

SCOPE = "proj/model-x"


@st.composite
def limit_sets(draw: st.DrawFn) -> list[Limit]:
    out = [
        Limit(
            "rpm",
            draw(st.integers(1, 4)),
            draw(st.sampled_from([1.0, 2.0])),
            reset=Rolling(draw(st.sampled_from([1, 4, 10, 600]))),
            fail_fast=draw(st.sampled_from([False, False, False, True])),
        ),
        Limit(
            "tpm",
            draw(st.integers(5, 40)),
            1.0,
            metric="input_tokens",
            reset=Rolling(draw(st.sampled_from([2, 10]))),
        ),
    ]
    if draw(st.booleans()):
        out.append(
            Limit(
                "rpd",
                draw(st.integers(2, 12)),
                4.0,
                reset=fixed_windows(4.0),
                fail_fast=draw(st.booleans()),
            )
        )
    if draw(st.booleans()):
        burst = draw(st.sampled_from([None, 1, 3]))
        out.append(Limit("gcra", draw(st.integers(2, 6)), 1.0, reset=TokenBucket(burst)))
    if draw(st.booleans()):
        out.append(Limit("conc", draw(st.integers(1, 3)), 1.0, reset=Concurrent()))
    return out


SUBMIT = st.tuples(
    st.just("submit"),
    st.fixed_dictionaries(
        {
            "rpm": st.sampled_from([1, 1, 1, 1, 1, 2]),
            "tpm": st.one_of(st.integers(0, 12), st.integers(0, 45)),
            "rpd": st.integers(0, 2),
            "gcra": st.integers(0, 4),
            "conc": st.integers(0, 2),
        }
    ),
    st.integers(0, 3),
    st.one_of(st.none(), st.none(), st.sampled_from([0.0, 0.125, 0.5, 2.0])),
    st.sampled_from([False, False, False, False, True]),
    st.one_of(
        st.none(),
        st.none(),
        st.fixed_dictionaries({"rpm": st.integers(0, 3)}),
        st.fixed_dictionaries({"tpm": st.integers(0, 30), "rpm": st.integers(1, 3)}),
    ),
)
OP = st.one_of(
    SUBMIT,
    SUBMIT,
    SUBMIT,
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.001, 0.0625, 0.25, 0.5, 1.0, 1.75])),
    st.tuples(st.just("advance"), st.sampled_from([0.03125, 0.125, 0.375])),
    st.tuples(st.just("dispatch")),
    st.tuples(st.just("dispatch")),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(
        st.just("settle"),
        st.integers(0, 50),
        st.one_of(st.none(), st.fixed_dictionaries({"tpm": st.integers(0, 45)})),
        st.sampled_from([0.0, 0.03125, 0.5]),
    ),
    st.tuples(
        st.just("settle"),
        st.integers(0, 50),
        st.one_of(st.none(), st.fixed_dictionaries({"tpm": st.integers(0, 45)})),
        st.sampled_from([0.0, 0.03125, 0.5]),
    ),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("pause"), st.sampled_from(["rpm", "tpm"]), st.sampled_from([0.125, 1.5])),
    st.tuples(st.just("exhaust"), st.sampled_from(["rpm", "rpd"])),
    st.tuples(st.just("status")),
    st.tuples(st.just("reconfigure"), st.integers(1, 5)),
)


class Twin:
    """Runs each operation on both backends and compares."""

    def __init__(self, sync: Any, mem: MemoryBackend, limits: list[Limit], now: float) -> None:
        self.r, self.m, self.limits, self.now = sync, mem, limits, now
        self.got_r: list[Decision] = []
        self.got_m: list[Decision] = []
        self.r.subscribe(SCOPE, self.got_r.append)
        self.m.subscribe(SCOPE, self.got_m.append)
        self.ids: list[str] = []
        self.granted: list[str] = []
        self.names = {lim.name for lim in limits}

    def both(self, name: str, *args: Any) -> Any:
        try:
            a = getattr(self.m, name)(SCOPE, *args)
        except KeyError as exc:
            a = ("KeyError", str(exc))
        try:
            b = getattr(self.r, name)(SCOPE, *args)
        except KeyError as exc:
            b = ("KeyError", str(exc))
        assert b == a, f"{name}{args} at {self.now}: redis {b} != memory {a}"
        assert self.got_r == self.got_m, f"{name}{args} at {self.now}: listeners differ"
        for d in [a, *self.got_m]:
            if isinstance(d, Decision) and d.outcome == "granted":
                self.granted.append(d.id)
        self.got_r.clear()
        self.got_m.clear()
        return a

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "advance":
            self.now += op[1]
        elif kind == "submit":
            cost = {k: v for k, v in op[1].items() if k in self.names}
            rid = f"r{len(self.ids)}"
            self.ids.append(rid)
            deadline = None if op[3] is None else self.now + op[3]
            self.both("submit", Request(rid, cost, op[2], deadline, op[4], op[5]), self.now)
        elif kind == "dispatch":
            self.both("dispatch", self.now)
        elif kind in ("cancel", "release", "settle") and self.ids:
            pool = self.granted if kind != "cancel" and self.granted and op[1] % 4 else self.ids
            rid = pool[op[1] % len(pool)]
            if kind == "settle":
                self.both("settle", rid, op[2], self.now - op[3], self.now)
            else:
                self.both(kind, rid, self.now)
        elif kind == "pause":
            self.both("pause", op[1], self.now + op[2], self.now)
        elif kind == "exhaust" and op[1] in self.names:
            self.both("exhaust", op[1], self.now)
        elif kind == "status":
            self.both("status", self.now)
        elif kind == "reconfigure":
            self.limits = [lim.with_amount(max(1, lim.amount + op[1] - 3)) for lim in self.limits]
            self.both("configure", self.limits, self.now)


@settings(
    max_examples=int(os.environ.get("QF_DIFF_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limits=limit_sets(),
    ops=st.lists(OP, min_size=20, max_size=100),
    aging=st.sampled_from([None, 0.5, 60.0]),
    depth=st.integers(0, 4),
)
def test_lua_matches_python(
    redis_url: str, namespace: str, limits: list[Limit], ops: list[Any], aging: Any, depth: int
) -> None:
    from quotaflow.backends.redis import RedisBackend

    backend = RedisBackend(
        redis_url,
        namespace=f"{namespace}-{id(ops):x}",
        lease_ttl=1e9,
        aging=aging,
        backfill_depth=depth,
        exact_time=True,
    )
    try:
        now = 1_000.0
        mem = MemoryBackend(aging=aging, backfill_depth=depth)
        mem.configure(SCOPE, limits, now)
        backend.sync.configure(SCOPE, limits, now)
        twin = Twin(backend.sync, mem, limits, now)
        for op in ops:
            twin.run(op)
        twin.both("status", twin.now)
    finally:
        import redis

        c = redis.Redis.from_url(redis_url)
        keys = list(c.scan_iter(match=f"{namespace}-{id(ops):x}:*"))
        if keys:
            c.delete(*keys)
        c.close()
        backend.close()


def _long_run(rng: Any) -> tuple[list[Limit], list[tuple[Any, ...]]]:
    """Deep lines of mixed sizes (tokens bind, requests rarely): backfilling at work."""
    limits = [
        Limit("rpm", rng.randint(6, 30), 1.0, reset=Rolling(rng.choice([4, 10, 600]))),
        Limit("tpm", rng.randint(20, 60), 1.0, metric="input_tokens", reset=Rolling(10)),
    ]
    if rng.random() < 0.3:
        limits.append(Limit("conc", rng.randint(2, 5), 1.0, reset=Concurrent()))
    ops: list[tuple[Any, ...]] = []
    for _ in range(300):
        x = rng.random()
        if x < 0.45:
            cost = {"rpm": 1, "tpm": rng.choice([1, 2, 5, 10, 20, 40]), "conc": 1}
            deadline = rng.choice([None, None, None, 0.5, 2.0])
            floors = rng.choice([None, None, None, {"rpm": 2}, {"tpm": 15}, {"tpm": 30, "rpm": 4}])
            ops.append(("submit", cost, rng.randint(0, 2), deadline, rng.random() < 0.05, floors))
        elif x < 0.65:
            ops.append(("advance", rng.choice([0.0, 0.01, 0.05, 0.1, 0.3])))
        elif x < 0.75:
            ops.append(("dispatch",))
        elif x < 0.85:
            ops.append(("settle", rng.randint(0, 99), None, rng.choice([0.0, 0.01])))
        elif x < 0.92:
            ops.append(("release", rng.randint(0, 99)))
        else:
            ops.append(("cancel", rng.randint(0, 99)))
    return limits, ops


@pytest.mark.parametrize("seed", range(int(os.environ.get("QF_DIFF_SEEDS", "12"))))
def test_lua_matches_python_deep_lines(redis_url: str, namespace: str, seed: int) -> None:
    import random

    from quotaflow.backends.redis import RedisBackend

    rng = random.Random(seed)
    limits, ops = _long_run(rng)
    aging = rng.choice([None, 0.2, 60.0])
    depth = rng.choice([2, 4, 8, 32])
    backend = RedisBackend(
        redis_url,
        namespace=namespace,
        lease_ttl=1e9,
        aging=aging,
        backfill_depth=depth,
        exact_time=True,
    )
    try:
        mem = MemoryBackend(aging=aging, backfill_depth=depth)
        mem.configure(SCOPE, limits, 1_000.0)
        backend.sync.configure(SCOPE, limits, 1_000.0)
        twin = Twin(backend.sync, mem, limits, 1_000.0)
        for op in ops:
            twin.run(op)
        twin.both("status", twin.now)
    finally:
        backend.close()


def _settles_out_of_order(rng: Any) -> tuple[list[Limit], list[tuple[Any, ...]]]:
    """Nobody waits (the fast path answers) while settles land in older slots than the
    newest one settled, as when several processes settle into one window."""
    limits = [
        Limit("rpm", 10**6, 1.0, reset=Rolling(rng.choice([4, 10, 600]))),
        Limit("tpm", 10**7, 1.0, metric="input_tokens", reset=Rolling(rng.choice([2, 10]))),
    ]
    ops: list[tuple[Any, ...]] = []
    for _ in range(300):
        x = rng.random()
        if x < 0.4:
            ops.append(("submit", {"rpm": 1, "tpm": rng.choice([0, 5, 20])}, 0, None, False, None))
        elif x < 0.55:
            ops.append(("advance", rng.choice([0.0, 0.01, 0.05, 0.1, 0.3])))
        elif x < 0.97:
            actual = rng.choice([None, {}, {"tpm": 0}, {"tpm": rng.randint(0, 40)}])
            back = rng.choice([0.0, 0.01, 0.05, 0.1, 0.2, 0.45, 0.9, 1.5])
            ops.append(("settle", rng.randint(0, 99), actual, back))
        else:
            ops.append(("status",))  # the full path: the tails move into the log
    return limits, ops


def _replay(
    redis_url: str,
    namespace: str,
    seed: int,
    make: Callable[[Any], tuple[list[Limit], list[tuple[Any, ...]]]],
    status_share: float = 0.0,
) -> None:
    """Run ``make``'s operations on the Lua script and on the Python model alike (``Twin``
    compares every answer), with a status of both after a ``status_share`` of them."""
    import random

    from quotaflow.backends.redis import RedisBackend

    rng = random.Random(seed)
    limits, ops = make(rng)
    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=1e9, exact_time=True)
    try:
        mem = MemoryBackend()
        mem.configure(SCOPE, limits, 1_000.0)
        backend.sync.configure(SCOPE, limits, 1_000.0)
        twin = Twin(backend.sync, mem, limits, 1_000.0)
        for op in ops:
            twin.run(op)
            if status_share and rng.random() < status_share:
                twin.both("status", twin.now)
        twin.both("status", twin.now)
    finally:
        backend.close()


@pytest.mark.parametrize("seed", range(int(os.environ.get("QF_DIFF_SEEDS", "12"))))
def test_lua_matches_python_settles_out_of_order(redis_url: str, namespace: str, seed: int) -> None:
    _replay(redis_url, namespace, seed, _settles_out_of_order, status_share=0.1)


def _fronts_return(rng: Any) -> tuple[list[Limit], list[tuple[Any, ...]]]:
    """A tier's shape at a fast clock: narrow slots, windows of different periods and a
    calendar window in one scope, nobody waiting for long, so that the fast path settles into
    new slots while the log's front has come back (it drops the front, as the full path does)
    and the caps bind on what is left."""
    limits = [
        Limit("rpm", rng.randint(8, 40), 1.0, reset=Rolling(rng.choice([100, 600]))),
        Limit(
            "tpm",
            rng.randint(100, 600),
            rng.choice([0.5, 2.0]),
            metric="input_tokens",
            reset=Rolling(rng.choice([50, 600])),
        ),
        Limit("rpd", rng.randint(150, 400), 4.0, reset=fixed_windows(4.0)),
    ]
    ops: list[tuple[Any, ...]] = []
    for _ in range(400):
        x = rng.random()
        if x < 0.4:
            cost = {"rpm": 1, "tpm": rng.choice([0, 5, 20, 50]), "rpd": 1}
            deadline = rng.choice([None, None, 0.05, 0.5])
            ops.append(("submit", cost, 0, deadline, False, None))
        elif x < 0.6:
            ops.append(("advance", rng.choice([0.0, 0.001, 0.002, 0.005, 0.02, 0.1, 0.6])))
        elif x < 0.93:
            actual = rng.choice([None, {"tpm": rng.randint(0, 60)}, {"tpm": 0, "rpm": 1}])
            back = rng.choice([0.0, 0.0, 0.001, 0.004, 0.03, 0.3, 1.2])
            ops.append(("settle", rng.randint(0, 99), actual, back))
        elif x < 0.97:
            ops.append(("dispatch",))
        else:
            ops.append(("status",))
    return limits, ops


@pytest.mark.parametrize("seed", range(int(os.environ.get("QF_DIFF_SEEDS", "12"))))
def test_lua_matches_python_fronts_return(redis_url: str, namespace: str, seed: int) -> None:
    _replay(redis_url, namespace, seed, _fronts_return)
