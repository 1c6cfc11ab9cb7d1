"""Each bug found in review gets the test that would have caught it."""

from __future__ import annotations

import anyio
import pytest

from quotaflow import (
    RPD,
    RPM,
    CannotFitError,
    Concurrent,
    Limit,
    Limiter,
    ManualClock,
    MemoryBackend,
    QuotaExhaustedError,
    SyncLimiter,
    TokenBucket,
    WouldBlockError,
)
from quotaflow.backends.base import Request


@pytest.mark.anyio
async def test_async_limiter_is_woken_when_a_sharing_sync_limiter_configured_first() -> None:
    clock = ManualClock(0.0)
    lim = Limiter(None, quotas={"m": [RPM(1, 10.0)]}, clock=clock)
    sync = SyncLimiter.sharing(lim)
    with sync.acquire("m") as p:  # the sync side touches the scope first
        p.mark_sent()
    done: list[int] = []

    async def waiter() -> None:
        await (await lim.acquire("m")).settle()
        done.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        clock.advance(11.0)
    assert done == [1]


@pytest.mark.anyio
async def test_day_count_survives_other_spellings_of_a_model() -> None:
    lim = Limiter("tier1", overrides={"gemini-2.5-pro": {"rpd": 3}}, clock=ManualClock(1e9))
    names = ["gemini-2.5-pro", "models/gemini-2.5-pro", "gemini-2.5-pro-latest"]
    for name in names:
        await (await lim.acquire(name)).settle()
    with pytest.raises(QuotaExhaustedError):
        await lim.acquire("models/gemini-2.5-pro")
    assert (await lim.status("gemini-2.5-pro"))["rpd"].used == 3


@pytest.mark.anyio
async def test_calibrated_limit_holds_for_every_spelling() -> None:
    lim = Limiter("tier1", clock=ManualClock(0.0))
    held = [await lim.acquire("gemini-2.5-flash")]
    assert await lim.set_limit("gemini-2.5-flash", "rpm", 2) == 1000
    held.append(await lim.acquire("models/gemini-2.5-flash"))
    with pytest.raises(WouldBlockError):
        await lim.acquire_nowait("gemini-2.5-flash-latest")
    assert {x.name: x.amount for x in lim.quota("models/gemini-2.5-flash")}["rpm"] == 2


def test_head_blocked_on_concurrency_is_never_passed() -> None:
    b = MemoryBackend()
    b.configure("s", [Limit("conc", 2, 60.0, reset=Concurrent())], 0.0)
    assert b.submit("s", Request("small0", {"conc": 1}), 0.0).outcome == "granted"
    assert b.submit("s", Request("big", {"conc": 2}), 0.0).outcome == "waiting"
    assert b.submit("s", Request("small1", {"conc": 1}), 1.0).outcome == "waiting"
    got: dict[str, str] = {}
    b.subscribe("s", lambda d: got.__setitem__(d.id, d.outcome))
    b.settle("s", "small0", None, 1.0, 1.0)
    assert got.get("big") == "granted"


@pytest.mark.anyio
async def test_set_limit_changes_a_token_bucket_rate() -> None:
    clock = ManualClock(0.0)
    lim = Limiter(None, quotas={"m": [Limit("rps", 10, 1.0, reset=TokenBucket())]}, clock=clock)
    await (await lim.acquire("m")).settle()
    await lim.set_limit("m", "rps", 2)
    admitted = 0
    for _ in range(20):
        try:
            await (await lim.acquire_nowait("m")).settle()
            admitted += 1
        except WouldBlockError:
            break
    assert admitted <= 2
    assert (await lim.status("m"))["rps"].limit == 2


@pytest.mark.anyio
async def test_fail_fast_works_on_rolling_limits() -> None:
    lim = Limiter(
        None, quotas={"m": [Limit("rph", 1, 3600.0, fail_fast=True)]}, clock=ManualClock(0.0)
    )
    await (await lim.acquire("m")).settle()
    with pytest.raises(QuotaExhaustedError) as info:
        await lim.acquire("m", timeout=10_000)
    assert info.value.retry_after is not None and info.value.retry_after > 3000


@pytest.mark.anyio
async def test_zero_token_bucket_admits_nothing() -> None:
    lim = Limiter(
        None,
        quotas={"m": [Limit("rpm", 0, 60.0, reset=TokenBucket(burst=5))]},
        clock=ManualClock(0.0),
    )
    with pytest.raises(CannotFitError):
        await lim.acquire("m")
    assert (await lim.status("m"))["rpm"].limit == 0


def test_rpd_preset_calendars_compare_equal() -> None:
    assert RPD(5) == RPD(5)
    assert RPD(5).reset is RPD(6).reset


def test_close_unsubscribes_from_a_shared_backend() -> None:
    backend = MemoryBackend()
    lim = Limiter(None, quotas={"m": [RPM(5)]}, backend=backend)
    anyio.run(lim.status, "m")
    assert backend._listeners["default/m"]
    lim.close()
    assert not backend._listeners["default/m"]


@pytest.mark.anyio
async def test_a_dropped_permit_gives_back_what_it_holds() -> None:
    import gc

    lim = Limiter(None, quotas={"m": [RPM(5, 60.0)]}, clock=ManualClock(0.0))
    permit = await lim.acquire("m")
    assert (await lim.status("m"))["rpm"].used == 1
    del permit  # never sent, never released
    gc.collect()
    assert (await lim.status("m"))["rpm"].used == 0
    sent = await lim.acquire("m")
    sent.mark_sent()
    del sent  # sent: keeps its request count, settled with the estimate
    gc.collect()
    status = await lim.status("m")
    assert (status["rpm"].used, status["rpm"].in_flight) == (1, 0)


@pytest.mark.parametrize("lane", [True, False], ids=["lane grant", "full-rule grant"])
def test_a_permit_collected_inside_the_backends_lock_does_not_deadlock(lane: bool) -> None:
    """A permit in a reference cycle is freed by the cyclic GC, which runs at any allocation:
    also inside the memory backend's locked section, on the thread that holds the (not
    reentrant) mutex. Its finalizer must not wait for that mutex; what it returns comes back
    when the section ends."""
    import gc

    backend = MemoryBackend()
    lim = SyncLimiter(None, quotas={"m": [RPM(5, 60.0)]}, backend=backend, clock=ManualClock(0.0))
    lim.acquire_nowait("m").release()  # configures; the lane opens
    cost = None if lane else {"requests": 1, "images": 0}
    cycle: list[object] = [lim.acquire_nowait("m", cost=cost)]
    cycle.append(cycle)  # only the cyclic GC frees it
    if not lane:
        assert backend.lane("default/m").lease_of(cycle[0].id) == 0  # type: ignore[attr-defined]
    del cycle
    gc.disable()
    try:
        with backend.lock:  # as in any operation of the backend
            gc.collect()  # the finalizer runs here, on this thread, with the mutex held
    finally:
        gc.enable()
    assert lim.status("m")["rpm"].used == 0
    assert lim.status("m")["rpm"].in_flight == 0


def test_many_permits_collected_inside_the_lock_all_come_back() -> None:
    """A thousand finalizers queued inside one locked section are ended in one loop after it,
    not one nested inside the other (which hit the recursion limit and lost the rest)."""
    import gc

    backend = MemoryBackend()
    lim = SyncLimiter(None, quotas={"m": [RPM(10_000, 60.0)]}, backend=backend)
    lim.acquire_nowait("m").release()
    gc.disable()
    try:
        for _ in range(1000):
            cycle: list[object] = [lim.acquire_nowait("m")]
            cycle.append(cycle)
        del cycle
        assert lim.status("m")["rpm"].in_flight == 1000
        with backend.lock:
            gc.collect()
            assert len(backend.lock.deferred) == 1000  # queued, not waited for
    finally:
        gc.enable()
    assert not backend.lock.deferred
    assert lim.status("m")["rpm"].in_flight == 0
    assert lim.status("m")["rpm"].used == 0


def test_a_permit_dropped_while_another_thread_holds_the_lock_comes_back() -> None:
    """The finalizer never waits for the mutex: the thread holding it ends the lease when it
    lets go."""
    import gc
    import threading

    backend = MemoryBackend()
    lim = SyncLimiter(None, quotas={"m": [RPM(50, 60.0)]}, backend=backend)
    lim.acquire_nowait("m").release()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with backend.lock:
            holding.set()
            release.wait(10)

    gc.disable()  # the cycle below is collected where the test says, not before
    try:
        cycle: list[object] = [lim.acquire_nowait("m")]
        cycle.append(cycle)  # only the cyclic GC frees it
        del cycle
        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(10)
        gc.collect()  # here, on this thread: queued at once (it would otherwise wait for hold)
        assert len(backend.lock.deferred) == 1
    finally:
        gc.enable()
        release.set()
    holder.join(10)
    assert not backend.lock.deferred
    assert lim.status("m")["rpm"].in_flight == 0


def test_a_failing_listener_does_not_fail_whoever_ends_dropped_leases(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Dropped leases are ended by whichever call gives the mutex back; a listener that raises
    on the decisions this makes is logged, and neither that call nor the waiter it serves
    fails."""
    import gc
    import threading

    backend = MemoryBackend()
    lim = SyncLimiter(None, quotas={"m": [RPM(1, 60.0)]}, backend=backend)
    held = lim.acquire_nowait("m")
    got: list[object] = []
    waiter = threading.Thread(target=_wait, args=(lim, got), daemon=True)
    waiter.start()
    for _ in range(500):  # until the waiter is in line
        if lim.waiting("m"):
            break
        threading.Event().wait(0.01)
    assert lim.waiting("m") == 1

    def broken(decision: object) -> None:
        raise RuntimeError("listener failed")

    backend.subscribe(lim._scope("m")[0], broken)
    gc.disable()
    try:
        cycle: list[object] = [held]
        cycle.append(cycle)
        del held, cycle
        with backend.lock:  # no exception may come out of this block
            gc.collect()
    finally:
        gc.enable()
    waiter.join(10)
    assert not waiter.is_alive() and got[-1] == "granted"
    assert "listener of default/m failed" in caplog.text


def _wait(lim: SyncLimiter, got: list[object]) -> None:
    with lim.acquire("m") as permit:  # waits until the held lease comes back
        got.append(permit.phase)
