"""Shares and budgets through google-genai on the emulator: a greedy agent cannot push a
steady one below its floor, the total stays at the limit; a spent budget fails fast."""

from __future__ import annotations

import math

import anyio
import pytest
from agents_helpers import FLASH, KEY, EmulatorRequests, Records, emulator_config, limiter
from google import genai
from google.genai import errors

from quotaflow import PRIORITIES
from quotaflow.agents import BudgetExhaustedError
from quotaflow.emulator import ServedEmulator, serve
from quotaflow.limits import pacific_days
from tests._timing import InFlight

pytestmark = pytest.mark.anyio

LIMIT = 20  # requests per 1 s period, here and at the emulator
PERIOD = 1.0  # the limit's period
HIGH, NORMAL = PRIORITIES["high"], PRIORITIES["normal"]
RUN = 4.0  # seconds of contention
WARMUP = 1.0  # the first period's burst is left out of the figures


async def test_floor_holds_against_a_greedy_agent_and_the_rest_is_lent(
    records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = {
        "agents": {
            "greedy": {"priority": "high", "grants": {"content": "write"}},
            "steady": {"share": {"floor": 0.3}, "grants": {"content": "write"}},
        }
    }
    lim = limiter(policy, rpm=LIMIT)
    in_flight = InFlight(monkeypatch, FLASH)  # each call's grant and response (limiter clock)
    async with serve(emulator_config(rpm=LIMIT)) as served:
        clients = {
            name: genai.Client(
                api_key=KEY,
                http_options=lim.agent(name, audit=records.log).http_options(
                    base_url=served.base_url, api_version="v1beta"
                ),
            )
            for name in ("greedy", "steady")
        }
        start = anyio.current_time()
        t0 = lim.limiter.clock.now()

        async def call(name: str) -> None:
            await clients[name].aio.models.generate_content(model=FLASH, contents="x")

        async def greedy() -> None:
            while anyio.current_time() - start < RUN:
                await call("greedy")

        async def steady(tg: anyio.abc.TaskGroup) -> None:
            # wants 40% of the limit: 8 calls a second, evenly spread
            for i in range(int(RUN * 8)):
                tg.start_soon(call, "steady")
                await anyio.sleep_until(start + (i + 1) / 8)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(3 * LIMIT):
                    tg.start_soon(greedy)
                tg.start_soon(steady, tg)
        finally:
            for c in clients.values():
                await c.aio.aclose()
                c.close()
        stats = served.emulator.stats()["models"][FLASH]
    # the grants in the window after the first period's burst, by agent (greedy is "high")
    span = RUN - WARMUP
    got = {
        n: in_flight.granted(t0 + WARMUP, t0 + RUN, prio)
        for n, prio in (("greedy", HIGH), ("steady", NORMAL))
    }
    steady_share = got["steady"] / (LIMIT * span)
    total_share = (got["steady"] + got["greedy"]) / (LIMIT * span)
    # a unit is granted again one period after its call's response began: the time in flight
    # (measured, the machine's latency) is capacity no limiter can grant; the rest is checked
    lag = {"steady": in_flight.share(PERIOD, NORMAL), "all": in_flight.share(PERIOD)}
    print(
        f"\nfloor 30%: steady {steady_share:.0%} of the limit, greedy "
        f"{got['greedy'] / (LIMIT * span):.0%}, total {total_share:.0%} (in flight: steady "
        f"{lag['steady']:.0%}, all {lag['all']:.0%} of a period); emulator: "
        f"{stats['admitted']} admitted, {stats['rejected']} rejected, "
        f"max {stats['max_requests_in_window']} in any 1 s window"
    )
    assert stats["rejected"] == 0 and stats["max_requests_in_window"] <= LIMIT
    held = steady_share * (1 + lag["steady"])
    assert held >= 0.3 - 0.05, f"steady got {steady_share:.0%} ({held:.0%} of the units)"
    assert got["greedy"] > got["steady"], "the greedy agent takes the rest"
    used = total_share * (1 + lag["all"])
    assert used >= 0.85, f"total use {total_share:.0%} ({used:.0%} of the units)"
    recs = records.flushed()
    assert {r.priority for r in recs if r.agent == "greedy"} == {HIGH}


async def test_spent_budget_fails_fast_with_a_429_naming_agent_budget_and_reset(
    served: ServedEmulator, requests_seen: EmulatorRequests, records: Records
) -> None:
    policy = {
        "agents": {
            "researcher": {"grants": {"content": "write"}, "budget": {"requests_per_day": 2}}
        }
    }
    lim = limiter(policy)
    handle = lim.agent("researcher", audit=records.log)
    client = genai.Client(api_key=KEY, http_options=handle.http_options(base_url=served.base_url))
    try:
        for _ in range(2):
            await client.aio.models.generate_content(model=FLASH, contents="hi")
        requests_seen.clear()
        with pytest.raises(errors.ClientError) as info:
            await client.aio.models.generate_content(model=FLASH, contents="hi")
    finally:
        await client.aio.aclose()
        client.close()
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    message = str(info.value.message)
    assert "agent 'researcher'" in message and "requests_per_day" in message
    assert "midnight Pacific time" in message
    assert requests_seen.lines == [], "a call over budget reached the emulator"
    assert served.emulator.stats()["models"][FLASH]["admitted"] == 2
    # the typed error, from acquire
    with pytest.raises(BudgetExhaustedError) as err:
        await handle.acquire(FLASH, tokens=1)
    reset = pacific_days().window_end(lim.clock.now())
    assert err.value.agent == "researcher" and err.value.budget == "requests_per_day"
    assert err.value.resets_at is not None and math.isclose(err.value.resets_at, reset)
    last = records.flushed()[-1]
    assert (last.decision, last.reason, last.status) == ("denied", "budget", 429)


async def test_token_budget_counts_the_settled_usage(records: Records) -> None:
    policy = {"agents": {"a": {"grants": {"content": "write"}, "budget": {"tokens_per_day": 10}}}}
    handle = limiter(policy).agent("a", audit=records.log)
    async with handle.acquire(FLASH, tokens=4) as permit:
        permit.mark_sent()
        await permit.settle(input_tokens=8)  # more than estimated: charged
    with pytest.raises(BudgetExhaustedError) as err:
        await handle.acquire(FLASH, tokens=3)
    assert err.value.budget == "tokens_per_day"
    permit2 = await handle.acquire(FLASH, tokens=2)
    await permit2.release()  # given back: the next one still fits
    async with handle.acquire(FLASH, tokens=2):
        pass
