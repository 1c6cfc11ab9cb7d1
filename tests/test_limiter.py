"""The async limiter end to end on virtual time: permits, settles, errors, status, pause."""

from __future__ import annotations

import math

import anyio
import pytest

from quotaflow import (
    RPD,
    RPM,
    TPM,
    CannotFitError,
    ConfigError,
    Limit,
    Limiter,
    ManualClock,
    PermitError,
    QuotaExhaustedError,
    QuotaTimeoutError,
    UnknownModelError,
    WouldBlockError,
    fixed_windows,
)

pytestmark = pytest.mark.anyio

P = 10.0


def make(clock: ManualClock, **kw: object) -> Limiter:
    quotas = kw.pop("quotas", {"m": [RPM(3, P), TPM(100, P)]})
    return Limiter(None, quotas=quotas, clock=clock, **kw)  # type: ignore[arg-type]


async def test_acquire_takes_every_dimension_at_once_and_settle_refunds() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    async with lim.acquire("m", tokens=60) as permit:
        st = await lim.status("m")
        assert (st["rpm"].used, st["tpm"].used) == (1, 60)
        permit.mark_sent()
        await permit.settle(input_tokens=25)
    st = await lim.status("m")
    assert (st["rpm"].used, st["tpm"].used) == (1, 25)
    assert st["tpm"].in_flight == 0
    clock.advance(P + 1)
    st = await lim.status("m")
    assert (st["rpm"].used, st["tpm"].used) == (0, 0)


async def test_settle_more_than_estimated_charges_the_difference() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    permit = await lim.acquire("m", tokens=10)
    await permit.settle(input_tokens=90)
    assert (await lim.status("m"))["tpm"].used == 90
    with pytest.raises(PermitError, match="once"):
        await permit.settle(input_tokens=1)


async def test_all_or_nothing_when_one_dimension_is_short() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    await (await lim.acquire("m", tokens=90)).settle()
    with pytest.raises(WouldBlockError) as info:
        await lim.acquire_nowait("m", tokens=20)
    assert info.value.dimension == "tpm"
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= P + 1
    st = await lim.status("m")
    assert (st["rpm"].used, st["tpm"].used) == (1, 90), "the refused call took nothing"


async def test_leaving_the_block_before_sending_returns_everything() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    with pytest.raises(RuntimeError):
        async with lim.acquire("m", tokens=50):
            raise RuntimeError("the SDK refused to build the request")
    st = await lim.status("m")
    assert (st["rpm"].used, st["tpm"].used) == (0, 0)


async def test_a_sent_call_keeps_its_count_even_if_it_failed() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    with pytest.raises(RuntimeError):
        async with lim.acquire("m", tokens=50) as permit:
            permit.mark_sent()
            raise RuntimeError("500 from the server")
    st = await lim.status("m")
    assert (st["rpm"].used, st["tpm"].used) == (1, 50)
    with pytest.raises(PermitError, match="settle"):
        fresh = await lim.acquire("m", tokens=1)
        fresh.mark_sent()
        await fresh.release()


async def test_request_larger_than_a_limit_fails_at_once() -> None:
    lim = make(ManualClock(0.0))
    with pytest.raises(CannotFitError) as info:
        await lim.acquire("m", tokens=101)
    err = info.value
    assert (err.dimension, err.requested, err.limit) == ("tpm", 101, 100)
    assert "1 over" in str(err)
    assert isinstance(err, ValueError)


async def test_spent_day_quota_fails_fast_with_reset_time() -> None:
    clock = ManualClock(5.0)
    day = Limit("rpd", 2, 100.0, reset=fixed_windows(100.0))
    lim = make(clock, quotas={"m": [RPM(10, P), day]})
    for _ in range(2):
        await (await lim.acquire("m")).settle()
    with pytest.raises(QuotaExhaustedError) as info:
        await lim.acquire("m", timeout=1000)
    assert info.value.dimension == "rpd"
    assert info.value.resets_at == 100.0
    clock.set(100.0)
    await (await lim.acquire("m")).settle()


async def test_rpd_preset_fails_fast_until_pacific_midnight() -> None:
    clock = ManualClock(1_772_000_000.0)
    lim = make(clock, quotas={"m": [RPD(1)]})
    await (await lim.acquire("m")).settle()
    with pytest.raises(QuotaExhaustedError) as info:
        await lim.acquire("m")
    assert info.value.resets_at is not None
    from datetime import datetime
    from zoneinfo import ZoneInfo

    local = datetime.fromtimestamp(info.value.resets_at, ZoneInfo("America/Los_Angeles"))
    assert (local.hour, local.minute, local.second) == (0, 0, 0)


async def test_timeout_raises_at_once_when_the_computed_wait_is_longer() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    await (await lim.acquire("m", tokens=100)).settle()
    with pytest.raises(QuotaTimeoutError) as info:
        await lim.acquire("m", tokens=10, timeout=2.0)
    assert info.value.retry_after is not None and info.value.retry_after > 2.0
    assert isinstance(info.value, TimeoutError)
    assert clock.now() == 0.0, "no time passed: it did not sleep"


async def test_waiter_times_out_at_its_deadline_and_leaves_the_line() -> None:
    clock = ManualClock(0.0)
    lim = make(clock, quotas={"m": [Limit("c", 1, P, reset=__import__("quotaflow").Concurrent())]})
    holder = await lim.acquire("m")
    holder.mark_sent()
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await lim.acquire("m", timeout=3.0)
        except QuotaTimeoutError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert await lim.waiting("m") == 1
        clock.advance(3.0)
    assert len(errors) == 1
    assert await lim.waiting("m") == 0
    await holder.settle()


async def test_waiters_wake_when_capacity_returns() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    for _ in range(3):
        await (await lim.acquire("m")).settle()
    got: list[float] = []

    async def waiter() -> None:
        p = await lim.acquire("m")
        got.append(clock.now())
        await p.settle()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        clock.advance(5.0)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        clock.advance(P)
    assert len(got) == 1 and got[0] >= P


async def test_pause_holds_a_dimension_for_every_waiter() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    await lim.pause("m", "rpm", 4.0)
    with pytest.raises(WouldBlockError) as info:
        await lim.acquire_nowait("m")
    assert info.value.retry_after == pytest.approx(4.0)
    st = await lim.status("m")
    assert st["rpm"].paused_until == 4.0
    clock.set(4.0)
    await (await lim.acquire_nowait("m")).settle()
    with pytest.raises(ConfigError, match="no dimension"):
        await lim.pause("m", "ipm", 5.0)


async def test_exhaust_marks_the_day_spent() -> None:
    clock = ManualClock(5.0)
    day = Limit("rpd", 50, 100.0, reset=fixed_windows(100.0))
    lim = make(clock, quotas={"m": [day]})
    assert await lim.exhaust("m", "rpd") == 100.0
    with pytest.raises(QuotaExhaustedError):
        await lim.acquire("m")


async def test_set_limit_lowers_a_limit_in_place() -> None:
    clock = ManualClock(0.0)
    lim = make(clock)
    await (await lim.acquire("m")).settle()
    assert await lim.set_limit("m", "rpm", 1) == 3
    with pytest.raises(WouldBlockError):
        await lim.acquire_nowait("m")
    assert (await lim.status("m"))["rpm"].limit == 1


async def test_headroom_keeps_a_fraction_free() -> None:
    lim = make(ManualClock(0.0), headroom=0.1)
    assert {x.name: x.amount for x in lim.quota("m")} == {"rpm": 2, "tpm": 90}
    with pytest.raises(CannotFitError):
        await lim.acquire("m", tokens=95)


async def test_tier_tables_and_overrides_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTAFLOW_LIMITS", "gemini-2.5-pro:rpm=7")
    lim = Limiter("tier1", overrides={"gemini-2.5-flash": {"rpm": 5}})
    assert {x.name: x.amount for x in lim.quota("models/gemini-2.5-flash")}["rpm"] == 5
    assert {x.name: x.amount for x in lim.quota("gemini-2.5-pro")}["rpm"] == 7
    with pytest.raises(UnknownModelError) as info:
        lim.quota("gemini-2.5-flsh")
    assert "gemini-2.5-flash" in info.value.suggestions
    assert isinstance(info.value, LookupError)
    free = Limiter("free", unknown_model=[RPM(1)])
    assert free.quota("my-custom-model")[0].amount >= 1


@pytest.mark.parametrize(
    "kwargs, field",
    [({"tokens": -1}, "tokens"), ({"tokens": 1.5}, "tokens"), ({"priority": "urgent"}, "priority")],
)
async def test_bad_arguments_name_the_field(kwargs: dict[str, object], field: str) -> None:
    lim = make(ManualClock(0.0))
    with pytest.raises(ConfigError, match=field):
        await lim.acquire("m", **kwargs)  # type: ignore[arg-type]


async def test_bad_construction_names_the_field() -> None:
    with pytest.raises(ConfigError, match="headroom"):
        Limiter(None, quotas={"m": [RPM(1)]}, headroom=1.5)
    with pytest.raises(ConfigError, match="unique"):
        Limiter(None, quotas={"m": [RPM(1), RPM(2)]})
    with pytest.raises(ConfigError, match="backend"):
        Limiter(None, quotas={"m": [RPM(1)]}, backend="memcached://x")


async def test_permit_repr_and_status_do_not_leak_secrets() -> None:
    lim = make(ManualClock(0.0))
    p = await lim.acquire("m", tokens=5)
    text = repr(p) + repr(lim)
    assert "m" in text and "phase=granted" in text
    await p.release()
    assert math.isclose((await lim.status("m"))["tpm"].used, 0)
