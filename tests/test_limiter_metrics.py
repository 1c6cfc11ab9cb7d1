"""A direct ``acquire`` is measured as a transport's is: ``quotaflow.grants``,
``quotaflow.wait.duration`` and ``quotaflow.refusals``, on the async and the sync limiter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from quotaflow import RPM, Limiter, ManualClock, SyncLimiter
from quotaflow.errors import WouldBlockError
from quotaflow.observe import metrics


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


def _counts(reader: InMemoryMetricReader) -> tuple[int, dict[str, int], int]:
    points = _points(reader)
    grants = sum(p.value for p in points.get("quotaflow.grants", []))
    refusals: dict[str, int] = {}
    for p in points.get("quotaflow.refusals", []):
        reason = str(p.attributes["reason"])
        refusals[reason] = refusals.get(reason, 0) + p.value
    waits = sum(p.count for p in points.get("quotaflow.wait.duration", []))
    return grants, refusals, waits


@pytest.mark.anyio
async def test_a_direct_async_acquire_is_measured(reader: InMemoryMetricReader) -> None:
    if not metrics.enabled():
        pytest.skip("metrics are off")
    limiter = Limiter(None, quotas={"m": [RPM(2)]}, clock=ManualClock(0.0))
    async with limiter.acquire("m", tokens=3, agent="writer") as permit:
        permit.mark_sent()
    await (await limiter.acquire("m")).settle()  # the fast lane's grant too
    with pytest.raises(WouldBlockError):
        await limiter.acquire_nowait("m")
    grants, refusals, waits = _counts(reader)
    assert grants == 2
    assert waits == 2
    assert refusals == {"would_block": 1}
    agents = {p.attributes["agent"] for p in _points(reader)["quotaflow.grants"]}
    assert agents == {"writer", ""}


def test_a_direct_sync_acquire_is_measured(reader: InMemoryMetricReader) -> None:
    if not metrics.enabled():
        pytest.skip("metrics are off")
    limiter = SyncLimiter(None, quotas={"m": [RPM(1)]}, clock=ManualClock(0.0))
    with limiter.acquire("m") as permit:
        permit.mark_sent()
    with pytest.raises(WouldBlockError):
        limiter.acquire_nowait("m", agent="reader")
    grants, refusals, _ = _counts(reader)
    assert grants == 1
    assert refusals == {"would_block": 1}
    (refusal,) = _points(reader)["quotaflow.refusals"]
    assert refusal.attributes["agent"] == "reader"
    assert refusal.attributes["quotaflow.mode"] == "enforce"


def test_metrics_turned_off_record_nothing(reader: InMemoryMetricReader) -> None:
    metrics.configure(enabled=False)
    try:
        limiter = SyncLimiter(None, quotas={"m": [RPM(5)]})
        limiter.acquire_nowait("m").settle()
        assert _counts(reader) == (0, {}, 0)
    finally:
        metrics.configure(enabled=True)


_GLOBAL_PROVIDER = """
from opentelemetry import metrics as otel
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from quotaflow import RPM, SyncLimiter

limiter = SyncLimiter(None, quotas={"m": [RPM(5)]})
limiter.acquire_nowait("m").settle()  # before any provider: the API drops it
reader = InMemoryMetricReader()
otel.set_meter_provider(MeterProvider(metric_readers=[reader]))
limiter.acquire_nowait("m").settle()
limiter.acquire_nowait("m").settle()
data = reader.get_metrics_data()
print(sum(
    p.value
    for rm in data.resource_metrics
    for sm in rm.scope_metrics
    for m in sm.metrics
    if m.name == "quotaflow.grants"
    for p in m.data.data_points
))
"""


def test_grants_reach_a_global_provider_set_after_the_limiter() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_PROVIDER], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "2", done.stderr
