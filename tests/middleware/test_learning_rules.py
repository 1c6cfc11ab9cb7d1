"""What a 429 may not teach: figures out of range, figures about another model, a spend quota;
what the fleet's figures may not do: a guess replacing a figure the server named, a clock
ahead pausing this host. 429 bodies are sent verbatim by the emulator over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai

from quotaflow import RPM, Limiter, MemoryBackend, SyncLimiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.quotas.learned import Figure
from quotaflow.transports import genai_http_options

KEY = "test-key"
MODEL = "gemini-3.5-flash"
MINUTE = 1.0
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel"


def _body(*violations: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "quota",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": violations},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.05s"},
            ],
        }
    }


def _rpm(value: str, model: str = MODEL) -> dict[str, Any]:
    return {"quotaId": RPM_ID, "quotaDimensions": {"model": model}, "quotaValue": value}


@pytest.fixture
def served() -> Iterator[ServedEmulator]:
    config = EmulatorConfig(minute_seconds=MINUTE, models=[ModelConfig(name=MODEL)])
    with serve(config) as s:
        yield s


def _call(limiter: Limiter, served: ServedEmulator, body: dict[str, Any]) -> SyncLimiter:
    sync = SyncLimiter.sharing(limiter)
    served.emulator.inject(MODEL, 429, body=body)
    options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
    with genai.Client(api_key=KEY, http_options=options) as client:
        client.models.generate_content(model=MODEL, contents="hi")  # the retry succeeds
    return sync


@pytest.mark.parametrize("value", ["-1", "10000000000000", "lots"])
def test_a_figure_out_of_range_is_not_learned(served: ServedEmulator, value: str) -> None:
    sync = _call(Limiter("tier1", minute_seconds=MINUTE), served, _body(_rpm(value)))
    origin = sync.origins(MODEL).get("rpm")
    assert origin is None or origin.kind != "learned"
    sync.status(MODEL)  # still usable


def test_one_body_teaches_its_lowest_figure_for_the_called_model(served: ServedEmulator) -> None:
    body = _body(_rpm("2000", "gemini-other"), _rpm("40"), _rpm("25"))
    sync = _call(Limiter("tier1", minute_seconds=MINUTE), served, body)
    assert sync.quota(MODEL)[0].name == "rpm"
    assert next(lim.amount for lim in sync.quota(MODEL) if lim.name == "rpm") == 25


def test_a_spend_quota_429_does_not_drive_the_request_rate(served: ServedEmulator) -> None:
    spend = {"quotaId": "SpendPerTenMinutesPerProject", "quotaMetric": "x/spend"}
    limiter = Limiter("tier1", minute_seconds=MINUTE, spend=False)
    sync = _call(limiter, served, _body(spend))
    assert "rpm" not in sync.origins(MODEL)


def test_a_guess_never_replaces_a_figure_the_server_named() -> None:
    shared = MemoryBackend()
    a = SyncLimiter(None, quotas={MODEL: []}, backend=shared, minute_seconds=MINUTE)
    a.learn(MODEL, "rpm", 1000, quota_id=RPM_ID)
    guess = Figure(3, "adaptive", a.clock.now() + 1, "")
    a._core.take_shared(MODEL, {"rpm": guess.to_json()})
    assert next(lim.amount for lim in a.quota(MODEL) if lim.name == "rpm") == 1000


def test_a_clock_ahead_elsewhere_pauses_nothing_here() -> None:
    shared = MemoryBackend()
    b = SyncLimiter("tier1", backend=shared, minute_seconds=MINUTE)
    b.status(MODEL)
    ahead = Figure(30, "learned", b.clock.now() + 7200, RPM_ID)
    key = f"default/{MODEL}"
    shared.learn(key, "rpm", ahead.to_json(), 60)
    b._core._polled.clear()
    status = b.status(MODEL)
    paused = status["rpm"].paused_until
    assert paused is None or paused <= b.clock.now() + MINUTE + 0.5
    assert json.loads(ahead.to_json())["at"] > b.clock.now()


def test_an_adaptive_figure_does_not_grow_without_demand() -> None:
    limiter = SyncLimiter(None, quotas={MODEL: [RPM(100, MINUTE)]}, minute_seconds=MINUTE)
    core = limiter._core
    core.book.figures[MODEL] = {"tpm": Figure(50, "adaptive", core.clock.now() - 5, "")}
    assert core.grow(MODEL, "tpm", used=3) is None  # 3 of 50 used: no growth
    assert core.book.figures[MODEL]["tpm"].amount == 50


def test_the_first_guess_on_the_memory_backend_counts_the_calls(served: ServedEmulator) -> None:
    limiter = Limiter("tier1", minute_seconds=3.0)
    sync = SyncLimiter.sharing(limiter)
    options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
    with genai.Client(api_key=KEY, http_options=options) as client:
        for _ in range(20):
            client.models.generate_content(model=MODEL, contents="hi")
        served.emulator.inject(MODEL, 429, body=_body({"quotaId": RPM_ID}))  # no quotaValue
        client.models.generate_content(model=MODEL, contents="hi")
    rpm = next(lim for lim in sync.quota(MODEL) if lim.name == "rpm")
    assert sync.origins(MODEL)["rpm"].kind == "adaptive"
    assert rpm.amount >= 15  # about what was served in the minute, not 1
