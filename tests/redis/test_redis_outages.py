"""State loss and outages of Redis, in one process with several backends (as a fleet would be):
use comes back, nothing stays held, callers neither fail nor hang past their deadlines.

Each test starts a Redis of its own (they restart, flush, pause and kill its clients).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
import pytest
import redis
from redis_helpers import read_until, spawn_worker, wait_stopped

from quotaflow import RPM, TPM, Concurrent, Limit, Limiter, QuotaTimeoutError
from quotaflow.backends.redis import RedisBackend

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    """The Redis backend runs on trio through its sync face in a thread (the fleet tests in
    ``test_redis_fleet.py`` cover trio); these fault runs take seconds each, so asyncio only."""
    return "asyncio"


PERIOD = 1.0
L = 20  # requests per period


def _quotas() -> dict[str, list[Limit]]:
    return {"m": [RPM(L, PERIOD), TPM(10_000, PERIOD)]}


def _fleet(url: str, n: int = 3) -> list[Limiter]:
    return [Limiter(None, quotas=_quotas(), backend=RedisBackend(url)) for _ in range(n)]


async def _load(limiters: list[Limiter], seconds: float, stamps: list[float], errors: list[str]):
    """Every limiter runs 4 tasks that acquire, "call" for 10 ms and settle, for ``seconds``."""
    end = time.monotonic() + seconds

    async def task(limiter: Limiter) -> None:
        while time.monotonic() < end:
            try:
                async with limiter.acquire("m", tokens=10, timeout=30) as permit:
                    permit.mark_sent()
                    await anyio.sleep(0.01)
                    permit.mark_response_started()
                    stamps.append(time.monotonic())
                    await permit.settle(input_tokens=10)
            except Exception as exc:  # a failed call is what the test looks for
                errors.append(repr(exc))
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        for limiter in limiters:
            for _ in range(4):
                tg.start_soon(task, limiter)


def _most_in_any_window(stamps: list[float], period: float) -> int:
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] <= t - period:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _windows(stamps: list[float], t0: float, period: float, n: int) -> list[int]:
    out = [0] * n
    for t in stamps:
        k = int((t - t0) // period)
        if 0 <= k < n:
            out[k] += 1
    return out


async def _nothing_held(limiters: list[Limiter], client: redis.Redis) -> None:
    """After a quiet period: no lease in Redis (but the sentinel), no lease or ticket kept by
    any process, and the whole limit free."""
    await anyio.sleep(PERIOD + 0.2)
    status = await limiters[0].status("m")
    assert status["rpm"].in_flight == 0 and status["rpm"].used == 0, status
    assert status["rpm"].free == L
    for key in client.scan_iter("*}:E"):
        assert client.zrange(key, 0, -1) == [b""], "a lease stayed held in Redis"
    for limiter in limiters:
        engine = limiter.backend._engine  # type: ignore[union-attr]
        assert not engine.leases and not engine.tickets


async def _fault_run(server: Any, fault: Any, *, seconds: float = 7.0, at: float = 2.5) -> Any:
    limiters = _fleet(server.url)
    for limiter in limiters:
        await limiter.status("m")  # configured before the load starts
    stamps: list[float] = []
    errors: list[str] = []
    t0 = time.monotonic()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_load, limiters, seconds, stamps, errors)
            await anyio.sleep(at)
            await fault()
    client = redis.Redis.from_url(server.url)
    try:
        await _nothing_held(limiters, client)
    finally:
        client.close()
        for limiter in limiters:
            await limiter.backend.aclose()  # type: ignore[union-attr]
    return t0, stamps, errors


def _assert_recovered(t0: float, stamps: list[float], errors: list[str]) -> None:
    """No call failed; no window held more than the limit (every process wrote back what it
    spent; a little slack for the stamps, taken a hair after the anchor); full use again
    within two periods of the fault (windows 2.5-3.5 and 3.5-4.5 may lose)."""
    assert errors == []
    assert _most_in_any_window(stamps, PERIOD * 0.98) <= L
    windows = _windows(stamps, t0, PERIOD, 7)
    assert all(w >= 0.97 * L for w in windows[5:7]), str(windows)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["restart", "flushall", "flushdb", "evict"])
async def test_state_loss_neither_leaks_nor_over_admits(own_redis: Any, how: str) -> None:
    async def fault() -> None:
        c = redis.Redis.from_url(own_redis.url)
        if how == "restart":
            await anyio.to_thread.run_sync(own_redis.restart, 0.3)
        elif how == "flushall":
            c.flushall()
        elif how == "flushdb":
            c.flushdb()
        else:  # eviction of some of the scope's keys: its leases and slot log
            for key in c.scan_iter("*}:[LZ]"):
                c.delete(key)
        c.close()

    _assert_recovered(*await _fault_run(own_redis, fault))


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["client-kill", "script-flush", "pause"])
async def test_outages_cost_no_call_and_no_capacity(own_redis: Any, how: str) -> None:
    async def fault() -> None:
        c = redis.Redis.from_url(own_redis.url)
        if how == "client-kill":
            c.client_kill_filter(_type="normal", skipme=True)
            c.client_kill_filter(_type="pubsub")
        elif how == "script-flush":
            c.script_flush()
        else:
            assert own_redis.proc is not None
            own_redis.proc.send_signal(signal.SIGSTOP)
            try:
                await anyio.sleep(2.0)
            finally:  # never leave the server stopped, even when the test fails
                own_redis.proc.send_signal(signal.SIGCONT)
        c.close()

    _assert_recovered(*await _fault_run(own_redis, fault))


@pytest.mark.anyio
async def test_a_paused_redis_never_holds_a_caller_past_its_deadline(own_redis: Any) -> None:
    limiter = Limiter(None, quotas=_quotas(), backend=RedisBackend(own_redis.url))
    async with limiter.acquire("m") as permit:
        permit.mark_sent()
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        t = time.monotonic()
        with pytest.raises(QuotaTimeoutError):
            async with limiter.acquire("m", timeout=0.3):
                pass
        assert time.monotonic() - t < 1.5  # the deadline plus a bounded cancel, not the pause
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    async with limiter.acquire("m", timeout=10) as permit:
        permit.mark_sent()
    client = redis.Redis.from_url(own_redis.url)
    try:
        await _nothing_held([limiter], client)
    finally:
        client.close()
        await limiter.backend.aclose()  # type: ignore[union-attr]


def test_a_killed_process_holdings_return_within_a_period_and_seconds(
    redis_url: str, namespace: str
) -> None:
    """Default lease settings: what a SIGKILLed process held is back within one period plus a
    few seconds of its death (not after a long lease TTL)."""
    period = 2.0
    cfg = {
        "url": redis_url,
        "ns": namespace,
        "tasks": 3,
        "mode": "hold",
        "lease_ttl": 3.0,  # the default
        "limits": [["rpm", 3, period, "requests"]],
        "seconds": 60,
    }
    p = spawn_worker(cfg)
    for _ in range(3):
        read_until(p, "holding")
    time.sleep(1.2)  # a beat or so after the grants: the holdings were refreshed once
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.stdout is not None
    p.stdout.close()
    killed = time.monotonic()
    from quotaflow import SyncLimiter

    limiter = SyncLimiter(
        tier=None,
        quotas={"m": [Limit("rpm", 3, period)]},
        project="p",
        backend=f"{redis_url}?namespace={namespace}",
    )
    for _ in range(3):
        with limiter.acquire("m", timeout=20) as permit:
            permit.mark_sent()
    waited = time.monotonic() - killed
    # the last sign of life was at most a beat (1 s) before the kill; its holdings come back one
    # period after it plus half a TTL
    assert waited < period + 1.5 + 1.0 + 0.5


def test_a_frozen_process_does_not_spend_what_expired_while_it_was_stopped(
    redis_url: str, namespace: str
) -> None:
    """A process stopped (SIGSTOP) while its waiting ticket was granted: the lease expires and
    returns to the fleet; when the process resumes it does not use that stale grant."""
    from quotaflow import SyncLimiter

    quotas = {"m": [Limit("c", 1, 1.0, reset=Concurrent())]}
    url = f"{redis_url}?namespace={namespace}&lease_ttl=1.0"
    limiter = SyncLimiter(tier=None, quotas=quotas, project="p", backend=url)
    held = limiter.acquire_nowait("m")
    p = spawn_worker(
        {
            "url": redis_url,
            "ns": namespace,
            "tasks": 1,
            "mode": "run",
            "lease_ttl": 1.0,
            "limits": [["c", 1, 1.0, "requests", "conc"]],
            "seconds": 30,
        }
    )
    try:
        read_until(p, "ready")
        deadline = time.monotonic() + 10
        while limiter.waiting("m") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert limiter.waiting("m") == 1
        p.send_signal(signal.SIGSTOP)
        wait_stopped(p)  # every thread: the worker reads nothing more until SIGCONT
        held.release()  # the stopped worker's ticket is granted now, and its lease expires
        time.sleep(0.3)
        with limiter.acquire("m", timeout=10) as again:  # back once the lease expires
            p.send_signal(signal.SIGCONT)
            time.sleep(1.5)  # the worker has resumed and read its stale grant by now
            c = redis.Redis.from_url(redis_url)
            sec, usec = c.time()
            c.close()
            released_at = sec + usec / 1e6
            again.release()
        grant = read_until(p, "grant")
        # the worker was granted only after the slot was free again, never while it was held
        assert grant["t"] >= released_at
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
