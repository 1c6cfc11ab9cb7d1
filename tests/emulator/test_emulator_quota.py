"""Quota metering over real loopback HTTP, with the emulator's clock set by hand."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from emulator_helpers import KEY, TickClock, gen_body, small_config

from quotaflow.emulator import ModelConfig, ServedEmulator

FLASH = "/v1beta/models/gemini-2.5-flash"
PACIFIC = ZoneInfo("America/Los_Angeles")
PREFIX = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. "
    "To monitor your current usage, head to: https://ai.dev/rate-limit. \n"
)
RPM_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
TPM_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"


def gen(http: httpx.Client, text: str = "hi", model: str = FLASH, **kw: Any) -> httpx.Response:
    return http.post(f"{model}:generateContent", json=gen_body(text), **kw)


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def pacific(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> float:
    return datetime(year, month, day, hour, minute, sec, tzinfo=PACIFIC).timestamp()


def test_429_body_field_by_field(http: httpx.Client, clock: TickClock) -> None:
    for _ in range(3):
        assert gen(http).status_code == 200
    clock.advance(0.25)
    response = gen(http)
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    err = error(response)
    assert err["code"] == 429
    assert err["status"] == "RESOURCE_EXHAUSTED"
    assert err["message"] == (
        PREFIX + f"* Quota exceeded for metric: {RPM_METRIC}, limit: 3, model: gemini-2.5-flash\n"
        "Please retry in 0.75s."
    )
    help_, failure, retry = err["details"]
    assert help_ == {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
            {
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }
        ],
    }
    assert failure == {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": RPM_METRIC,
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": "3",
            }
        ],
    }
    assert retry == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.75s"}


def test_whole_retry_delay_rounds_up(
    start: Callable[..., ServedEmulator], clock: TickClock
) -> None:
    served = start(small_config(retry_delay_format="whole", minute_seconds=60.0), clock)
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as http:
        for _ in range(3):
            gen(http)
        clock.advance(33.5)
        err = error(gen(http))
    assert err["details"][2]["retryDelay"] == "27s"
    assert err["message"].endswith("Please retry in 26.5s.")


def test_rolling_window_boundary(http: httpx.Client, clock: TickClock) -> None:
    for _ in range(3):
        assert gen(http).status_code == 200
    clock.advance(1.0 - 1e-6)
    assert gen(http).status_code == 429
    clock.advance(1e-6)  # exactly one period after the first three
    assert gen(http).status_code == 200


def test_rolling_retry_delay_is_exact(http: httpx.Client, clock: TickClock) -> None:
    for _ in range(3):
        assert gen(http).status_code == 200
        clock.advance(0.25)
    # admissions at 0, .25, .5; now .75: the first leaves the window at 1.0
    assert error(gen(http))["details"][2]["retryDelay"] == "0.25s"
    clock.advance(0.25)
    assert gen(http).status_code == 200


def test_fixed_windows(start: Callable[..., ServedEmulator], clock: TickClock) -> None:
    served = start(small_config(window="fixed"), clock)
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as http:
        clock.advance(0.5)
        for _ in range(3):
            assert gen(http).status_code == 200
        clock.advance(0.4)
        assert error(gen(http))["details"][2]["retryDelay"] == "0.1s"
        clock.advance(0.1)  # the next fixed window, though a rolling one would still be full
        assert gen(http).status_code == 200


def test_several_violations(http: httpx.Client, clock: TickClock) -> None:
    assert gen(http, "x" * 320).status_code == 200  # 80 tokens
    clock.advance(0.5)
    assert gen(http).status_code == 200
    assert gen(http).status_code == 200
    err = error(gen(http, "y" * 120))  # 30 tokens: 80 + 1 + 1 + 30 > 100, and a 4th request
    violations = err["details"][1]["violations"]
    assert [v["quotaId"] for v in violations] == [
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        "GenerateContentInputTokensPerModelPerMinute-FreeTier",
    ]
    assert [v["quotaValue"] for v in violations] == ["3", "100"]
    assert f"metric: {RPM_METRIC}, limit: 3" in err["message"]
    assert f"metric: {TPM_METRIC}, limit: 100" in err["message"]
    # rpm frees at 0.5 (first admission leaves); tpm only once the 80 tokens leave, also 0.5
    assert err["details"][2]["retryDelay"] == "0.5s"


def test_prompt_over_tpm_is_always_rejected(http: httpx.Client, clock: TickClock) -> None:
    for _ in range(3):
        response = gen(http, "z" * 404)  # 101 tokens > tpm 100
        assert response.status_code == 429
        violations = error(response)["details"][1]["violations"]
        assert [v["quotaId"] for v in violations] == [
            "GenerateContentInputTokensPerModelPerMinute-FreeTier"
        ]
        clock.advance(3600)
    assert gen(http, "z" * 400).status_code == 200  # exactly 100 fits


def test_rejected_requests_cost_nothing(http: httpx.Client, served: ServedEmulator) -> None:
    for _ in range(3):
        gen(http)
    for _ in range(5):
        assert gen(http).status_code == 429
    stats = served.emulator.stats()["models"]["gemini-2.5-flash"]
    assert stats["admitted"] == 3
    assert stats["rejected"] == 5
    assert stats["rejected_by_dimension"] == {"rpm": 5}
    assert stats["requests_admitted"] == 3
    assert stats["max_requests_in_window"] == 3


def test_keys_of_one_project_share_quota(http: httpx.Client) -> None:
    assert gen(http).status_code == 200
    assert gen(http, headers={"x-goog-api-key": "second-key"}).status_code == 200
    assert (
        gen(http, params={"key": "second-key"}, headers={"x-goog-api-key": ""}).status_code == 200
    )
    assert gen(http, headers={"x-goog-api-key": "second-key"}).status_code == 429
    assert gen(http, headers={"x-goog-api-key": "other-key"}).status_code == 200


@pytest.mark.parametrize(
    ("admit_at", "last_second", "midnight"),
    [
        # spring forward: 2026-03-08 has 23 hours
        (pacific(2026, 3, 8, 0, 30), pacific(2026, 3, 8, 23, 59, 59), pacific(2026, 3, 9)),
        # fall back: 2026-11-01 has 25 hours
        (pacific(2026, 11, 1, 0, 30), pacific(2026, 11, 1, 23, 59, 59), pacific(2026, 11, 2)),
    ],
)
def test_rpd_resets_at_pacific_midnight_across_dst(
    start: Callable[..., ServedEmulator],
    clock: TickClock,
    admit_at: float,
    last_second: float,
    midnight: float,
) -> None:
    model = ModelConfig(name="gemini-2.5-flash", rpd=1)
    served = start(small_config(models=[model], minute_seconds=60.0), clock)
    assert midnight - last_second == 1.0
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as http:
        clock.t = admit_at
        assert gen(http).status_code == 200
        clock.t = last_second
        err = error(gen(http))
        (violation,) = err["details"][1]["violations"]
        assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
        assert violation["quotaValue"] == "1"
        assert err["details"][2]["retryDelay"] == "1s"
        clock.t = midnight - 1e-3
        assert gen(http).status_code == 429
        clock.t = midnight
        assert gen(http).status_code == 200


def test_compressed_day(start: Callable[..., ServedEmulator], clock: TickClock) -> None:
    model = ModelConfig(name="gemini-2.5-flash", rpd=2)
    clock.t = 1000.0
    served = start(small_config(models=[model], day_seconds=10.0), clock)
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as http:
        assert gen(http).status_code == 200
        assert gen(http).status_code == 200
        clock.advance(4.0)
        assert error(gen(http))["details"][2]["retryDelay"] == "6s"
        clock.advance(6.0)
        assert gen(http).status_code == 200


def test_count_tokens_has_its_own_quota(http: httpx.Client, served: ServedEmulator) -> None:
    for _ in range(4):
        assert http.post(f"{FLASH}:countTokens", json=gen_body()).status_code == 200
    response = http.post(f"{FLASH}:countTokens", json=gen_body())
    assert response.status_code == 429
    (violation,) = error(response)["details"][1]["violations"]
    assert violation["quotaId"] == "CountTokensRequestsPerMinutePerProjectPerModel"
    assert violation["quotaValue"] == "4"
    for _ in range(3):  # counting spent none of the generate quota
        assert gen(http).status_code == 200
    stats = served.emulator.stats()["models"]["gemini-2.5-flash"]
    assert stats["count_tokens"] == {"received": 5, "admitted": 4, "rejected": 1}
    assert stats["admitted"] == 3


def test_embedding_batch_costs_one_request_per_item(http: httpx.Client) -> None:
    url = "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    item = {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "abcd"}]}}
    assert http.post(url, json={"requests": [item] * 4}).status_code == 200
    assert http.post(url, json={"requests": [item] * 2}).status_code == 429  # 4 + 2 > 5
    response = http.post(url, json={"requests": [item]})
    assert response.status_code == 200
    one = http.post("/v1beta/models/gemini-embedding-001:embedContent", json=item)
    (violation,) = error(one)["details"][1]["violations"]
    assert violation["quotaId"] == "EmbedContentRequestsPerMinutePerProjectPerModel-FreeTier"
    assert violation["quotaMetric"].endswith("embed_content_free_tier_requests")


def test_failed_admitted_requests_cost(http: httpx.Client, served: ServedEmulator) -> None:
    served.emulator.inject("gemini-2.5-flash", 503)
    assert gen(http).status_code == 503
    assert gen(http).status_code == 200
    assert gen(http).status_code == 200
    assert gen(http).status_code == 429
    stats = served.emulator.stats()["models"]["gemini-2.5-flash"]
    assert (stats["admitted"], stats["failed"]) == (3, 1)


@pytest.mark.parametrize(
    ("tier", "tpm_id", "rpm_id"),
    [
        (
            "tier1",
            "GenerateContentPaidTierInputTokensPerModelPerMinute",
            "GenerateRequestsPerMinutePerProjectPerModel",
        ),
        (
            "tier2",
            "GenerateContentPaidTierInputTokensPerModelPerMinute-PaidTier2",
            "GenerateRequestsPerMinutePerProjectPerModel-PaidTier2",
        ),
    ],
)
def test_paid_tier_quota_names(
    start: Callable[..., ServedEmulator], clock: TickClock, tier: str, tpm_id: str, rpm_id: str
) -> None:
    served = start(small_config(tier=tier), clock)
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as http:
        for _ in range(3):
            assert gen(http).status_code == 200
        violations = error(gen(http, "x" * 400))["details"][1]["violations"]
    assert [v["quotaId"] for v in violations] == [rpm_id, tpm_id]
    assert "paid_tier" in violations[1]["quotaMetric"]


def test_stats_maxima_are_exact(http: httpx.Client, clock: TickClock) -> None:
    # admissions (time, tokens): 0:8, 0.5:4, 0.9:4 | 1.4:20 | 2.4:1 2.5:1
    plan = [(0.0, 8), (0.5, 4), (0.4, 4), (0.5, 20), (1.0, 1), (0.1, 1)]
    for step, tokens in plan:
        clock.advance(step)
        assert gen(http, "a" * (4 * tokens)).status_code == 200
    stats = http.get("/_emulator/stats", headers={}).json()
    flash = stats["models"]["gemini-2.5-flash"]
    assert stats["minute_seconds"] == 1.0
    assert flash["max_requests_in_window"] == 3  # (−0.1, 0.9] and (0.4, 1.4]
    assert flash["max_input_tokens_in_window"] == 28  # 4 + 4 + 20 in (0.4, 1.4]
    assert flash["tokens_admitted"] == 38
    assert flash["projects"]["proj-a"]["max_input_tokens_in_window"] == 28
    assert "log" not in flash
    log = http.get("/_emulator/stats", params={"log": "1"}).json()["models"]["gemini-2.5-flash"]
    assert [e["tokens"] for e in log["log"]] == [8, 4, 4, 20, 1, 1]
    assert {e["project"] for e in log["log"]} == {"proj-a"}


def test_reset_endpoint(http: httpx.Client, served: ServedEmulator) -> None:
    for _ in range(3):
        gen(http)
    assert gen(http).status_code == 429
    assert httpx.post(f"{served.base_url}/_emulator/reset").status_code == 200
    assert served.emulator.stats()["models"] == {}
    assert gen(http).status_code == 200
