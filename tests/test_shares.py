"""Agent shares: ceilings cap an agent, floors keep a steady agent's part from a greedy one."""

from __future__ import annotations

import anyio
import pytest

from quotaflow import RPM, ConfigError, Limiter, ManualClock, Share, WouldBlockError, agent

pytestmark = pytest.mark.anyio

P = 1.0
LIMIT = 20


async def test_ceiling_caps_an_agent_but_not_the_others() -> None:
    clock = ManualClock(0.0)
    lim = Limiter(
        None, quotas={"m": [RPM(LIMIT, P)]}, clock=clock, shares={"bot": Share(ceiling=0.25)}
    )
    for _ in range(5):
        await (await lim.acquire_nowait("m", agent="bot")).settle()
    with pytest.raises(WouldBlockError) as info:
        await lim.acquire_nowait("m", agent="bot")
    assert info.value.dimension == "rpm@bot"
    with agent("other"):
        for _ in range(LIMIT - 5):
            await (await lim.acquire_nowait("m")).settle()
    st = await lim.status("m")
    assert st["rpm"].used == LIMIT and st["rpm@bot"].used == 5


@pytest.mark.parametrize("floor", [0.3, None])
async def test_floor_holds_under_a_greedy_agent_and_the_rest_is_lent(floor: float | None) -> None:
    """A greedy agent floods the line at a higher priority; a steady one asks for 40% of the
    limit each period and has a 30% floor. Work-conserving: the total stays at the limit.
    Without the floor, the greedy agent crowds the steady one out."""
    clock = ManualClock(0.0)
    lim = Limiter(
        None,
        quotas={"m": [RPM(LIMIT, P)]},
        clock=clock,
        shares={"steady": Share(floor=floor)} if floor else None,
    )
    periods = 20
    grants: dict[str, list[float]] = {"greedy": [], "steady": []}

    async def caller(name: str) -> None:
        while clock.now() < periods * P:
            try:
                permit = await lim.acquire("m", agent=name, priority="high")
            except anyio.get_cancelled_exc_class():
                raise
            grants[name].append(clock.now())
            await permit.settle()

    async def steady_driver(tg: anyio.abc.TaskGroup) -> None:
        # the steady agent wants 8 calls per period (40%), arriving spread over the period;
        # the clock moves in fine steps so that returning capacity is reused promptly
        for tick in range(periods * 64):
            if tick % 8 == 0:
                tg.start_soon(one_steady)
            await anyio.wait_all_tasks_blocked()
            clock.advance(P / 64)

    async def one_steady() -> None:
        permit = await lim.acquire("m", agent="steady")
        grants["steady"].append(clock.now())
        await permit.settle()

    async with anyio.create_task_group() as tg:
        for _ in range(60):
            tg.start_soon(caller, "greedy")
        await anyio.wait_all_tasks_blocked()
        await steady_driver(tg)
        tg.cancel_scope.cancel()
    window = (2 * P, periods * P)  # after the initial burst
    steady = sum(1 for t in grants["steady"] if window[0] <= t < window[1])
    greedy = sum(1 for t in grants["greedy"] if window[0] <= t < window[1])
    n_periods = window[1] - window[0]
    steady_share = steady / (LIMIT * n_periods)
    total_share = (steady + greedy) / (LIMIT * n_periods)
    assert total_share >= 0.97, f"total use {total_share:.2%}"
    assert greedy > steady, "the greedy agent takes the rest"
    if floor:
        assert steady_share >= floor - 0.02, f"steady got {steady_share:.2%} of the limit"
    else:
        assert steady_share < 0.2, f"without a floor steady still got {steady_share:.2%}"


def test_bad_shares_name_the_field() -> None:
    with pytest.raises(ConfigError, match="ceiling"):
        Share(ceiling=1.5)
    with pytest.raises(ConfigError, match="floor"):
        Share(floor=0.6, ceiling=0.5)
    with pytest.raises(ConfigError, match="shares"):
        Limiter(None, quotas={"m": [RPM(1)]}, shares={"a@b": Share(floor=0.1)})
