"""Metrics and shadow mode over real HTTP: google-genai through the transports to the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk")
from google import genai
from google.genai import types
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from quotaflow import RPM, TPM, Limiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, serve
from quotaflow.errors import ConfigError
from quotaflow.observe import metrics
from quotaflow.transports import genai_http_options

MODEL = "gemini-2.5-flash"
PERIOD = 1.0


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.configure(meter_provider=provider)
    yield reader
    metrics.reset()
    provider.shutdown()


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def _client(limiter: Limiter, base_url: str) -> genai.Client:
    return genai.Client(
        api_key="test-key",
        http_options=genai_http_options(limiter, base_url=base_url, api_version="v1beta"),
    )


async def _call(client: genai.Client, text: str) -> Any:
    return await client.aio.models.generate_content(
        model=MODEL, contents=text, config=types.GenerateContentConfig(max_output_tokens=8)
    )


@pytest.mark.anyio
async def test_a_metric_reader_sees_the_instruments(reader: InMemoryMetricReader) -> None:
    # the server allows 3 requests per window, the limiter believes 10: 429s, learned, retried
    config = EmulatorConfig(
        minute_seconds=PERIOD, models=[ModelConfig(name=MODEL, rpm=3, tpm=100_000, rpd=None)]
    )
    limiter = Limiter(None, quotas={MODEL: [RPM(10, PERIOD), TPM(100_000, PERIOD)]})
    with serve(config) as served:
        client = _client(limiter, served.base_url)
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(_call, client, f"call {i} " + "word " * 40)
        await client.aio.aclose()
    points = _points(reader)
    for name in (
        "quotaflow.grants",
        "quotaflow.wait.duration",
        "quotaflow.server.rate_limited",
        "quotaflow.retries",
        "quotaflow.estimate.error",
        "quotaflow.usage",
        "quotaflow.in_flight",
    ):
        assert name in points, f"{name} missing from {sorted(points)}"
    grants = sum(p.value for p in points["quotaflow.grants"])
    assert grants >= 6  # one per attempt
    limited = {p.attributes["quota_id"] for p in points["quotaflow.server.rate_limited"]}
    assert any("PerMinute" in q for q in limited)
    assert all(p.attributes["model"] == MODEL for p in points["quotaflow.grants"])
    usage = {p.attributes["dimension"]: p.value for p in points["quotaflow.usage"]}
    assert usage["rpm"] >= 1
    # no attribute carries the key
    for pts in points.values():
        for p in pts:
            assert "test-key" not in repr(dict(p.attributes))


@pytest.mark.anyio
async def test_shadow_mode_lets_a_burst_through_and_records_the_waits(
    reader: InMemoryMetricReader,
) -> None:
    config = EmulatorConfig(
        minute_seconds=PERIOD, models=[ModelConfig(name=MODEL, rpm=100, tpm=100_000, rpd=None)]
    )
    limiter = Limiter(None, quotas={MODEL: [RPM(2, PERIOD), TPM(100_000, PERIOD)]}, mode="shadow")
    assert limiter.mode == "shadow"
    infos: list[Any] = []
    with serve(config) as served:
        client = _client(limiter, served.base_url)

        async def one(i: int) -> None:
            resp = await _call(client, f"burst {i}")
            infos.append(resp.sdk_http_response)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
        await client.aio.aclose()
        admitted = served.emulator.stats()["models"][MODEL]["requests_admitted"]
    assert admitted == 6  # all six went out; enforcing, four would have waited a window
    assert len(infos) == 6
    points = _points(reader)
    shadow = [
        p
        for p in points["quotaflow.wait.duration"]
        if p.attributes.get("quotaflow.mode") == "shadow"
    ]
    assert sum(p.count for p in shadow) == 6
    waited = [p for p in shadow if p.attributes.get("dimension") == "rpm"]
    assert sum(p.count for p in waited) == 4
    assert sum(p.sum for p in waited) > 0
    status = await limiter.status(MODEL)
    assert status["rpm"].used + status["rpm"].in_flight == 2  # only the grants are held


@pytest.mark.anyio
async def test_shadow_decisions_are_on_the_response() -> None:
    import httpx

    from quotaflow.transports import QuotaTransport

    config = EmulatorConfig(
        minute_seconds=60.0, models=[ModelConfig(name=MODEL, rpm=100, tpm=100_000, rpd=None)]
    )
    limiter = Limiter(None, quotas={MODEL: [RPM(1, 60.0)]}, mode="shadow")
    body = {"contents": [{"parts": [{"text": "hello"}]}]}
    with serve(config) as served:
        async with httpx.AsyncClient(
            transport=QuotaTransport(limiter), base_url=served.base_url
        ) as http:
            url = f"/v1beta/models/{MODEL}:generateContent"
            first = await http.post(url, json=body, headers={"x-goog-api-key": "test-key"})
            second = await http.post(url, json=body, headers={"x-goog-api-key": "test-key"})
    assert first.status_code == second.status_code == 200
    assert first.extensions["quotaflow"].shadow == []  # admitted at once: nothing to tell
    (d2,) = second.extensions["quotaflow"].shadow
    assert d2.outcome == "wait" and d2.dimension == "rpm"
    assert d2.would_wait is not None and 0 < d2.would_wait <= 60.0 + 60.0 / 300  # a slot
    assert second.extensions["quotaflow"].waited == 0.0


def test_a_bad_mode_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="give 'enforce'"):
        Limiter(mode="dry-run")


@pytest.mark.anyio
async def test_a_snapshot_of_a_running_process() -> None:
    from quotaflow.observe.status import render_text, snapshot

    limiter = Limiter(None, quotas={MODEL: [RPM(2, 60.0), TPM(1_000, 60.0)]})
    held = [await limiter.acquire_nowait(MODEL, 100) for _ in range(2)]

    async def wait(level: str) -> None:
        await limiter.acquire(MODEL, 10, priority=level)

    async with anyio.create_task_group() as tg:
        for level in ("high", "low", "low"):
            tg.start_soon(wait, level)
        for _ in range(1000):  # the three queue as soon as they run
            if await limiter.waiting(MODEL) == 3:
                break
            await anyio.sleep(0.01)
        snap = await snapshot(limiter, [MODEL])
        tg.cancel_scope.cancel()
    for permit in held:
        await permit.release()
    (model,) = snap["models"]
    assert model["waiting"] == {"high": 1, "low": 2}
    dims = {d["name"]: d for d in model["dimensions"]}
    assert (dims["rpm"]["limit"], dims["rpm"]["in_flight"], dims["rpm"]["free"]) == (2, 2, 0)
    assert dims["tpm"]["in_flight"] == 200
    assert dims["rpm"]["origin"] == "configured"
    text = render_text(snap)
    assert f"default/{MODEL}  waiting: high 1, low 2" in text


@pytest.mark.anyio
async def test_spans_are_off_by_default_and_wrap_each_call_when_on() -> None:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from quotaflow.transports import QuotaTransport

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = EmulatorConfig(minute_seconds=60.0, models=[ModelConfig(name=MODEL, rpm=100)])
    limiter = Limiter(None, quotas={MODEL: [RPM(10, 60.0)]})
    body = {"contents": [{"parts": [{"text": "hello"}]}]}
    url = f"/v1beta/models/{MODEL}:generateContent"
    try:
        with serve(config) as served:
            async with httpx.AsyncClient(
                transport=QuotaTransport(limiter),
                base_url=served.base_url,
                headers={"x-goog-api-key": "test-key"},
            ) as http:
                metrics.configure(tracer_provider=provider)
                assert (await http.post(url, json=body)).status_code == 200
                assert exporter.get_finished_spans() == ()  # off by default
                metrics.configure(spans=True)
                assert (await http.post(url, json=body)).status_code == 200
    finally:
        metrics.reset()
    (span,) = exporter.get_finished_spans()
    assert span.name == "quotaflow.call"
    assert span.attributes is not None and span.attributes["url.path"] == url
    assert "test-key" not in repr(dict(span.attributes))
