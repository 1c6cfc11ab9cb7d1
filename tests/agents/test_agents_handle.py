"""Agent handles: bound and shared (``quotaflow.agent()``, ``x-quotaflow-agent``), priority,
the sync and httpx transports, the OpenAI surface, and ``Agents(limiter, policy)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from agents_helpers import EMBED, FLASH, KEY, EmulatorRequests, Records, limiter
from google import genai
from google.genai import errors

import quotaflow
from quotaflow import ConfigError, Limiter
from quotaflow.agents import Agents, Policy
from quotaflow.emulator import ServedEmulator

POLICY = {
    "agents": {
        "researcher": {"priority": "low", "grants": {"content": "write"}},
        "indexer": {
            "priority": "high",
            "share": {"ceiling": 0.5},
            "grants": {"embeddings": "write"},
        },
    }
}


@pytest.mark.anyio
async def test_a_shared_client_takes_the_agent_per_task(
    served: ServedEmulator, requests_seen: EmulatorRequests, records: Records
) -> None:
    shared = limiter(POLICY).agent(audit=records.log)
    client = genai.Client(api_key=KEY, http_options=shared.http_options(base_url=served.base_url))
    try:
        aio = client.aio
        with quotaflow.agent("indexer"):
            await aio.models.embed_content(model=EMBED, contents="abc")
            with pytest.raises(errors.ClientError, match="agent 'indexer' may not call"):
                await aio.models.generate_content(model=FLASH, contents="x")
        with quotaflow.agent("researcher"), quotaflow.priority("critical"):
            await aio.models.generate_content(model=FLASH, contents="x")
        with pytest.raises(errors.ClientError, match="names no agent"):
            await aio.models.generate_content(model=FLASH, contents="x")
        headers = {"x-quotaflow-agent": "indexer"}
        await aio.models.embed_content(
            model=EMBED, contents="abc", config={"http_options": {"headers": headers}}
        )
    finally:
        await client.aio.aclose()
        client.close()
    got = records.flushed()
    assert [(r.agent, r.decision) for r in got] == [
        ("indexer", "allowed"),
        ("indexer", "denied"),
        ("researcher", "allowed"),
        (None, "denied"),
        ("indexer", "allowed"),
    ]
    assert got[2].priority == 0, "an agent cannot raise its priority above the policy's"
    assert got[0].priority == 2
    assert got[3].reason == "no_agent"


def test_a_bound_handle_cannot_be_used_as_another_agent(
    served: ServedEmulator, requests_seen: EmulatorRequests, records: Records
) -> None:
    handle = limiter(POLICY).agent("researcher", audit=records.log)
    with httpx.Client(
        base_url=served.base_url,
        transport=handle.sync_transport(),
        headers={"x-goog-api-key": KEY, "x-quotaflow-agent": "indexer"},
    ) as http:
        r = http.post(f"/v1beta/models/{EMBED}:embedContent", json={"content": {"parts": []}})
        assert r.status_code == 403
        body = r.json()["error"]
        assert body["status"] == "PERMISSION_DENIED"
        meta = body["details"][0]["metadata"]
        assert meta == {
            "agent": "researcher",
            "method": "embedContent",
            "area": "embeddings",
            "needed": "write",
            "grant": "none",
            "reason": "no_grant",
            "dimension": "",
            "retry_after": "",
            "resets_at": "",
        }
        assert body["details"][0]["reason"] == "QUOTAFLOW_POLICY_DENIED"
        with quotaflow.agent("indexer"):
            ok = http.post(
                f"/v1beta/models/{FLASH}:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
        assert ok.status_code == 200 and ok.extensions["quotaflow"].agent == "researcher"
    assert requests_seen.lines == [f"POST /v1beta/models/{FLASH}:generateContent -> 200"]
    assert [r.agent for r in records.flushed()] == ["researcher", "researcher"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the OpenAI SDK's SSE leaks on trio
@pytest.mark.anyio
async def test_openai_surface_gets_its_own_error_shape(
    served: ServedEmulator, requests_seen: EmulatorRequests, records: Records
) -> None:
    handle = limiter(POLICY).agent("researcher", audit=records.log)
    http: Any = httpx.AsyncClient(transport=handle.transport())  # legacy httpx flavor
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=served.base_url + "/v1beta/openai/", http_client=http, max_retries=0
    )
    async with client:
        c = await client.chat.completions.create(
            model=FLASH, messages=[{"role": "user", "content": "hi"}]
        )
        assert c.choices
        with pytest.raises(openai.PermissionDeniedError) as info:
            await client.embeddings.create(model=EMBED, input="abc")
    body = info.value.body
    assert isinstance(body, list), "the OpenAI surface sends a list of Google error objects"
    assert "agent 'researcher' may not call embeddings" in body[0]["error"]["message"]
    assert KEY not in str(info.value) + str(body)
    got = records.flushed()
    assert [(r.method, r.decision) for r in got] == [
        ("chat.completions", "allowed"),
        ("embeddings", "denied"),
    ]


def test_limiter_policy_from_a_file_sets_shares(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "[agents.indexer]\nshare = { ceiling = 0.5 }\n"
        '[agents.indexer.grants]\nembeddings = "write"\n'
    )
    base = Limiter(None, quotas={EMBED: [quotaflow.RPM(10)]})
    lim = Agents(base, path)
    assert lim.policy is not None and base._core.shares["indexer"].ceiling == 0.5
    handle = lim.agent("indexer")
    assert handle.check("POST", f"/v1beta/models/{EMBED}:embedContent").allowed
    assert not handle.check("DELETE", "/v1beta/files/x").allowed
    assert repr(handle) == "AgentHandle('indexer', policy=True)"
    with pytest.raises(ConfigError, match="policy"):
        Agents(Limiter(None, quotas={EMBED: [quotaflow.RPM(10)]}), None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="given twice"):
        Agents(base, Policy.from_dict({"agents": {"indexer": {"share": {"ceiling": 0.25}}}}))
    with pytest.raises(ConfigError, match="without '@'"):
        lim.agent("a@b")
