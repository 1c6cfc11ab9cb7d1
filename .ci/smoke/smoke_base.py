"""No extra: the in-memory limiter, async and sync."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import anyio
from _common import SmokeError, check, installed, main

import quotaflow

MODEL = "gemini-2.5-flash"


def run() -> str:
    installed()
    limiter = quotaflow.Limiter(tier="tier1")

    async def use() -> int:
        async with limiter.acquire(MODEL, tokens=100) as permit:
            permit.mark_sent()
            await permit.settle(input_tokens=80)
        status = await limiter.status(MODEL)
        return status["rpm"].used

    used = anyio.run(use)
    check(used == 1, f"async: rpm used {used}, expected 1")
    sync = quotaflow.SyncLimiter(tier="tier1")
    with sync.acquire(MODEL, tokens=100) as permit:
        permit.mark_sent()
        permit.settle(input_tokens=80)
    used = sync.status(MODEL)["rpm"].used
    check(used == 1, f"sync: rpm used {used}, expected 1")
    missing_extra(
        lambda: quotaflow.Limiter(tier="tier1", backend="redis://127.0.0.1:1/0"), "redis", "redis"
    )
    missing_extra(lambda: importlib.import_module("quotaflow.emulator"), "emulator", "starlette")
    return (
        f"quotaflow {quotaflow.__version__}: memory Limiter and SyncLimiter acquire + settle; "
        "the redis and emulator extras' absence is named"
    )


def missing_extra(use: Callable[[], object], extra: str, module: str) -> None:
    """``use()`` raises the ImportError that names ``extra`` and the missing ``module``."""
    try:
        use()
    except ImportError as exc:
        hint = f"the {extra!r} extra ({module} is missing)"
        check(hint in str(exc), f"without the {extra} extra: {exc!r} does not say {hint}")
    else:
        raise SmokeError(f"without the {extra} extra, no ImportError")


if __name__ == "__main__":
    main(run)
