"""One rule for calls refused here: each kind (a spent quota, a deadline that cannot hold, a
spent budget, a policy denial, a malformed request) reaches google-genai and OpenAI users as
the SDK's own API error, a Gemini-shaped response whose ``ErrorInfo`` (domain ``quotaflow``)
carries the reason, dimension, ``retry_after`` and ``resets_at``; ``local_errors="raise"``
keeps quotaflow's typed errors. Real SDKs against the emulator, sync and async (asyncio, trio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from agents_helpers import EMBED, FLASH, KEY, PERIOD, PRO, EmulatorRequests, Records
from google import genai
from google.genai import errors

from quotaflow import (
    RPD,
    RPM,
    TPM,
    Limiter,
    QuotaExhaustedError,
    QuotaTimeoutError,
    SyncLimiter,
)
from quotaflow.agents import Agents, BudgetExhaustedError, Policy, PolicyDeniedError
from quotaflow.emulator import ServedEmulator
from quotaflow.transports import QuotaTransport, SyncQuotaTransport, genai_http_options

KINDS = ["quota", "deadline", "budget", "policy"]
SDKS = ["genai", "openai"]
POLICY = {
    "agents": {
        "spender": {"grants": {"content": "write"}, "budget": {"requests_per_day": 1}},
        "writer": {"grants": {"content": "write"}},
    }
}


@dataclass(frozen=True)
class Expected:
    status: int
    status_text: str
    code: str
    reason: str
    dimension: str  # "" when the refusal has none
    timed: bool  # retry_after and resets_at are known
    typed: type[Exception]


EXPECTED = {
    "quota": Expected(
        429, "RESOURCE_EXHAUSTED", "QUOTAFLOW_QUOTA_EXHAUSTED", "quota_exhausted", "rpd", True,
        QuotaExhaustedError,
    ),
    "deadline": Expected(
        429, "RESOURCE_EXHAUSTED", "QUOTAFLOW_DEADLINE_EXCEEDED", "deadline", "rpm", True,
        QuotaTimeoutError,
    ),
    "budget": Expected(
        429, "RESOURCE_EXHAUSTED", "QUOTAFLOW_BUDGET_EXHAUSTED", "budget", "rpd", True,
        BudgetExhaustedError,
    ),
    "policy": Expected(
        403, "PERMISSION_DENIED", "QUOTAFLOW_POLICY_DENIED", "no_grant", "", False,
        PolicyDeniedError,
    ),
}  # fmt: skip


def _limiter(kind: str) -> Agents:
    """A limiter on which the second call of ``kind`` is refused here (the first passes)."""
    day = RPD(1) if kind == "quota" else RPD(100_000)
    minute = RPM(1, 60.0) if kind == "deadline" else RPM(600, PERIOD)
    quotas = {m: [minute, TPM(1_000_000, PERIOD), day] for m in (FLASH, EMBED)}
    policy = Policy.from_dict(POLICY if kind in ("budget", "policy") else {})
    return Agents(Limiter(None, quotas=quotas), policy)


def _agent(kind: str) -> str | None:
    return {"budget": "spender", "policy": "writer"}.get(kind)


HEADERS = {"x-quotaflow-timeout": "0.05"}  # the deadline kind: no 60 s wait fits


def _info(body: Any) -> dict[str, Any]:
    """The status text, and quotaflow's ``ErrorInfo`` (its reason as ``code``, then its
    metadata), of an error body (a list of one on the OpenAI surface)."""
    if isinstance(body, list):
        (body,) = body
    error = body["error"]
    (info,) = [d for d in error["details"] if d.get("domain") == "quotaflow"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    return {"status": error["status"], "code": info["reason"], **info["metadata"]}


def _check(kind: str, status: int, body: Any) -> None:
    want = EXPECTED[kind]
    info = _info(body)
    assert status == want.status
    assert (info["status"], info["code"], info["reason"]) == (
        want.status_text,
        want.code,
        want.reason,
    )
    assert info["dimension"] == want.dimension
    for field in ("retry_after", "resets_at"):
        assert (float(info[field]) > 0) if want.timed else info[field] == ""


# ---- google-genai ---------------------------------------------------------------------------


def _genai(
    kind: str, base_url: str, records: Records | None = None, **options: Any
) -> genai.Client:
    lim = _limiter(kind)
    agent = _agent(kind)
    audit = records.log if records is not None else None
    http = (
        lim.agent(agent, audit=audit).http_options(base_url=base_url, **options)
        if agent is not None
        else genai_http_options(lim.limiter, base_url=base_url, **options)
    )
    return genai.Client(api_key=KEY, http_options=http)


def _genai_call(kind: str) -> tuple[str, Any]:
    model = EMBED if kind == "policy" else FLASH
    config: Any = {"http_options": {"headers": HEADERS}} if kind == "deadline" else None
    return model, config


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_genai_async_sees_every_refusal_as_an_api_error(
    kind: str, served: ServedEmulator, requests_seen: EmulatorRequests
) -> None:
    client = _genai(kind, served.base_url)
    model, config = _genai_call(kind)
    try:
        if kind != "policy":
            await client.aio.models.generate_content(model=model, contents="hi")
        requests_seen.clear()
        with pytest.raises(errors.APIError) as caught:
            if kind == "policy":
                await client.aio.models.embed_content(model=model, contents="hi")
            else:
                await client.aio.models.generate_content(model=model, contents="hi", config=config)
    finally:
        await client.aio.aclose()
        client.close()
    _check(kind, caught.value.code, caught.value.details)
    assert caught.value.status == EXPECTED[kind].status_text
    assert requests_seen.lines == [], "a refused call reached the emulator"


@pytest.mark.parametrize("kind", KINDS)
def test_genai_sync_sees_every_refusal_as_an_api_error(
    kind: str, served: ServedEmulator, requests_seen: EmulatorRequests
) -> None:
    model, config = _genai_call(kind)
    with _genai(kind, served.base_url) as client:
        if kind != "policy":
            client.models.generate_content(model=model, contents="hi")
        requests_seen.clear()
        with pytest.raises(errors.APIError) as caught:
            if kind == "policy":
                client.models.embed_content(model=model, contents="hi")
            else:
                client.models.generate_content(model=model, contents="hi", config=config)
    _check(kind, caught.value.code, caught.value.details)
    assert requests_seen.lines == []


@pytest.mark.parametrize("kind", KINDS)
def test_local_errors_raise_keeps_the_typed_errors(
    kind: str, served: ServedEmulator, records: Records
) -> None:
    model, config = _genai_call(kind)
    with _genai(kind, served.base_url, records, local_errors="raise") as client:
        if kind != "policy":
            client.models.generate_content(model=model, contents="hi")
        with pytest.raises(EXPECTED[kind].typed) as caught:
            if kind == "policy":
                client.models.embed_content(model=model, contents="hi")
            else:
                client.models.generate_content(model=model, contents="hi", config=config)
    if isinstance(caught.value, PolicyDeniedError):
        assert (caught.value.reason, caught.value.status) == ("no_grant", 403)
    else:
        assert getattr(caught.value, "dimension", None) == EXPECTED[kind].dimension
    if _agent(kind) is not None:  # the audit record: refused, no response
        last = records.flushed()[-1]
        assert (last.decision, last.status) == ("denied", None)
        assert last.error is None or last.error.startswith(EXPECTED[kind].typed.__name__)


# ---- OpenAI ---------------------------------------------------------------------------------


def _openai_transport(kind: str, sync: bool, **options: Any) -> Any:
    lim = _limiter(kind)
    agent = _agent(kind)
    if agent is not None:
        handle = lim.agent(agent)
        return handle.sync_transport(**options) if sync else handle.transport(**options)
    if sync:
        return SyncQuotaTransport(SyncLimiter.sharing(lim.limiter), **options)
    return QuotaTransport(lim.limiter, **options)


def _openai_call(kind: str, create: Callable[..., Any], embed: Callable[..., Any]) -> Any:
    if kind == "policy":
        return embed(model=EMBED, input=["hi"])
    extra = {"extra_headers": HEADERS} if kind == "deadline" else {}
    return create(model=FLASH, messages=[{"role": "user", "content": "hi"}], **extra)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_openai_async_sees_every_refusal_as_an_api_error(
    kind: str, served: ServedEmulator, requests_seen: EmulatorRequests
) -> None:
    http = httpx.AsyncClient(transport=_openai_transport(kind, sync=False))
    # the SDK's own retries stay on: a local refusal tells it not to retry
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=served.base_url + "/v1beta/openai/", http_client=http
    )
    async with client:
        chat, emb = client.chat.completions.create, client.embeddings.create
        if kind != "policy":
            await _openai_call(kind, chat, emb)
        requests_seen.clear()
        with pytest.raises(openai.APIStatusError) as caught:
            await _openai_call(kind, chat, emb)
    _check(kind, caught.value.status_code, caught.value.response.json())
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert requests_seen.lines == []


@pytest.mark.parametrize("kind", KINDS)
def test_openai_sync_sees_every_refusal_as_an_api_error(
    kind: str, served: ServedEmulator, requests_seen: EmulatorRequests
) -> None:
    http = httpx.Client(transport=_openai_transport(kind, sync=True))
    client = openai.OpenAI(
        api_key=KEY, base_url=served.base_url + "/v1beta/openai/", http_client=http
    )
    with client:
        chat, emb = client.chat.completions.create, client.embeddings.create
        if kind != "policy":
            _openai_call(kind, chat, emb)
        requests_seen.clear()
        with pytest.raises(openai.APIStatusError) as caught:
            _openai_call(kind, chat, emb)
    _check(kind, caught.value.status_code, caught.value.response.json())
    assert requests_seen.lines == []


# ---- a malformed request; the SDK's own options ---------------------------------------------


@pytest.mark.anyio
async def test_a_malformed_request_is_a_400_with_the_same_detail(served: ServedEmulator) -> None:
    lim = _limiter("policy")
    transport = lim.agent("writer").transport()
    async with httpx.AsyncClient(base_url=served.base_url, transport=transport) as http:
        r = await http.post(
            f"/v1beta/models/{FLASH}/x:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": KEY},
        )
    info = _info(r.json())
    assert r.status_code == 400 and info["status"] == "INVALID_ARGUMENT"
    assert (info["code"], info["reason"]) == ("QUOTAFLOW_INVALID_REQUEST", "malformed")
    assert info["dimension"] == info["retry_after"] == info["resets_at"] == ""


@pytest.mark.anyio
async def test_a_quota_refusal_under_an_agent_gives_its_budget_back(
    served: ServedEmulator, records: Records
) -> None:
    # budget 2 a day; the model's day quota 1: the second call is refused by the quota, not
    # by the budget, and leaves the budget's request for a call on another model
    policy = {"agents": {"a": {"grants": {"content": "write"}, "budget": {"requests_per_day": 2}}}}
    quotas = {FLASH: [RPM(600, PERIOD), RPD(1)], PRO: [RPM(600, PERIOD), RPD(100)]}
    lim = Agents(Limiter(None, quotas=quotas), Policy.from_dict(policy))
    handle = lim.agent("a", audit=records.log)
    client = genai.Client(api_key=KEY, http_options=handle.http_options(base_url=served.base_url))
    try:
        await client.aio.models.generate_content(model=FLASH, contents="hi")
        with pytest.raises(errors.ClientError) as quota:
            await client.aio.models.generate_content(model=FLASH, contents="hi")
        await client.aio.models.generate_content(model=PRO, contents="hi")  # the budget's 2nd
        with pytest.raises(errors.ClientError) as budget:
            await client.aio.models.generate_content(model=PRO, contents="hi")
    finally:
        await client.aio.aclose()
        client.close()
    assert _info(quota.value.details)["code"] == "QUOTAFLOW_QUOTA_EXHAUSTED"
    assert _info(budget.value.details)["code"] == "QUOTAFLOW_BUDGET_EXHAUSTED"
    got = records.flushed()
    assert [(r.model, r.status, r.outcome, r.reason) for r in got] == [
        (FLASH, 200, "ok", "granted"),
        (FLASH, 429, "denied", "granted"),
        (PRO, 200, "ok", "granted"),
        (PRO, 429, "denied", "budget"),
    ]
    assert got[1].error is not None and got[1].error.startswith("QuotaExhaustedError")
