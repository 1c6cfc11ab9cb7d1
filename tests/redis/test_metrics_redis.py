"""The observable gauges of a Redis-backed limiter: the fleet's use and in-flight amounts,
read from Redis at each collection (an in-memory OpenTelemetry reader, a real redis-server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
import httpx
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from quotaflow import RPM, TPM, Limiter, SyncLimiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, serve
from quotaflow.observe import metrics
from quotaflow.transports import QuotaTransport

pytestmark = pytest.mark.redis

MODEL = "gemini-2.5-flash"
URL = f"/v1beta/models/{MODEL}:generateContent"
BODY = {"contents": [{"parts": [{"text": "hello there"}]}]}


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.configure(meter_provider=provider)
    yield reader
    metrics.reset()
    provider.shutdown()


def _gauges(reader: InMemoryMetricReader) -> dict[str, dict[tuple[str, str], float]]:
    out: dict[str, dict[tuple[str, str], float]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name in ("quotaflow.usage", "quotaflow.in_flight"):
                    for p in m.data.data_points:
                        key = (str(p.attributes["model"]), str(p.attributes["dimension"]))
                        out.setdefault(m.name, {})[key] = p.value
    return out


def _state(redis_url: str, namespace: str) -> dict[str, Any]:
    """Every key of the namespace with its content (what a read must leave as it was)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        out: dict[str, Any] = {}
        for key in sorted(client.scan_iter(match=f"{namespace}:*", count=1000)):
            kind = client.type(key).decode()
            if kind == "hash":
                out[key.decode()] = client.hgetall(key)
            elif kind == "zset":
                out[key.decode()] = client.zrange(key, 0, -1, withscores=True)
            else:
                out[key.decode()] = kind
        return out
    finally:
        client.close()


@pytest.mark.anyio
async def test_gauges_report_the_fleets_use_and_in_flight_from_redis(
    reader: InMemoryMetricReader, redis_url: str, namespace: str
) -> None:
    import anyio

    quotas = {MODEL: [RPM(20, 60.0), TPM(100_000, 60.0)]}
    backend = f"{redis_url}?namespace={namespace}"
    config = EmulatorConfig(
        minute_seconds=60.0, models=[ModelConfig(name=MODEL, rpm=100, tpm=1_000_000, rpd=None)]
    )
    ours = Limiter(None, quotas=quotas, backend=backend)
    other = Limiter(None, quotas=quotas, backend=backend)  # another process of the fleet
    try:
        with serve(config) as served:
            async with httpx.AsyncClient(
                transport=QuotaTransport(ours),
                base_url=served.base_url,
                headers={"x-goog-api-key": "test-key"},
            ) as http:
                for _ in range(3):
                    assert (await http.post(URL, json=BODY)).status_code == 200
        held = [await other.acquire_nowait(MODEL, 100) for _ in range(2)]
        before = _state(redis_url, namespace)
        gauges = _gauges(reader)
        # the fleet's figures: our three calls and the other limiter's two held permits
        assert gauges["quotaflow.in_flight"][(MODEL, "rpm")] == 2
        assert gauges["quotaflow.in_flight"][(MODEL, "tpm")] == 200
        assert gauges["quotaflow.usage"][(MODEL, "rpm")] >= 3
        # reading wrote nothing: every key holds what it held
        assert _state(redis_url, namespace) == before
        # the figures are the fleet's as the backend itself reads them
        status = await ours.status(MODEL)
        assert status["rpm"].in_flight == 2
        assert gauges["quotaflow.usage"][(MODEL, "rpm")] == status["rpm"].used
        for permit in held:
            await permit.release()
        await anyio.sleep(0.6)  # past the read shared by one collection's two gauges
        after = _gauges(reader)
        assert after["quotaflow.in_flight"][(MODEL, "rpm")] == 0
        assert after["quotaflow.usage"][(MODEL, "rpm")] == 3  # a released permit was unused
        for points in after.values():
            assert all("test-key" not in repr(k) for k in points)
    finally:
        for lim in (ours, other):
            lim.close()
            await lim.backend.aclose()  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_gauges_skip_a_redis_that_is_gone(
    reader: InMemoryMetricReader, own_redis: Any
) -> None:
    import anyio

    model = "gemini-2.5-flash-lite"  # a model no other test's limiter reports gauges of
    quotas = {model: [RPM(20, 60.0)]}
    limiter = Limiter(None, quotas=quotas, backend=f"{own_redis.url}?on_error=raise")
    try:
        permit = await limiter.acquire_nowait(model, 10)
        metrics.seen(limiter, model)
        assert _gauges(reader)["quotaflow.in_flight"][(model, "rpm")] == 1
        await permit.release()
        own_redis.kill()
        await anyio.sleep(0.6)  # past the read shared by one collection's two gauges
        # a collection while Redis is away ends without the limiter's figures, and raises not
        assert (model, "rpm") not in _gauges(reader).get("quotaflow.in_flight", {})
    finally:
        limiter.close()
        await limiter.backend.aclose()  # type: ignore[union-attr]


def test_gauges_of_a_sync_limiter_on_redis(
    reader: InMemoryMetricReader, redis_url: str, namespace: str
) -> None:
    limiter = SyncLimiter(
        None, quotas={MODEL: [RPM(20, 60.0)]}, backend=f"{redis_url}?namespace={namespace}"
    )
    try:
        held = [limiter.acquire_nowait(MODEL, 10) for _ in range(3)]
        metrics.seen(limiter, MODEL)
        gauges = _gauges(reader)
        assert gauges["quotaflow.in_flight"][(MODEL, "rpm")] == 3
        assert gauges["quotaflow.usage"][(MODEL, "rpm")] == 3
        for permit in held:
            permit.release()
    finally:
        limiter.close()
