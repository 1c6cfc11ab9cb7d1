"""A hostile agent against its own policy, budget and the key's redaction: each way past them
that was found, and the tricks that held, through the agent transports (plain httpx and
google-genai) against the emulator over loopback."""

from __future__ import annotations

import httpx
import pytest
from agents_helpers import FLASH, KEY, EmulatorRequests, Records, emulator_config, limiter

from quotaflow import RPD, RPM, TPM, Limiter
from quotaflow.agents import Policy
from quotaflow.emulator import FaultConfig, ServedEmulator, serve
from quotaflow.errors import ConfigError

pytestmark = pytest.mark.anyio

GEN = {"contents": [{"parts": [{"text": "hi"}]}]}
UNKNOWN = [RPM(600, 1.0), TPM(1_000_000, 1.0), RPD(100_000)]


def _client(
    lim: Limiter, agent: str, served: ServedEmulator, records: Records
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=served.base_url,
        headers={"x-goog-api-key": KEY},
        transport=lim.agent(agent, audit=records.log).transport(),
    )


def _generate(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


def _generates(seen: EmulatorRequests) -> int:
    return sum(1 for line in seen.lines if ":generateContent" in line and "-> 200" in line)


# ---- 1. a model name cannot reach a budget's scope -----------------------------------------


async def test_a_model_named_like_a_budget_neither_raises_it_nor_reaches_the_server(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {
        "agents": {
            name: {"grants": {"content": "write"}, "budget": {"requests_per_day": 2}}
            for name in ("selfish", "researcher")
        }
    }
    lim = limiter(policy, unknown_model=UNKNOWN)
    async with _client(lim, "selfish", served, records) as http:
        for model in ("budget@selfish", "budget@researcher", "budget%40selfish"):
            r = await http.post(_generate(model), json=GEN)
            assert r.status_code == 400, (model, r.status_code)
        # a model named like the agent reaches the server (404) and spends one request
        assert (await http.post(_generate("selfish"), json=GEN)).status_code == 404
        codes = [(await http.post(_generate(FLASH), json=GEN)).status_code for _ in range(3)]
    assert codes == [200, 429, 429], "the budget of 2 a day no longer holds"
    assert _generates(requests_seen) == 1
    assert not any("budget" in line for line in requests_seen.lines)
    with pytest.raises(ConfigError, match="not a Gemini model name"):
        await lim.acquire("budget@researcher")
    status = await lim._agents.budget.status("researcher")
    assert status["rpd"].limit == 2


# ---- 6. a sent call keeps its budget request, whatever happened after --------------------


async def test_client_timeouts_do_not_give_the_budget_back(records: Records) -> None:
    policy = {"agents": {"a": {"grants": {"content": "write"}, "budget": {"requests_per_day": 3}}}}
    lim = limiter(policy)
    slow = emulator_config(faults=FaultConfig(latency_seconds=0.5))
    with EmulatorRequests().attached() as seen:
        async with serve(slow) as served:
            transport = lim.agent("a", audit=records.log).transport(max_5xx_retries=0)
            async with httpx.AsyncClient(
                base_url=served.base_url,
                headers={"x-goog-api-key": KEY},
                transport=transport,
                timeout=0.1,
            ) as http:
                for _ in range(3):
                    with pytest.raises(httpx.ReadTimeout):
                        await http.post(_generate(FLASH), json=GEN)
                r = await http.post(_generate(FLASH), json=GEN)
            assert r.status_code == 429, "a fourth call went out on a budget of 3"
            status = await lim._agents.budget.status("a")
    assert status["rpd"].used == 3
    last = records.flushed()[-1]
    assert (last.decision, last.reason) == ("denied", "budget")
    del seen


# ---- 7. [default] is a full policy, each agent with its own budget ---------------------------


async def test_default_budget_holds_for_each_agent_it_covers(
    served: ServedEmulator, records: Records, requests_seen: EmulatorRequests
) -> None:
    policy = {"default": {"grants": {"content": "write"}, "budget": {"requests_per_day": 2}}}
    lim = limiter(policy)
    for agent in ("anon-1", "anon-2"):
        async with _client(lim, agent, served, records) as http:
            codes = [(await http.post(_generate(FLASH), json=GEN)).status_code for _ in range(3)]
        assert codes == [200, 200, 429], agent
    assert _generates(requests_seen) == 4


def test_default_share_and_budget_are_in_the_policy() -> None:
    policy = Policy.from_dict(
        {
            "default": {
                "grants": {"content": "write"},
                "share": {"ceiling": 0.5},
                "budget": {"requests_per_day": 2},
            }
        }
    )
    spec = policy.for_agent("anyone")
    assert spec is not None and spec.budget is not None and spec.share is not None
