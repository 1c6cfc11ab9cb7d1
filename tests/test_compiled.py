"""The hot path is the same whether mypyc compiled it or not (see ``hatch_build.py``).

``.ci/compiled`` runs the whole suite against the compiled modules with
``QUOTAFLOW_EXPECT_COMPILED=1``; then the first test checks that they really are compiled. The
others hold in both builds: bad input to the fast path gets the library's typed errors, not a
``TypeError`` of compiled argument checks (the fast path takes ``object`` and checks itself).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

from quotaflow import TPM, ConfigError, Limiter, SyncLimiter
from quotaflow.limits import RPM

HOT = (
    "quotaflow._lane",
    "quotaflow._permit_state",
    "quotaflow.permit",
    "quotaflow._gate",
    "quotaflow._front",
)


def test_the_hot_path_is_compiled_where_expected() -> None:
    files = {name: importlib.import_module(name).__file__ or "" for name in HOT}
    compiled = {name for name, f in files.items() if not f.endswith(".py")}
    if os.environ.get("QUOTAFLOW_EXPECT_COMPILED") == "1":
        assert compiled == set(HOT), files
    else:
        assert compiled <= set(HOT)


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
    """The same ConfigError in both builds (the settle methods take ``object`` and check it:
    compiled, an ``int | None`` parameter would raise a TypeError of its own, or count ``True``
    as 1)."""
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
    cancellation must stay inside it. With ``limiter.py`` compiled by mypyc as well, it leaked
    out of ``acquire`` on asyncio (the reason that module stays interpreted)."""
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
    """A lane grant's settle is done when called and returns a shared done coroutine: task
    APIs that demand a coroutine take it, and awaiting it gives None."""
    import collections.abc

    import anyio

    lim = Limiter(None, quotas={"m": [RPM(100), TPM(1000)]})
    await (await lim.acquire("m", tokens=1)).settle()
    first, second, third = [await lim.acquire("m", tokens=5) for _ in range(3)]
    done = first.settle(input_tokens=4)
    assert isinstance(done, collections.abc.Coroutine)
    assert first.phase == "settled"  # done when called
    await done  # finishes at once (a second await of it too: it is shared)
    await done
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


def test_the_done_coroutine_throws_like_a_coroutine_that_never_started() -> None:
    from quotaflow.permit import DONE

    with pytest.raises(ValueError, match="msg"):
        DONE.throw(ValueError, "msg")
    with pytest.raises(KeyError):
        DONE.throw(KeyError)
    with pytest.raises(OSError, match="x"):
        DONE.throw(OSError("x"))
    with pytest.raises(StopIteration):
        DONE.send(None)
    DONE.close()


def test_the_compiled_modules_never_await() -> None:
    """No coroutine, ``await``, ``yield from``, ``async for`` or ``async with`` in the modules
    mypyc compiles: whatever can suspend runs in interpreted code (see ``quotaflow._await``).
    mypyc's ``await`` re-throws with the three-argument ``throw()``, which Python 3.12
    deprecates, and a cancellation caught by the waiter's own scope came out again on 3.11."""
    import ast
    import importlib.util
    from pathlib import Path

    suspending = (ast.AsyncFunctionDef, ast.Await, ast.YieldFrom, ast.AsyncFor, ast.AsyncWith)
    for name in HOT:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        source = Path(spec.origin).with_name(name.rsplit(".", 1)[1] + ".py")  # next to a .so
        tree = ast.parse(source.read_text(encoding="utf-8"))
        found = [
            f"{source.name}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, suspending)
        ]
        assert not found, found
