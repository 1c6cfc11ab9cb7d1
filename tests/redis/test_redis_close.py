"""Closing a limiter that opened its Redis backend from a URL: what it queued is sent, its
background thread stops, and nothing it took stays held in Redis."""

from __future__ import annotations

import threading

import pytest

from quotaflow import Limit, Limiter, SyncLimiter
from quotaflow.backends.redis import RedisBackend

pytestmark = pytest.mark.redis

QUOTAS = {"m": [Limit("rpm", 50, 60.0), Limit("tpm", 10_000, 60.0, metric="input_tokens")]}


def _threads() -> set[threading.Thread]:
    """quotaflow's threads in this process (the Redis link is ``quotaflow-redis-...``)."""
    return {t for t in threading.enumerate() if t.name.startswith("quotaflow")}


def _held_and_used(url: str) -> tuple[int, int, int]:
    """As a fresh process sees the keys: in flight, requests used, tokens used."""
    backend = RedisBackend.from_url(url)
    try:
        status = SyncLimiter(tier=None, quotas=QUOTAS, backend=backend).status("m")
    finally:
        backend.close()
    return status["rpm"].in_flight, status["rpm"].used, status["tpm"].used


def test_sync_limiter_close_sends_what_it_queued_and_stops_its_thread(
    redis_url: str, namespace: str
) -> None:
    url = f"{redis_url}?namespace={namespace}"
    before = _threads()
    with SyncLimiter(tier=None, quotas=QUOTAS, backend=url) as limiter:
        for _ in range(3):
            with limiter.acquire("m", tokens=100) as permit:
                permit.mark_sent()
                permit.settle(input_tokens=40)
        limiter.acquire_nowait("m", tokens=100).release()  # never sent: all of it back
        assert _threads() - before, "the link thread runs while the limiter is open"
    assert _threads() <= before, "close() stopped the limiter's thread"
    limiter.close()  # again: nothing left to do
    assert _held_and_used(url) == (0, 3, 120)


@pytest.mark.anyio
async def test_async_limiter_aclose_sends_deferred_settles_and_stops_its_thread(
    redis_url: str, namespace: str
) -> None:
    url = f"{redis_url}?namespace={namespace}"
    before = _threads()
    async with Limiter(tier=None, quotas=QUOTAS, backend=url) as limiter:
        for _ in range(3):
            async with limiter.acquire("m", tokens=100) as permit:
                permit.mark_sent()
                # on asyncio the settle is deferred (it rides on the next call): the last
                # one is still queued when the block ends
                await permit.settle(input_tokens=40)
        assert _threads() - before, "the link thread runs while the limiter is open"
    assert _threads() <= before, "aclose() stopped the limiter's thread"
    assert _held_and_used(url) == (0, 3, 120)


def test_a_backend_passed_in_stays_open(redis_url: str, namespace: str) -> None:
    backend = RedisBackend.from_url(f"{redis_url}?namespace={namespace}")
    with SyncLimiter(tier=None, quotas=QUOTAS, backend=backend) as limiter:
        limiter.acquire_nowait("m").release()
    # the caller's backend: still usable by another limiter (the fixture closes it)
    again = SyncLimiter(tier=None, quotas=QUOTAS, backend=backend)
    again.acquire_nowait("m").release()
    assert again.status("m")["rpm"].in_flight == 0


def test_a_deferred_settle_goes_out_by_its_timer_on_uvloop_without_spinning(
    redis_url: str, namespace: str
) -> None:
    """uvloop runs a timer of under half a millisecond at once: the flush timer, finding a
    settle not yet due, waits at least a millisecond again rather than running on every turn of
    the loop until it is."""
    import asyncio
    import time

    uvloop = pytest.importorskip("uvloop")

    from quotaflow.backends.redis.engine_state import SETTLE_DELAY

    url = f"{redis_url}?namespace={namespace}"
    fired = 0

    async def main() -> tuple[int, int, int]:
        limiter = Limiter(tier=None, quotas=QUOTAS, backend=url)
        backend: RedisBackend = limiter.backend  # type: ignore[assignment]
        fire = backend._settles._fire

        def counted(loop: asyncio.AbstractEventLoop) -> None:
            nonlocal fired
            fired += 1
            fire(loop)

        backend._settles._fire = counted  # type: ignore[method-assign]
        for _ in range(2):  # the second settle is deferred
            async with limiter.acquire("m", tokens=100) as permit:
                permit.mark_sent()
                await permit.settle(input_tokens=40)
        engine = backend._engine
        assert engine.pending
        # the settle is 0.3 ms short of due when the timer runs
        for scope in engine.pending_since:
            engine.pending_since[scope] = time.monotonic() - (0.9 * SETTLE_DELAY - 0.0003)
        before = fired
        counted(asyncio.get_running_loop())
        for _ in range(100):
            await asyncio.sleep(0.005)
            if not engine.pending and not backend._settles._flushing:
                break
        assert not engine.pending, "the deferred settle went out by the timer"
        runs = fired - before
        held = _held_and_used(url)  # while the limiter is open: sent, not flushed by close
        await limiter.aclose()
        return runs, held[1], held[2]

    runs, used, tokens = uvloop.run(main())
    assert (used, tokens) == (2, 80)
    assert runs <= 3, f"the flush timer ran {runs} times for one settle"
