"""A paused Redis (SIGSTOP) never holds an acquire past its deadline: on asyncio, on trio and
on the sync face, ``timeout=``/``deadline=`` refuse with ``QuotaTimeoutError`` by the
deadline (not by the socket timeout), and nothing stays held once Redis is back.

Each test starts a Redis of its own, which it pauses.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis

from quotaflow import Limit, Limiter, QuotaTimeoutError, SyncLimiter
from quotaflow.backends.redis import RedisBackend

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PERIOD = 1.0
WAIT = 0.3  # the acquire's timeout
MARGIN = 0.25  # past the deadline: the refusal and a cancel set aside, never a Redis call
QUOTAS = {"m": [Limit("rpm", 20, PERIOD), Limit("tpm", 10_000, PERIOD, metric="input_tokens")]}


@pytest.fixture
def paused(own_redis: Any) -> Iterator[Any]:
    """``pause()`` stops the test's Redis; it is always resumed at the end."""
    proc = own_redis.proc
    assert proc is not None
    stopped = []

    def pause() -> None:
        proc.send_signal(signal.SIGSTOP)
        stopped.append(True)

    own_redis.pause = pause
    try:
        yield own_redis
    finally:
        if stopped:
            proc.send_signal(signal.SIGCONT)


def _resume(server: Any) -> None:
    server.proc.send_signal(signal.SIGCONT)


def _nothing_held_in_redis(url: str, backend: RedisBackend) -> None:
    """No lease in Redis but the sentinel, and none kept (nor a call owed) by the process."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter("*}:E"):
            assert client.zrange(key, 0, -1) == [b""], "a lease stayed held in Redis"
    finally:
        client.close()
    engine = backend._engine
    assert not engine.leases and not engine.tickets and not engine.outbox


@pytest.mark.anyio
@pytest.mark.parametrize("bound", ["timeout", "deadline"])
async def test_an_async_acquire_is_refused_by_its_deadline_while_redis_is_paused(
    paused: Any, bound: str
) -> None:
    backend = RedisBackend(paused.url)
    limiter = Limiter(None, quotas=QUOTAS, backend=backend)
    async with limiter.acquire("m", tokens=10) as permit:  # configured and connected
        permit.mark_sent()
    paused.pause()
    try:
        t = time.monotonic()
        kw = {"timeout": WAIT} if bound == "timeout" else {"deadline": limiter.clock.now() + WAIT}
        with pytest.raises(QuotaTimeoutError):
            async with limiter.acquire("m", tokens=10, **kw):
                pass
        took = time.monotonic() - t
        assert took < WAIT + MARGIN, f"refused {took:.2f} s after the acquire began"
    finally:
        _resume(paused)
    async with limiter.acquire("m", tokens=10, timeout=10) as permit:  # Redis is back
        permit.mark_sent()
    for _ in range(200):  # the cancel set aside is replayed (and a grant it won released)
        if not (backend._engine.outbox or backend._engine.leases):
            break
        await anyio.sleep(0.05)
    await anyio.sleep(PERIOD + 0.2)
    status = await limiter.status("m")
    assert status["rpm"].in_flight == 0 and status["rpm"].used == 0, status
    _nothing_held_in_redis(paused.url, backend)
    await backend.aclose()


@pytest.mark.parametrize("bound", ["timeout", "deadline"])
def test_a_sync_acquire_is_refused_by_its_deadline_while_redis_is_paused(
    paused: Any, bound: str
) -> None:
    backend = RedisBackend(paused.url)
    limiter = SyncLimiter(None, quotas=QUOTAS, backend=backend)
    with limiter.acquire("m", tokens=10) as permit:
        permit.mark_sent()
    paused.pause()
    try:
        t = time.monotonic()
        kw = {"timeout": WAIT} if bound == "timeout" else {"deadline": limiter.clock.now() + WAIT}
        with pytest.raises(QuotaTimeoutError), limiter.acquire("m", tokens=10, **kw):
            pass
        took = time.monotonic() - t
        assert took < WAIT + MARGIN, f"refused {took:.2f} s after the acquire began"
    finally:
        _resume(paused)
    with limiter.acquire("m", tokens=10, timeout=10) as permit:
        permit.mark_sent()
    for _ in range(200):
        if not (backend._engine.outbox or backend._engine.leases):
            break
        time.sleep(0.05)
    time.sleep(PERIOD + 0.2)
    status = limiter.status("m")
    assert status["rpm"].in_flight == 0 and status["rpm"].used == 0, status
    _nothing_held_in_redis(paused.url, backend)
    backend.close()
