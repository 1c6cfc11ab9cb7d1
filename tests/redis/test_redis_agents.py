"""Agent shares and budgets hold across processes that share a Redis backend.

Two limiters with their own Redis clients and link threads (as two processes would have) draw
on one project's quota: one agent's ceiling and daily budget are counted across both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from quotaflow import RPM, Limiter, WouldBlockError
from quotaflow.agents import BudgetExhaustedError, Policy
from quotaflow.backends.redis import RedisBackend

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


def _policy(bot: dict[str, Any]) -> Policy:
    return Policy.from_dict({"agents": {"bot": {"grants": {"content": "write"}, **bot}}})


@pytest.fixture
async def pair(
    redis_url: str, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Limiter, Limiter]]:
    policy = _policy(request.param)
    limiters = [
        Limiter(
            None,
            quotas={"m": [RPM(4, 60.0)]},
            backend=RedisBackend(redis_url, namespace=namespace),
            policy=policy,
        )
        for _ in range(2)
    ]
    yield limiters[0], limiters[1]
    for lim in limiters:
        await lim.backend.aclose()  # type: ignore[union-attr]


@pytest.mark.parametrize("pair", [{"share": {"ceiling": 0.5}}], indirect=True)
async def test_ceiling_is_fleet_wide(pair: tuple[Limiter, Limiter]) -> None:
    a, b = pair
    await (await a.acquire_nowait("m", agent="bot")).settle()
    await (await b.acquire_nowait("m", agent="bot")).settle()
    with pytest.raises(WouldBlockError) as info:
        await a.acquire_nowait("m", agent="bot")
    assert info.value.dimension == "rpm@bot"
    await (await b.acquire_nowait("m", agent="other")).settle()  # others are not capped


@pytest.mark.parametrize("pair", [{"budget": {"requests_per_day": 3}}], indirect=True)
async def test_budget_is_fleet_wide(pair: tuple[Limiter, Limiter]) -> None:
    a, b = pair
    for lim in (a, b, a):
        await (await lim.agent("bot").acquire("m")).settle()
    with pytest.raises(BudgetExhaustedError) as info:
        await b.agent("bot").acquire("m")
    assert info.value.agent == "bot"
    assert info.value.resets_at is not None
