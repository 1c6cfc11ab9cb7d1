"""Agent shares and budgets hold across processes that share a Redis backend.

Two limiters with their own Redis clients and link threads (as two processes would have) draw
on one project's quota: one agent's ceiling and daily budget are counted across both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from quotaflow import RPM, Limiter, WouldBlockError
from quotaflow.agents import Agents, BudgetExhaustedError, Policy
from quotaflow.backends.redis import RedisBackend

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


def _policy(bot: dict[str, Any]) -> Policy:
    return Policy.from_dict({"agents": {"bot": {"grants": {"content": "write"}, **bot}}})


@pytest.fixture
async def pair(
    redis_url: str, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Agents, Agents]]:
    policy = _policy(request.param)
    layers = [
        Agents(
            Limiter(
                None,
                quotas={"m": [RPM(4, 60.0)]},
                backend=RedisBackend(redis_url, namespace=namespace),
            ),
            policy,
        )
        for _ in range(2)
    ]
    yield layers[0], layers[1]
    for lim in layers:
        await lim.limiter.backend.aclose()  # type: ignore[union-attr]


@pytest.mark.parametrize("pair", [{"share": {"ceiling": 0.5}}], indirect=True)
async def test_ceiling_is_fleet_wide(pair: tuple[Agents, Agents]) -> None:
    a, b = pair
    await (await a.limiter.acquire_nowait("m", agent="bot")).settle()
    await (await b.limiter.acquire_nowait("m", agent="bot")).settle()
    with pytest.raises(WouldBlockError) as info:
        await a.limiter.acquire_nowait("m", agent="bot")
    assert info.value.dimension == "rpm@bot"
    await (await b.limiter.acquire_nowait("m", agent="other")).settle()  # others are not capped


@pytest.mark.parametrize("pair", [{"budget": {"requests_per_day": 3}}], indirect=True)
async def test_budget_is_fleet_wide(pair: tuple[Agents, Agents]) -> None:
    a, b = pair
    for lim in (a, b, a):
        await (await lim.agent("bot").acquire("m")).settle()
    with pytest.raises(BudgetExhaustedError) as info:
        await b.agent("bot").acquire("m")
    assert info.value.agent == "bot"
    assert info.value.resets_at is not None
