"""A fleet on one Redis learns a figure once: what one limiter learns from a 429 reaches the
others (each with its own backend, as separate processes have) without a 429 of their own, and
the figure is kept in Redis with a TTL, in the scope's hash tag, holding no key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis
from google import genai

from quotaflow import Limiter, SyncLimiter
from quotaflow.backends.redis import RedisBackend
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import genai_http_options

pytestmark = pytest.mark.redis

KEY = "test-key"
MODEL = "gemini-3.5-flash"
MINUTE = 1.0


@pytest.fixture
def url(redis_url: str, namespace: str) -> str:
    return f"{redis_url}?namespace={namespace}"


@pytest.fixture
def served() -> Iterator[ServedEmulator]:
    config = EmulatorConfig(
        minute_seconds=MINUTE, models=[ModelConfig(name=MODEL, rpm=5, tpm=1_000_000)]
    )
    with serve(config) as s:
        yield s


def _calls(limiter: Limiter, served: ServedEmulator, n: int) -> int:
    sync = SyncLimiter.sharing(limiter)
    options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
    with genai.Client(api_key=KEY, http_options=options) as client:
        for _ in range(n):
            client.models.generate_content(model=MODEL, contents="hi")
    rejected: int = served.emulator.stats()["models"][MODEL]["rejected"]
    return rejected


@pytest.mark.anyio
async def test_a_fleet_on_redis_learns_once(
    url: str, namespace: str, redis_url: str, served: ServedEmulator
) -> None:
    a = Limiter("tier1", minute_seconds=MINUTE, backend=RedisBackend.from_url(url))
    b = Limiter("tier1", minute_seconds=MINUTE, backend=RedisBackend.from_url(url))
    try:
        await _fleet(a, b, namespace, redis_url, served)
    finally:
        for lim in (a, b):
            await lim.backend.aclose()  # type: ignore[union-attr]


async def _fleet(
    a: Limiter, b: Limiter, namespace: str, redis_url: str, served: ServedEmulator
) -> None:
    assert "rpm" not in await b.status(MODEL)
    rejected = await anyio.to_thread.run_sync(_calls, a, served, 8)
    assert rejected >= 1  # a learned
    await anyio.sleep(a._core.poll_every + 0.1)
    status = await b.status(MODEL)
    assert status["rpm"].limit == 5 and status["rpm"].origin.kind == "learned"
    await anyio.sleep(MINUTE)
    assert await anyio.to_thread.run_sync(_calls, b, served, 8) == rejected  # b never 429s

    client: Any = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{namespace}:*:F")]
        assert len(keys) == 1 and MODEL in keys[0]
        assert 0 < client.pttl(keys[0]) <= 86_400_000
        stored = client.hgetall(keys[0])
        assert set(stored) == {b"rpm"} and KEY.encode() not in stored[b"rpm"]
    finally:
        client.close()
