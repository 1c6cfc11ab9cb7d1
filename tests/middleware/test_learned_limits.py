"""Limits learned from the server's 429s: adopted when missing, lowered when higher, kept out
when higher than configured, shared by limiters on one backend, kept in a cache file; 429s
without a figure drive an adaptive request rate. google-genai against the emulator over real
HTTP, with a compressed minute on both sides (``minute_seconds``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from google import genai
from google.genai import errors as genai_errors

from quotaflow import RPM, Limiter, MemoryBackend, SyncLimiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import genai_http_options

KEY = "test-key"
MODEL = "gemini-3.5-flash"  # in the tier tables with no rpm/tpm/rpd figures
MINUTE = 1.0


def _quotaflow_info(exc: genai_errors.APIError) -> dict[str, str]:
    """The ``ErrorInfo`` metadata of a local refusal (domain ``quotaflow``), as the SDK's
    error holds it."""
    (info,) = [d for d in exc.details["error"]["details"] if d.get("domain") == "quotaflow"]
    return {"code": info["reason"], **info["metadata"]}


def _config(rpm: int | None = 5, **kw: Any) -> EmulatorConfig:
    return EmulatorConfig(
        minute_seconds=MINUTE,
        models=[ModelConfig(name=MODEL, rpm=rpm, tpm=1_000_000, rpd=100_000)],
        **kw,
    )


@pytest.fixture
def served() -> Iterator[ServedEmulator]:
    with serve(_config()) as s:
        yield s


def _stats(served: ServedEmulator) -> dict[str, Any]:
    entry: dict[str, Any] = served.emulator.stats()["models"].get(MODEL, {})
    return entry


async def _run(
    limiter: Limiter, served: ServedEmulator, tasks: int, calls: int
) -> tuple[int, list[Any]]:
    """``tasks`` tasks making ``calls`` calls each; returns (failed calls, extensions seen)."""
    options = genai_http_options(limiter, base_url=served.base_url)
    client = genai.Client(api_key=KEY, http_options=options)
    failed = 0
    infos: list[Any] = []

    async def worker() -> None:
        nonlocal failed
        for _ in range(calls):
            try:
                r = await client.aio.models.generate_content(model=MODEL, contents="hi there")
                infos.append(r.sdk_http_response)
            except genai_errors.APIError:
                failed += 1

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(worker)
    finally:
        await client.aio.aclose()
        client.close()
    return failed, infos


@pytest.mark.anyio
async def test_a_missing_figure_is_adopted_from_the_first_429(served: ServedEmulator) -> None:
    limiter = Limiter("tier1", minute_seconds=MINUTE)
    # no figures anywhere: only the learning's own limits (a cap on calls in flight, a count)
    assert set(await limiter.status(MODEL)) == {"probe", "seen"}
    failed, _ = await _run(limiter, served, tasks=8, calls=4)  # 32 calls, 5 per second
    stats = _stats(served)
    assert failed == 0
    assert stats["admitted"] == 32
    # the first 429s teach; once learned, the limiter paces: one burst's worth at most
    assert stats["rejected"] <= 8
    status = await limiter.status(MODEL)
    assert status["rpm"].limit == 5 and status["rpm"].period == MINUTE
    origin = status["rpm"].origin
    assert origin.kind == "learned" and "PerMinute" in origin.quota_id and origin.at is not None
    assert status["rpm"].in_flight == 0


@pytest.mark.anyio
async def test_after_learning_a_window_is_used_and_never_over(served: ServedEmulator) -> None:
    limiter = Limiter("tier1", minute_seconds=MINUTE)
    await _run(limiter, served, tasks=8, calls=2)  # learns
    before = _stats(served)["rejected"]
    failed, _ = await _run(limiter, served, tasks=8, calls=3)
    stats = _stats(served)
    assert failed == 0 and stats["rejected"] == before  # no 429 once the figure is known
    assert stats["max_requests_in_window"] <= 5


def test_lower_figures_lower_higher_ones_are_kept_out_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = SyncLimiter(None, quotas={MODEL: [RPM(10, MINUTE)]})
    assert limiter.learn(MODEL, "rpm", 6, quota_id="q") == ("lowered", 10)
    assert limiter.quota(MODEL)[0].amount == 6
    assert limiter.origins(MODEL)["rpm"].kind == "learned"
    assert limiter.learn(MODEL, "rpm", 6, quota_id="q") == ("same", 10)
    assert limiter.learn(MODEL, "rpm", 20, quota_id="q") == ("higher", 10)
    assert limiter.quota(MODEL)[0].amount == 10  # the configured figure, not the server's
    assert limiter.origins(MODEL)["rpm"].kind == "configured"
    # a figure the model lacks: adopted with Gemini's period for it
    assert limiter.learn(MODEL, "tpm", 500, quota_id="q") == ("adopted", None)
    tpm = next(lim for lim in limiter.quota(MODEL) if lim.name == "tpm")
    assert (tpm.amount, tpm.period, tpm.metric) == (500, MINUTE * 60, "input_tokens")


def test_minute_seconds_scales_tables_and_learned_figures() -> None:
    limiter = SyncLimiter("tier1", minute_seconds=2.0)
    rpm = next(lim for lim in limiter.quota("gemini-2.5-flash") if lim.name == "rpm")
    assert rpm.period == 2.0
    assert limiter.origins("gemini-2.5-flash")["rpm"].kind == "table"
    limiter.learn(MODEL, "tpm", 900)
    tpm = next(lim for lim in limiter.quota(MODEL) if lim.name == "tpm")
    assert tpm.period == 2.0


def test_overrides_are_told_from_table_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAFLOW_LIMITS", "gemini-2.5-flash:tpm=1234")
    limiter = SyncLimiter("tier1", overrides={"gemini-2.5-pro": {"rpm": 7}})
    flash = limiter.origins("gemini-2.5-flash")
    assert flash["tpm"].kind == "override" and flash["rpm"].kind == "table"
    assert flash["rpm"].source  # the table names where its figure comes from
    assert limiter.origins("gemini-2.5-pro")["rpm"].kind == "override"


@pytest.mark.anyio
async def test_a_fleet_on_one_backend_learns_once(served: ServedEmulator) -> None:
    shared = MemoryBackend()
    a = Limiter("tier1", minute_seconds=MINUTE, backend=shared)
    b = Limiter("tier1", minute_seconds=MINUTE, backend=shared)
    await _run(a, served, tasks=8, calls=2)
    rejected = _stats(served)["rejected"]
    assert rejected >= 1
    await anyio.sleep(a._core.poll_every)
    status = await b.status(MODEL)  # b never saw a 429
    assert status["rpm"].limit == 5 and status["rpm"].origin.kind == "learned"
    failed, _ = await _run(b, served, tasks=8, calls=2)
    assert failed == 0 and _stats(served)["rejected"] == rejected


@pytest.mark.anyio
async def test_a_cache_file_keeps_learned_figures(served: ServedEmulator, tmp_path: Path) -> None:
    cache = tmp_path / "learned.json"
    first = Limiter("tier1", minute_seconds=MINUTE, learned_cache=cache)
    await _run(first, served, tasks=8, calls=2)
    assert cache.exists()
    rejected = _stats(served)["rejected"]
    second = Limiter("tier1", minute_seconds=MINUTE, learned_cache=cache)  # a restart
    assert second.quota(MODEL)[0].amount == 5
    await anyio.sleep(MINUTE)
    failed, _ = await _run(second, served, tasks=8, calls=2)
    assert failed == 0 and _stats(served)["rejected"] == rejected
    assert "test-key" not in cache.read_text()


@pytest.mark.anyio
async def test_extensions_show_where_each_figure_came_from(served: ServedEmulator) -> None:
    limiter = Limiter("tier1", minute_seconds=MINUTE)
    _, responses = await _run(limiter, served, tasks=8, calls=2)
    assert responses  # the SDK keeps the HTTP response's headers only: read a raw call
    import httpx

    from quotaflow.transports import QuotaTransport

    transport = QuotaTransport(limiter, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=transport, base_url=served.base_url) as http:
        r = await http.post(
            f"/v1beta/models/{MODEL}:generateContent",
            headers={"x-goog-api-key": KEY},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    assert r.status_code == 200
    origins = r.extensions["quotaflow"].origins
    assert origins["rpm"].kind == "learned"


@pytest.mark.anyio
@pytest.mark.parametrize("detail", ["no_value", "bare"])
async def test_429s_without_a_figure_drive_an_adaptive_rate(detail: str) -> None:
    with serve(_config(rpm=10, quota_error_detail=detail)) as served:
        limiter = Limiter("tier1", minute_seconds=MINUTE)
        failed, _ = await _run(limiter, served, tasks=8, calls=8)  # 64 calls at 10 per second
        stats = _stats(served)
        status = await limiter.status(MODEL)
    assert failed == 0 and stats["admitted"] == 64
    assert status["rpm"].origin.kind == "adaptive"
    assert 1 <= status["rpm"].limit <= 16
    # the first burst teaches; then the rate stays near the limit, rarely over
    assert stats["rejected"] <= 24


def test_a_learned_day_quota_is_spent_until_it_resets() -> None:
    config = EmulatorConfig(
        minute_seconds=MINUTE,
        day_seconds=3600.0,
        models=[ModelConfig(name=MODEL, rpd=3)],
    )
    with serve(config) as served:
        limiter = Limiter("tier1", minute_seconds=MINUTE, day_seconds=3600.0)
        sync = SyncLimiter.sharing(limiter)
        options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
        with genai.Client(api_key=KEY, http_options=options) as client:
            for _ in range(3):
                client.models.generate_content(model=MODEL, contents="hi")
            with pytest.raises(genai_errors.ClientError) as taught:
                client.models.generate_content(model=MODEL, contents="hi")  # teaches
            assert taught.value.code == 429 and _quotaflow_info(taught.value)["dimension"] == "rpd"
            received = _stats(served)["received"]
            with pytest.raises(genai_errors.ClientError) as local:
                client.models.generate_content(model=MODEL, contents="hi")  # refused locally
            assert _quotaflow_info(local.value)["code"] == "QUOTAFLOW_QUOTA_EXHAUSTED"
        assert _stats(served)["received"] == received
        status = sync.status(MODEL)
        assert status["rpd"].limit == 3 and status["rpd"].origin.kind == "learned"


@pytest.mark.anyio
async def test_a_tier_drop_is_followed(served: ServedEmulator) -> None:
    limiter = Limiter("tier1", minute_seconds=MINUTE)
    await _run(limiter, served, tasks=8, calls=2)
    served.emulator.set_limits(MODEL, rpm=2)  # the server halves (and more) the limit
    failed, _ = await _run(limiter, served, tasks=4, calls=2)
    assert failed == 0
    assert (await limiter.status(MODEL))["rpm"].limit == 2
    before = _stats(served)["rejected"]
    await anyio.sleep(MINUTE)
    failed, _ = await _run(limiter, served, tasks=4, calls=2)
    assert failed == 0 and _stats(served)["rejected"] == before


def test_higher_server_figure_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with serve(_config(rpm=5)) as served:
        limiter = Limiter(None, quotas={MODEL: [RPM(3, MINUTE)]})
        sync = SyncLimiter.sharing(limiter)
        served.emulator.inject(MODEL, 429, count=2, violations=("rpm",), retry_delay=0.05)
        options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
        with (
            caplog.at_level(logging.WARNING, logger="quotaflow"),
            genai.Client(api_key=KEY, http_options=options) as client,
        ):
            client.models.generate_content(model=MODEL, contents="hi")
        warnings = [r for r in caplog.records if "above the configured" in r.getMessage()]
        assert len(warnings) == 1
        assert sync.quota(MODEL)[0].amount == 3
