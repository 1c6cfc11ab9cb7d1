"""``acquire`` and ``settle`` as users call them, on a warm scope (the fast lane open) and the
full way alike: bad input gets the library's typed errors naming it, never a ``TypeError`` or a
silent conversion (``True`` as 1); the awaitable and ``async with`` contracts; copies refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from quotaflow import TPM, ConfigError, Limiter, SyncLimiter
from quotaflow.limits import RPM


@pytest.mark.anyio
@pytest.mark.parametrize("model", [123, None, ["m"], b"m", ""], ids=repr)
async def test_a_model_that_is_not_a_name_raises_a_config_error(model: object) -> None:
    lim = Limiter(None, quotas={"m": [RPM(100)]})
    await (await lim.acquire("m")).settle()  # warm: the fast lane is open
    with pytest.raises(ConfigError, match="model="):
        await lim.acquire(model)  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="model="):
        await lim.acquire_nowait(model)  # type: ignore[arg-type]
    sync = SyncLimiter(None, quotas={"m": [RPM(100)]})
    with pytest.raises(ConfigError, match="model="), sync.acquire(model):  # type: ignore[call-overload]
        pass


BAD_ACQUIRE: list[dict[str, Any]] = [
    {"tokens": "10"},
    {"tokens": 1.5},
    {"tokens": -1},
    {"tokens": True},
    {"priority": True},
    {"priority": 1.5},
    {"priority": "urgent-ish"},
    {"timeout": "x"},
    {"timeout": -1},
    {"timeout": float("nan")},
    {"deadline": "x"},
    {"deadline": float("nan")},
    {"cost": {"requests": 1.0}},
    {"cost": {"requests": -1}},
]


@pytest.mark.anyio
@pytest.mark.parametrize("kwargs", BAD_ACQUIRE, ids=repr)
async def test_bad_acquire_arguments_raise_config_errors(kwargs: dict[str, Any]) -> None:
    lim = Limiter(None, quotas={"m": [RPM(100), TPM(1000)]})
    await (await lim.acquire("m", tokens=1)).settle()  # the scope is warm: the fast lane is open
    with pytest.raises(ConfigError):
        await lim.acquire("m", **kwargs)
    if "timeout" not in kwargs and "deadline" not in kwargs:  # acquire_nowait never waits
        with pytest.raises(ConfigError):
            await lim.acquire_nowait("m", **kwargs)


@pytest.mark.parametrize("kwargs", BAD_ACQUIRE, ids=repr)
def test_bad_acquire_arguments_raise_config_errors_sync(kwargs: dict[str, Any]) -> None:
    lim = SyncLimiter(None, quotas={"m": [RPM(100), TPM(1000)]})
    with lim.acquire("m", tokens=1):
        pass
    with pytest.raises(ConfigError), lim.acquire("m", **kwargs):
        pass


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["5", 1.5, float("nan"), -1, True])
async def test_bad_settle_amounts_raise_and_change_nothing(value: object) -> None:
    """A ConfigError naming the amount: ``"5"`` is not converted, ``True`` is not counted as 1."""
    lim = Limiter(None, quotas={"m": [RPM(100), TPM(1000)]})
    permit = await lim.acquire("m", tokens=5)
    with pytest.raises(ConfigError):
        await permit.settle(input_tokens=value)  # type: ignore[call-overload]
    await permit.settle(input_tokens=4)  # the bad settle changed nothing: this one counts
    status = await lim.status("m")
    assert status["tpm"].used == 4


@pytest.mark.anyio
async def test_a_wait_ended_by_its_own_deadline_scope_does_not_leak_a_cancellation() -> None:
    """A wait (here: behind a pause) ends by the waiter's own anyio deadline scope; that
    cancellation stays inside it and never comes out of ``acquire``."""
    lim = Limiter(None, quotas={"m": [RPM(1000)]})
    await (await lim.acquire("m")).settle()
    for _ in range(20):
        await lim.pause("m", "rpm", lim.clock.now() + 0.005)
        async with lim.acquire("m") as permit:
            assert permit.waited > 0
        permit2 = await lim.acquire("m")
        await permit2.settle()


@pytest.mark.anyio
async def test_a_lane_settle_is_a_coroutine_to_task_apis(anyio_backend: str) -> None:
    """A lane grant's settle is a coroutine: task APIs that demand one take it, and each
    settle counts once."""
    import collections.abc

    import anyio

    lim = Limiter(None, quotas={"m": [RPM(100), TPM(1000)]})
    await (await lim.acquire("m", tokens=1)).settle()
    first, second, third = [await lim.acquire("m", tokens=5) for _ in range(3)]
    done = first.settle(input_tokens=4)
    assert isinstance(done, collections.abc.Coroutine)
    assert await done is None
    assert first.phase == "settled"
    async with anyio.create_task_group() as tg:
        tg.start_soon(second.settle)
    assert second.phase == "settled"
    if anyio_backend == "asyncio":
        import asyncio

        await asyncio.create_task(third.settle())
    else:
        await third.settle()
    assert (await lim.status("m"))["tpm"].in_flight == 0
    assert (await lim.status("m"))["tpm"].used == 1 + 4 + 5 + 5


@pytest.mark.anyio
async def test_limiters_and_permits_refuse_copies_with_a_clear_error() -> None:
    import copy
    import pickle

    lim = Limiter(None, quotas={"m": [RPM(100)]})
    permit = await lim.acquire("m")
    sync = SyncLimiter(None, quotas={"m": [RPM(100)]})
    for obj in (lim, permit, sync, sync.acquire_nowait("m")):
        for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="cannot be copied"):
                attempt(obj)
    await permit.release()
    assert (await lim.status("m"))["rpm"].in_flight == 0


@pytest.mark.anyio
async def test_one_acquire_in_two_blocks_at_once_is_refused() -> None:
    lim = Limiter(None, quotas={"m": [RPM(100)]})
    once = lim.acquire("m")
    async with once as first:
        with pytest.raises(RuntimeError, match="already in use"):
            async with once:
                pass
    async with once as again:  # after the block: usable again, a new permit
        assert again is not first
    sync = SyncLimiter(None, quotas={"m": [RPM(100)]})
    twice = sync.acquire("m")
    with twice, pytest.raises(RuntimeError, match="already in use"), twice:
        pass
    assert (await lim.status("m"))["rpm"].in_flight == 0
    assert sync.status("m")["rpm"].in_flight == 0


@pytest.mark.anyio
async def test_a_settle_with_a_metric_no_limit_meters_counts_like_the_full_way() -> None:
    """A transport settles with ``usd_micros`` beside the tokens; where no limit of the model
    meters it, the lane grant settles as it would with tokens only, and ``actual`` shows both.
    A bad amount raises and changes nothing; a second settle raises."""
    from quotaflow import PermitError

    lim = Limiter(None, quotas={"m": [RPM(100), TPM(1000)]})
    await (await lim.acquire("m", tokens=1)).settle()  # warm: the fast lane is open
    permit = await lim.acquire("m", tokens=50)
    with pytest.raises(ConfigError, match="usd_micros"):
        await permit.settle(input_tokens=40, usd_micros=-1)
    assert permit.phase == "granted"
    await permit.settle(input_tokens=40, usd_micros=7)
    assert permit.actual == {"usd_micros": 7, "input_tokens": 40}
    with pytest.raises(PermitError):
        await permit.settle(input_tokens=40, usd_micros=7)
    status = await lim.status("m")
    assert (status["tpm"].used, status["tpm"].in_flight) == (1 + 40, 0)
    assert status["rpm"].used == 2
    sync = SyncLimiter(None, quotas={"m": [RPM(100), TPM(1000)]})
    with sync.acquire("m", tokens=1):
        pass
    p = sync.acquire_nowait("m", tokens=50)
    p.settle(usd_micros=3)  # tokens as estimated
    assert p.actual == {"usd_micros": 3}
    assert sync.status("m")["tpm"].used == 1 + 50
