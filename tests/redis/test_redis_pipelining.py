"""The lean call's queue: calls that find every lane busy are written together, each caller
gets its own reply, a queued call given up is never sent, and a lane whose connection dies
fails only its own calls (the rest, and later calls, go on)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.exceptions as rexc

from quotaflow import Limit, Limiter
from quotaflow.backends import redis as qredis
from quotaflow.backends.redis import lean as _redis_lean

pytestmark = pytest.mark.redis

# a script that holds the server for ``ARGV[1]`` seconds, then counts its call in KEYS[1]
_SLOW = """
local t = redis.call('TIME')
local t0 = t[1] + t[2] / 1e6
repeat
  t = redis.call('TIME')
until t[1] + t[2] / 1e6 - t0 >= tonumber(ARGV[1])
return redis.call('INCR', KEYS[1])
"""


def _packed(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        raw = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the lean call is asyncio's
async def test_queued_calls_each_get_their_own_reply(redis_url: str, namespace: str) -> None:
    backend = qredis.RedisBackend(redis_url, namespace=namespace, exact_time=True)
    try:
        lean = backend._lean()

        async def echo(i: int) -> Any:
            if i % 7 == 3:  # an error reply fails its own call only
                with pytest.raises(rexc.ResponseError, match=f"boom{i}"):
                    await backend._call_packed(
                        lean, _packed("EVAL", f"return redis.error_reply('ERR boom{i}')", "0")
                    )
                return i
            return await backend._call_packed(lean, _packed("EVAL", "return ARGV[1]", "0", str(i)))

        for _ in range(3):
            got = await asyncio.gather(*(echo(i) for i in range(200)))
            assert [int(x) for x in got] == list(range(200))
        assert not lean.busy and not lean.tasks
        assert 1 <= len(lean.free) <= _redis_lean.LANES
    finally:
        await backend.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_queued_call_given_up_is_never_sent(redis_url: str, namespace: str) -> None:
    backend = qredis.RedisBackend(redis_url, namespace=namespace, exact_time=True)
    key = f"{namespace}:count"
    try:
        lean = backend._lean()
        slow = _packed("EVAL", _SLOW, "1", key, "0.2")
        quick = _packed("EVAL", "return redis.call('INCR', KEYS[1])", "1", key)
        lanes = [
            asyncio.ensure_future(backend._call_packed(lean, slow))
            for _ in range(_redis_lean.LANES)
        ]
        await asyncio.sleep(0.02)  # every lane is busy
        queued = [asyncio.ensure_future(backend._call_packed(lean, quick)) for _ in range(6)]
        await asyncio.sleep(0.01)
        queued[2].cancel()
        queued[4].cancel()
        await asyncio.gather(*lanes)
        done = await asyncio.gather(*queued, return_exceptions=True)
        assert isinstance(done[2], asyncio.CancelledError)
        assert isinstance(done[4], asyncio.CancelledError)
        c = redis.Redis.from_url(redis_url)
        assert int(c.get(key) or 0) == _redis_lean.LANES + 4  # the two given up never ran
        c.close()
    finally:
        await backend.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_killed_connection_under_load_leaves_nothing_held(
    redis_url: str, namespace: str
) -> None:
    # 64 tasks acquire and settle through the queue while every connection of the backend is
    # killed, twice: no call fails, and afterwards nothing is held
    limiter = Limiter(
        tier=None,
        quotas={"m": [Limit("rpm", 10**6, 60.0)]},
        backend=f"{redis_url}?namespace={namespace}",
    )
    admin = redis.Redis.from_url(redis_url)
    stop = asyncio.Event()
    done = [0]

    async def worker() -> None:
        while not stop.is_set():
            permit = await limiter.acquire("m")
            permit.mark_sent()
            await permit.settle()
            done[0] += 1

    try:
        tasks = [asyncio.ensure_future(worker()) for _ in range(64)]
        for _ in range(2):
            await asyncio.sleep(0.3)
            admin.client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)
        await limiter.backend.aclose()  # type: ignore[union-attr]
        assert done[0] > 64
        check = Limiter(
            tier=None,
            quotas={"m": [Limit("rpm", 10**6, 60.0)]},
            backend=f"{redis_url}?namespace={namespace}",
        )
        try:
            level = (await check.status("m"))["rpm"]
            assert level.in_flight == 0
            assert level.used == done[0]
        finally:
            await check.backend.aclose()  # type: ignore[union-attr]
    finally:
        admin.close()
