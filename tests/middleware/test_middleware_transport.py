"""The transports against a scripted inner transport (httpx.MockTransport): feedback, retries,
headers, redaction. End-to-end runs against the emulator are in test_middleware_e2e.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

import quotaflow
from quotaflow import RPD, RPM, TPM, CannotFitError, Limiter, QuotaExhaustedError, SyncLimiter
from quotaflow.transports import CallInfo, QuotaTransport, SyncQuotaTransport

MODEL = "gemini-2.5-flash"
KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv"
GEN = f"https://h/v1beta/models/{MODEL}:generateContent"
BODY = {"contents": [{"parts": [{"text": "a" * 400}]}]}  # 100 tokens by the estimate
OK = {"candidates": [], "usageMetadata": {"promptTokenCount": 90, "totalTokenCount": 95}}


def _quota() -> dict[str, list[quotaflow.Limit]]:
    return {MODEL: [RPM(100, 1.0), TPM(10_000, 1.0), RPD(1000)]}


def _error(
    code: int, violations: Sequence[tuple[str, int | None]] = (), delay: str | None = None
) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if violations:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaId": qid,
                        "quotaMetric": "generativelanguage.googleapis.com/x",
                        "quotaDimensions": {"location": "global", "model": MODEL},
                        **({"quotaValue": str(v)} if v is not None else {}),
                    }
                    for qid, v in violations
                ],
            }
        )
    if delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    status = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}.get(code, "X")
    return {"error": {"code": code, "message": "m", "status": status, "details": details}}


RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
TPM_ID = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
RPD_ID = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


class Script:
    """An inner transport answering from a list of (status, json) and recording requests."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.answers.pop(0) if self.answers else (200, OK)
        return httpx.Response(status, json=body)

    @property
    def generate_calls(self) -> int:
        return sum(1 for r in self.requests if r.url.path.endswith("Content"))


def _client(
    limiter: Limiter, script: Callable[[httpx.Request], httpx.Response], **kw: Any
) -> httpx.AsyncClient:
    transport = QuotaTransport(limiter, httpx.MockTransport(script), backoff=0.01, **kw)
    return httpx.AsyncClient(transport=transport, headers={"x-goog-api-key": KEY})


@pytest.mark.anyio
async def test_settles_with_real_usage_and_strips_directives() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script()
    async with _client(limiter, script) as client:
        r = await client.post(
            GEN,
            json=BODY,
            headers={
                "x-quotaflow-priority": "high",
                "x-quotaflow-agent": "planner",
                "X-Quotaflow-Timeout": "5",
            },
        )
    assert r.status_code == 200
    info: CallInfo = r.extensions["quotaflow"]
    assert (info.priority, info.agent, info.estimated, info.sized_by) == (
        2,
        "planner",
        100,
        "estimate",
    )
    assert info.settled and info.usage is not None and info.usage.input_tokens == 90
    sent = script.requests[0].headers
    assert not [k for k in sent if k.lower().startswith("x-quotaflow-")]
    status = await limiter.status(MODEL)
    assert status["tpm"].used == 90 and status["rpm"].used == 1 and status["tpm"].in_flight == 0


@pytest.mark.anyio
async def test_context_priority_and_agent() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    async with _client(limiter, Script()) as client:
        with quotaflow.priority("critical"), quotaflow.agent("a1"):
            r = await client.post(GEN, json=BODY)
    assert (r.extensions["quotaflow"].priority, r.extensions["quotaflow"].agent) == (3, "a1")


@pytest.mark.anyio
async def test_per_minute_429_pauses_calibrates_and_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script(
        (429, _error(429, [(RPM_ID, 60), (TPM_ID, None)], "0.05s")),
        (429, _error(429, [(RPM_ID, 60)], "0.05s")),
    )
    async with _client(limiter, script) as client:
        r = await client.post(GEN + f"?key={KEY}", json=BODY)
    assert r.status_code == 200 and script.generate_calls == 3
    assert r.extensions["quotaflow"].statuses == [429, 429, 200]
    assert {lim.name: lim.amount for lim in limiter.quota(MODEL)}["rpm"] == 60
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "100" in warnings[0].getMessage()
    assert "60" in warnings[0].getMessage()
    assert KEY not in caplog.text


def _refusal(r: httpx.Response) -> dict[str, str]:
    """The ``ErrorInfo`` metadata of a local refusal (domain ``quotaflow``)."""
    error = r.json()["error"]
    (info,) = [d for d in error["details"] if d.get("domain") == "quotaflow"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    return {"code": info["reason"], "status": error["status"], **info["metadata"]}


@pytest.mark.anyio
async def test_per_day_429_fails_fast_until_pacific_midnight() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script((429, _error(429, [(RPD_ID, 1000)], "38s")))
    async with _client(limiter, script) as client:
        r = await client.post(GEN, json=BODY)
        assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
        info = _refusal(r)
        assert (info["code"], info["status"]) == ("QUOTAFLOW_QUOTA_EXHAUSTED", "RESOURCE_EXHAUSTED")
        assert info["reason"] == "quota_exhausted" and info["dimension"] == "rpd"
        assert info["resets_at"] and float(info["retry_after"]) > 38
        assert KEY not in r.text
        again = await client.post(GEN, json=BODY)  # refused by the limiter: never sent
        assert again.status_code == 429 and _refusal(again)["dimension"] == "rpd"
    assert script.generate_calls == 1


@pytest.mark.anyio
async def test_a_request_larger_than_a_limit_is_a_local_400_and_never_sent() -> None:
    limiter = Limiter(tier=None, quotas={MODEL: [RPM(100, 1.0), TPM(50, 1.0)]})
    script = Script()
    async with _client(limiter, script) as client:
        r = await client.post(GEN, json=BODY)  # 100 tokens against a 50-token limit
        assert r.status_code == 400
        info = _refusal(r)
        assert (info["code"], info["status"]) == ("QUOTAFLOW_CANNOT_FIT", "INVALID_ARGUMENT")
        assert (info["reason"], info["dimension"], info["model"]) == ("cannot_fit", "tpm", MODEL)
    async with _client(limiter, script, local_errors="raise") as client:
        with pytest.raises(CannotFitError):
            await client.post(GEN, json=BODY)
    assert script.generate_calls == 0


@pytest.mark.anyio
async def test_per_day_429_raises_the_typed_error_when_asked() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script((429, _error(429, [(RPD_ID, 1000)], "38s")))
    async with _client(limiter, script, local_errors="raise") as client:
        with pytest.raises(QuotaExhaustedError) as info:
            await client.post(GEN, json=BODY)
        assert info.value.dimension == "rpd" and info.value.resets_at is not None
        assert info.value.retry_after is not None and info.value.retry_after > 38
        assert KEY not in str(info.value)
        with pytest.raises(QuotaExhaustedError):
            await client.post(GEN, json=BODY)  # refused by the limiter: never sent
    assert script.generate_calls == 1


@pytest.mark.anyio
async def test_429_without_quota_failure_backs_off_without_changing_limits() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script((429, [{"error": {"code": 429, "message": "Resource has been exhausted"}}]))
    async with _client(limiter, script) as client:
        r = await client.post(GEN, json=BODY)
    assert r.status_code == 200 and script.generate_calls == 2
    assert {lim.name: lim.amount for lim in limiter.quota(MODEL)}["rpm"] == 100
    assert (await limiter.status(MODEL))["rpm"].paused_until is None


@pytest.mark.anyio
async def test_retries_run_out_and_the_last_response_is_unchanged() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    last = _error(429, [(RPM_ID, None)], "0.01s")
    last["error"]["message"] = "the last one"
    script = Script(*[(429, _error(429, [(RPM_ID, None)], "0.01s"))] * 2, (429, last))
    async with _client(limiter, script, max_429_retries=2) as client:
        r = await client.post(GEN, json=BODY)
    assert r.status_code == 429 and r.json() == last and script.generate_calls == 3


@pytest.mark.anyio
@pytest.mark.parametrize("code", [500, 503, 504])
async def test_5xx_retried_for_calls_that_create_nothing(code: int) -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script((code, _error(code)), (code, _error(code)))
    async with _client(limiter, script) as client:
        r = await client.post(GEN, json=BODY)
        assert r.status_code == 200 and script.generate_calls == 3
        r = await client.get("https://h/v1beta/files")  # a read: retried too
    status = await limiter.status(MODEL)
    assert status["rpm"].used == 3  # every attempt that reached the server keeps its request


@pytest.mark.anyio
async def test_5xx_not_retried_for_calls_that_create_resources() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script((503, _error(503)), (503, _error(503)))
    async with _client(limiter, script) as client:
        r = await client.post("https://h/v1beta/cachedContents", json={"model": MODEL})
        assert r.status_code == 503 and len(script.requests) == 1
    script = Script((503, _error(503)))
    async with _client(limiter, script, retry_writes=True) as client:
        r = await client.post("https://h/v1beta/cachedContents", json={"model": MODEL})
        assert r.status_code == 200 and len(script.requests) == 2


@pytest.mark.anyio
async def test_5xx_retries_run_out_and_body_is_unchanged() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script(*[(500, _error(500))] * 5)
    async with _client(limiter, script, max_5xx_retries=1) as client:
        r = await client.post(GEN, json=BODY)
    assert r.status_code == 500 and r.json() == _error(500) and script.generate_calls == 2


@pytest.mark.anyio
async def test_send_failure_keeps_the_request_and_frees_nothing_twice() -> None:
    limiter = Limiter(tier=None, quotas=_quota())

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with _client(limiter, boom, max_5xx_retries=0) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(GEN, json=BODY)
    status = await limiter.status(MODEL)
    assert status["rpm"].in_flight == 0 and status["rpm"].used == 1


@pytest.mark.anyio
async def test_count_tokens_sizing_is_cached_and_falls_back() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    script = Script((200, {"totalTokens": 77}))
    async with _client(limiter, script, sizing="count") as client:
        system = {"parts": [{"text": "be brief"}]}
        r1 = await client.post(GEN + f"?key={KEY}", json={**BODY, "systemInstruction": system})
        r2 = await client.post(GEN + f"?key={KEY}", json={**BODY, "systemInstruction": system})
    count_req = script.requests[0]
    assert count_req.url.path.endswith(":countTokens") and count_req.url.params["key"] == KEY
    assert count_req.headers["x-goog-api-key"] == KEY
    inner = json.loads(count_req.content)["generateContentRequest"]
    assert inner["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert inner["model"] == f"models/{MODEL}"
    assert (r1.extensions["quotaflow"].sized_by, r1.extensions["quotaflow"].estimated) == (
        "count",
        77,
    )
    assert r2.extensions["quotaflow"].sized_by == "cache" and len(script.requests) == 3

    script = Script((500, _error(500)))
    async with _client(limiter, script, sizing={MODEL: "count"}, max_5xx_retries=0) as client:
        r = await client.post(GEN, json={"contents": [{"parts": [{"text": "new"}]}]})
    assert r.extensions["quotaflow"].sized_by == "estimate" and r.status_code == 200


@pytest.mark.anyio
async def test_user_sizing_function_and_output_reservation() -> None:
    limiter = Limiter(
        tier=None,
        quotas={MODEL: [RPM(100, 1.0), quotaflow.Limit("otpm", 5000, 1.0, "output_tokens")]},
    )
    seen: list[str] = []

    def size(call: Any, body: Any) -> int:
        seen.append(call.action)
        return 5

    async with _client(limiter, Script(), sizing=size, reserve_output=True) as client:
        body = {**BODY, "generationConfig": {"maxOutputTokens": 300}}
        r = await client.post(GEN, json=body)
    assert r.extensions["quotaflow"].estimated == 5 and seen == ["generateContent"]
    assert (await limiter.status(MODEL))["otpm"].used == 0  # settled: OK reports no output


@pytest.mark.anyio
async def test_unmetered_calls_pass_through_classified() -> None:
    limiter = Limiter(tier=None, quotas=_quota())  # knows no "files" quota: none is needed
    async with _client(limiter, Script()) as client:
        r = await client.get("https://h/v1beta/files")
        up = await client.post("https://h/upload/v1beta/files", content=b"x" * 10)
    info = r.extensions["quotaflow"]
    assert (info.call.area, info.call.access, info.priority) == ("files", "read", None)
    assert up.status_code == 200
    sent = up.extensions["quotaflow"]  # an upload streams through once, unmetered, unretried
    assert (sent.call.action, sent.attempts, sent.priority, sent.estimated) == (
        "upload",
        1,
        None,
        0,
    )


@pytest.mark.anyio
async def test_repr_shows_no_secret() -> None:
    limiter = Limiter(tier=None, quotas=_quota())
    transport = QuotaTransport(limiter)
    assert "QuotaTransport" in repr(transport) and KEY not in repr(transport)
    await transport.aclose()


def test_sync_transport() -> None:
    limiter = SyncLimiter(tier=None, quotas=_quota())
    script = Script((503, _error(503)), (429, _error(429, [(TPM_ID, None)], "0.01s")))
    transport = SyncQuotaTransport(limiter, httpx.MockTransport(script), backoff=0.01)
    with httpx.Client(transport=transport) as client:
        r = client.post(GEN, json=BODY, headers={"x-quotaflow-priority": "low"})
        assert r.status_code == 200 and script.generate_calls == 3
        assert r.extensions["quotaflow"].priority == 0
        assert r.extensions["quotaflow"].usage.input_tokens == 90
        script.answers.append((429, _error(429, [(RPD_ID, None)], "1s")))
        day = client.post(GEN, json=BODY)
        assert day.status_code == 429 and _refusal(day)["reason"] == "quota_exhausted"
    assert limiter.status(MODEL)["tpm"].in_flight == 0
    transport = SyncQuotaTransport(limiter, httpx.MockTransport(script), local_errors="raise")
    with httpx.Client(transport=transport) as client, pytest.raises(QuotaExhaustedError):
        client.post(GEN, json=BODY)
