"""An agent named only in the ``x-quotaflow-agent`` header still gets its share applied."""

from __future__ import annotations

import httpx
import pytest

from quotaflow import RPM, Limiter, ManualClock, Share
from quotaflow.transports import QuotaTransport

pytestmark = pytest.mark.anyio


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"candidates": [], "usageMetadata": {"promptTokenCount": 3}})


async def test_header_agent_is_charged_to_its_share() -> None:
    limiter = Limiter(
        None,
        quotas={"gemini-2.5-flash": [RPM(10, 60.0)]},
        clock=ManualClock(0.0),
        shares={"bot": Share(ceiling=0.2)},
    )
    transport = QuotaTransport(limiter, transport=httpx.MockTransport(_answer))
    async with httpx.AsyncClient(transport=transport, base_url="http://gemini") as client:
        for _ in range(2):
            r = await client.post(
                "/v1beta/models/gemini-2.5-flash:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                headers={"x-goog-api-key": "k", "x-quotaflow-agent": "bot"},
            )
            assert r.status_code == 200
    status = await limiter.status("gemini-2.5-flash")
    assert status["rpm@bot"].used == 2
    assert status["rpm"].used == 2
