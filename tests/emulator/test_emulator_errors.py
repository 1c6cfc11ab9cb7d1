"""Error responses: keys, 403, 404, 400, injected faults; and keys never reach the logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from emulator_helpers import KEY, TickClock, gen_body, small_config
from starlette.testclient import TestClient

from quotaflow.emulator import Emulator, FaultConfig, Injection, ModelConfig, ServedEmulator

FLASH = "/v1beta/models/gemini-2.5-flash"
API_KEY_INVALID = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": "API key not valid. Please pass a valid API key.",
            },
        ],
    }
}


def err(response: httpx.Response, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code
    return body


@pytest.mark.parametrize(
    ("headers", "params"),
    [({}, {}), ({"x-goog-api-key": "wrong"}, {}), ({}, {"key": "wrong"})],
    ids=["missing", "header", "query"],
)
def test_api_key_invalid(
    served: ServedEmulator, headers: dict[str, str], params: dict[str, str]
) -> None:
    url = f"{served.base_url}{FLASH}:generateContent"
    response = httpx.post(url, json=gen_body(), headers=headers, params=params)
    assert response.status_code == 400
    assert response.json() == API_KEY_INVALID
    assert served.emulator.stats()["models"] == {}  # nothing metered


def test_key_in_query_is_accepted(served: ServedEmulator) -> None:
    url = f"{served.base_url}{FLASH}:generateContent"
    assert httpx.post(url, json=gen_body(), params={"key": KEY}).status_code == 200


def test_blocked_key_is_denied(http: httpx.Client) -> None:
    response = http.get("/v1beta/models", headers={"x-goog-api-key": "blocked-key"})
    assert err(response, 403)["status"] == "PERMISSION_DENIED"


def test_other_projects_file_is_denied(http: httpx.Client) -> None:
    start = http.post(
        "/upload/v1beta/files",
        json={"file": {"displayName": "a"}},
        headers={
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": "3",
            "x-goog-upload-header-content-type": "text/plain",
        },
    )
    upload_url = start.headers["x-goog-upload-url"]
    done = httpx.post(
        upload_url,
        content=b"abc",
        headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"},
    )
    assert done.headers["x-goog-upload-status"] == "final"
    name = done.json()["file"]["name"]
    assert http.get(f"/v1beta/{name}").status_code == 200
    denied = http.get(f"/v1beta/{name}", headers={"x-goog-api-key": "other-key"})
    assert err(denied, 403)["message"].startswith("You do not have permission to access the File")
    body = gen_body()
    body["contents"][0]["parts"].append(
        {"fileData": {"fileUri": f"x/{name}", "mimeType": "text/plain"}}
    )
    other = http.post(
        f"{FLASH}:generateContent", json=body, headers={"x-goog-api-key": "other-key"}
    )
    assert err(other, 403)["status"] == "PERMISSION_DENIED"
    pro = "/v1beta/models/gemini-2.5-pro"  # unlimited: a file part costs 258 tokens
    assert http.post(f"{pro}:generateContent", json=body).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        (
            "POST",
            "/v1beta/models/nope:generateContent",
            "models/nope is not found for API version v1beta, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their "
            "supported methods.",
        ),
        (
            "POST",
            f"{FLASH}:embedContent",
            "models/gemini-2.5-flash is not found for API version v1beta, or is not supported "
            "for embedContent. Call ListModels to see the list of available models and their "
            "supported methods.",
        ),
        ("POST", "/v1/models/gemini-embedding-001:generateContent", None),
        ("GET", "/v1beta/models/nope", None),
        ("GET", "/v1beta/batches/nope", None),
        ("GET", "/v1beta/tunedModels/nope", None),
        ("GET", "/v1beta/nothing/here", None),
        ("GET", "/v2/models", None),
    ],
)
def test_not_found(http: httpx.Client, method: str, path: str, message: str | None) -> None:
    body = err(http.request(method, path, json=gen_body()), 404)
    assert body["status"] == "NOT_FOUND"
    if message is not None:
        assert body["message"] == message


def test_bad_requests(http: httpx.Client, served: ServedEmulator) -> None:
    url = f"{FLASH}:generateContent"
    bad_json = err(http.post(url, content=b"{not json"), 400)
    assert bad_json["status"] == "INVALID_ARGUMENT"
    assert bad_json["message"].startswith("Invalid JSON payload received.")
    missing = err(http.post(url, json={"generationConfig": {}}), 400)
    assert missing["message"] == "* GenerateContentRequest.contents: contents is not specified\n"
    unknown = err(http.post(url, json={**gen_body(), "bogus": 1}), 400)
    assert 'Unknown name "bogus"' in unknown["message"]
    parts = err(http.post(url, json={"contents": [{"parts": "x"}]}), 400)
    assert parts["status"] == "INVALID_ARGUMENT"
    item = {"content": {"parts": [{"text": "a"}]}}
    too_many = http.post(
        "/v1beta/models/gemini-embedding-001:batchEmbedContents", json={"requests": [item] * 101}
    )
    assert "at most 100 requests can be in one batch" in err(too_many, 400)["message"]
    assert served.emulator.stats()["models"] == {}  # malformed requests are never metered


def test_prompt_over_input_limit(start: Callable[..., ServedEmulator]) -> None:
    served = start(small_config(models=[ModelConfig(name="gemini-2.5-pro", input_token_limit=10)]))
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as http:
        response = http.post(
            "/v1beta/models/gemini-2.5-pro:generateContent", json=gen_body("x" * 44)
        )
    assert response.json() == {
        "error": {
            "code": 400,
            "message": "The input token count exceeds the maximum number of tokens allowed 10.",
            "status": "INVALID_ARGUMENT",
        }
    }
    # Gemini still counts such a request against the quota (billing FAQ, gemini-cli#15184).
    assert served.emulator.stats()["models"]["gemini-2.5-pro"]["tokens_admitted"] == 11


def test_injected_429_one_violation_fractional(http: httpx.Client, served: ServedEmulator) -> None:
    served.emulator.inject("models/gemini-2.5-flash", 429, violations=["tpm"], retry_delay=2.5)
    body = err(http.post(f"{FLASH}:generateContent", json=gen_body()), 429)
    (violation,) = body["details"][1]["violations"]
    assert violation["quotaId"] == "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    assert violation["quotaValue"] == "100"
    assert body["details"][2]["retryDelay"] == "2.5s"
    assert body["message"].endswith("Please retry in 2.5s.")
    assert http.post(f"{FLASH}:generateContent", json=gen_body()).status_code == 200


def test_injected_429_several_and_per_day(http: httpx.Client, served: ServedEmulator) -> None:
    served.emulator.inject("gemini-2.5-flash", count=2, violations=["rpd", "rpm", "tpm"])
    for _ in range(2):
        body = err(http.post(f"{FLASH}:generateContent", json=gen_body()), 429)
        ids = [v["quotaId"] for v in body["details"][1]["violations"]]
        assert ids == [
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "GenerateContentInputTokensPerModelPerMinute-FreeTier",
        ]
        assert body["details"][2]["retryDelay"] == "1s"  # the period
    for _ in range(3):  # injected 429s cost nothing
        assert http.post(f"{FLASH}:generateContent", json=gen_body()).status_code == 200
    stats = served.emulator.stats()["models"]["gemini-2.5-flash"]
    assert stats["injected_rejections"] == 2
    assert stats["rejected_by_dimension"] == {"injected": 2}


def test_injected_custom_body_and_project(http: httpx.Client, served: ServedEmulator) -> None:
    custom = {"error": {"code": 429, "message": "custom", "status": "RESOURCE_EXHAUSTED"}}
    served.emulator.inject("gemini-2.5-flash", body=custom, project="proj-b")
    assert http.post(f"{FLASH}:generateContent", json=gen_body()).status_code == 200
    other = http.post(
        f"{FLASH}:generateContent", json=gen_body(), headers={"x-goog-api-key": "other-key"}
    )
    assert other.status_code == 429
    assert other.json() == custom


INTERNAL = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
UNAVAILABLE = (
    "This model is currently experiencing high demand. Spikes in demand are usually temporary. "
    "Please try again later."
)
DEADLINE = "The service is unable to finish processing within the deadline."


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (500, "INTERNAL", INTERNAL),
        (503, "UNAVAILABLE", UNAVAILABLE),
        (504, "DEADLINE_EXCEEDED", DEADLINE),
    ],
)
def test_injected_server_errors(
    http: httpx.Client, served: ServedEmulator, code: int, status: str, message: str
) -> None:
    served.emulator.inject("gemini-2.5-flash", code)
    response = http.post(f"{FLASH}:generateContent", json=gen_body())
    assert response.json() == {"error": {"code": code, "message": message, "status": status}}


def test_inject_endpoint(http: httpx.Client, served: ServedEmulator) -> None:
    ok = http.post(
        "/_emulator/inject", json={"model": "gemini-2.5-flash", "status": 503, "count": 2}
    )
    assert ok.json() == {"pending": {"gemini-2.5-flash": 2}}
    assert http.post("/_emulator/inject", json={"model": "m", "status": 418}).status_code == 400
    assert http.post("/_emulator/inject", json={"model": "m", "nope": 1}).status_code == 400
    assert http.post(f"{FLASH}:generateContent", json=gen_body()).status_code == 503
    assert served.emulator.pending_injections() == {"gemini-2.5-flash": 1}


def test_injection_validation() -> None:
    with pytest.raises(ValueError, match="cannot inject status"):
        Injection(status=400)
    with pytest.raises(ValueError, match="violations"):
        Injection(violations=("rpx",))


def _statuses(seed: int, n: int) -> list[int]:
    faults = FaultConfig(seed=seed, error_rate_500=0.2, error_rate_503=0.2, error_rate_504=0.1)
    emulator = Emulator(small_config(faults=faults, models=[ModelConfig(name="gemini-2.5-pro")]))
    with TestClient(emulator, headers={"x-goog-api-key": KEY}) as tc:
        return [
            tc.post("/v1beta/models/gemini-2.5-pro:generateContent", json=gen_body()).status_code
            for _ in range(n)
        ]


def test_random_faults_are_seeded() -> None:
    first = _statuses(7, 60)
    assert first == _statuses(7, 60)
    assert set(first) == {200, 500, 503, 504}
    assert first != _statuses(8, 60)


def test_latency_and_jitter(start: Callable[..., ServedEmulator]) -> None:
    faults = FaultConfig(latency_seconds=0.05, jitter_seconds=0.02)
    served = start(small_config(faults=faults))
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as http:
        began = time.perf_counter()
        assert http.post(f"{FLASH}:generateContent", json=gen_body()).status_code == 200
        assert time.perf_counter() - began >= 0.05


def test_key_never_logged(
    start: Callable[..., ServedEmulator], caplog: pytest.LogCaptureFixture, clock: TickClock
) -> None:
    secret = "s3cret-key-do-not-log"
    config = small_config(keys=[{"key": secret, "project": "p"}])
    caplog.set_level(logging.DEBUG)
    served = start(config, clock)
    with httpx.Client(base_url=served.base_url) as http:
        for _ in range(5):  # 200s and a 429
            http.post(f"{FLASH}:generateContent", json=gen_body(), params={"key": secret})
        http.post(f"{FLASH}:generateContent", json=gen_body(), headers={"x-goog-api-key": secret})
        bad = http.get("/v1beta/models", params={"key": secret + "x"})
        assert secret not in bad.text
    served.stop()
    # the client (httpx) logs its own URL; the server side must not
    server = [r for r in caplog.records if r.name.startswith(("quotaflow", "uvicorn"))]
    assert any(r.name == "quotaflow.emulator" for r in server)
    assert any(r.name.startswith("uvicorn") for r in server)
    assert not [r for r in server if secret in r.getMessage()]
