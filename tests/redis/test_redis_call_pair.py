"""A call's two permits on Redis (its model's and its project's spend): asked at once on
asyncio, one after the other on trio; both or neither. Deferred settles of both scopes go out in
one write; the spend scope never reads the fleet's learned figures."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis.exceptions as rexc

from quotaflow import Limit, Limiter
from quotaflow.backends.redis import RedisBackend
from quotaflow.backends.redis.lean import call_packed_many
from quotaflow.errors import CannotFitError
from quotaflow.flow import Acquire
from quotaflow.quotas.pricing import SPEND_SCOPE
from quotaflow.transports.both import acquire_both_async

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
def url(redis_url: str, namespace: str) -> str:
    return f"{redis_url}?namespace={namespace}"


QUOTAS = {"m": [Limit("rpm", 100, 60.0)], "big": [Limit("rpm", 100, 60.0)]}


def _take(lim: Limiter) -> Any:
    async def take(e: Acquire) -> Any:
        return await lim._acquire(e.model, e.tokens, e.cost, None, None, None, False, None)

    return take


async def _held(lim: Limiter, model: str) -> tuple[int, int]:
    level = (await lim.status(model))["rpm"]
    return level.used, level.in_flight


@pytest.mark.parametrize("refused", ["first", "second", "none"])
async def test_both_permits_or_neither(url: str, refused: str) -> None:
    lim = Limiter(None, quotas=QUOTAS, backend=RedisBackend.from_url(url))
    too_many = {"requests": 101}  # larger than the limit: refused at once
    first = Acquire("model", "m", 0, too_many if refused == "first" else None, None, None)
    second = Acquire("model", "big", 0, too_many if refused == "second" else None, None, None)
    try:
        if refused == "none":
            a, b, waited = await acquire_both_async(_take(lim), first, second, True)
            assert waited >= 0.0
            for p in (a, b):
                p.mark_sent()
                await p.settle()
            assert await _held(lim, "m") == (1, 0) and await _held(lim, "big") == (1, 0)
            return
        with pytest.raises(CannotFitError):
            await acquire_both_async(_take(lim), first, second, True)
        # the other permit was given back: nothing used, nothing held
        assert await _held(lim, "m") == (0, 0) and await _held(lim, "big") == (0, 0)
    finally:
        await lim.backend.aclose()  # type: ignore[union-attr]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the lean call is asyncio's
async def test_commands_written_together_get_their_own_replies(url: str) -> None:
    backend = RedisBackend.from_url(url)
    try:
        lean = backend._lean()

        def packed(*args: str) -> bytes:
            out = [b"*%d\r\n" % len(args)]
            out += [b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args]
            return b"".join(out)

        got = await call_packed_many(
            lean,
            [
                packed("EVAL", "return ARGV[1]", "0", "one"),
                packed("EVAL", "return redis.error_reply('ERR boom')", "0"),
                packed("EVAL", "return ARGV[1]", "0", "three"),
            ],
        )
        assert got[0] == b"one" and got[2] == b"three"
        assert isinstance(got[1], rexc.ResponseError) and "boom" in str(got[1])
        assert await call_packed_many(lean, [packed("EVAL", "return 5", "0")]) == [5]
        assert not lean.busy
    finally:
        await backend.aclose()


async def test_the_spend_scope_reads_no_learned_figures(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RedisBackend.from_url(url)
    read: list[str] = []
    real = backend.learned

    async def learned(scope: str) -> dict[str, str]:  # counts the reads, then makes them
        read.append(scope)
        return await real(scope)

    monkeypatch.setattr(backend, "learned", learned)
    lim = Limiter("tier1", minute_seconds=0.6, backend=backend)  # figures read every 10 ms
    try:
        for _ in range(5):
            p = await lim.acquire(SPEND_SCOPE, cost={"usd_micros": 10})
            p.mark_sent()
            await p.settle()
            await anyio.sleep(0.02)
        assert read == []
        p = await lim.acquire("gemini-2.5-flash")  # a model's scope does read them
        await p.release()
        await anyio.sleep(0.05)
        assert read and all(scope.endswith("gemini-2.5-flash") for scope in read)
    finally:
        await backend.aclose()
