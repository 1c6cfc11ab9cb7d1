"""Overhead of quotaflow's acquire+settle, against aiolimiter and a bare asyncio token bucket.

Measured in one run, on the same machine and event loop:

1. Uncontended cost: quotaflow acquire+settle on three dimensions (RPM, TPM, RPD) vs aiolimiter's
   ``acquire`` vs a 15-line bare asyncio token bucket. Target: within 3x of the bare bucket.
2. Cost per grant as waiters grow from 10 to 10,000: N tasks wait on one scope; capacity is
   then released in steps, and we time the grants. Target: cost at 10,000 within 2x of at 10.

Run: ``python benchmarks/overhead.py`` (needs the ``bench`` extra). Prints ratios, and which
build of quotaflow it measured: an editable install is pure Python, while a wheel is compiled
with mypyc. ``python benchmarks/overhead.py --compiled`` builds the compiled wheel from this
checkout first (``python -m build``, about a minute) and measures that, as the README does.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Generator
from pathlib import Path

from aiolimiter import AsyncLimiter

import quotaflow._gate
from quotaflow import RPD, RPM, TPM, Limit, Limiter, ManualClock

N_UNCONTENDED = 20_000


class BareBucket:
    """A bare asyncio token bucket: the floor any limiter is compared to."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.last = capacity, time.monotonic()

    async def acquire(self, amount: float = 1.0) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= amount:
                self.tokens -= amount
                return
            await asyncio.sleep((amount - self.tokens) / self.rate)


class _EmptyPermit:
    __slots__ = ("tokens",)

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def settle(self, input_tokens: int | None = None) -> None:
        self.tokens = input_tokens or 0


class _EmptyAcquire:
    __slots__ = ("tokens",)

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def __await__(self) -> Generator[None, None, _EmptyPermit]:
        return _EmptyPermit(self.tokens)
        yield  # a generator: the awaitable protocol, as cheap as it gets


class EmptyLimiter:
    """quotaflow's API shape with nothing inside: ``await acquire(...)`` then ``await
    permit.settle(...)``. The floor of any pure-Python limiter offering that API."""

    def acquire(self, model: str, tokens: int = 0) -> _EmptyAcquire:
        return _EmptyAcquire(tokens)


async def bench_empty_shape() -> float:
    lim = EmptyLimiter()
    t0 = time.perf_counter()
    for _ in range(N_UNCONTENDED):
        permit = await lim.acquire("m", tokens=10)
        await permit.settle(input_tokens=9)
    return (time.perf_counter() - t0) / N_UNCONTENDED


async def bench_bare() -> float:
    bucket = BareBucket(1e12, 1e12)
    t0 = time.perf_counter()
    for _ in range(N_UNCONTENDED):
        await bucket.acquire()
    return (time.perf_counter() - t0) / N_UNCONTENDED


async def bench_aiolimiter() -> float:
    lim = AsyncLimiter(1e12, 60)
    t0 = time.perf_counter()
    for _ in range(N_UNCONTENDED):
        await lim.acquire()
    return (time.perf_counter() - t0) / N_UNCONTENDED


async def bench_quotaflow() -> float:
    big = 10**15
    lim = Limiter(None, quotas={"m": [RPM(big), TPM(big), RPD(big)]})
    for _ in range(100):  # warm up the scope
        await (await lim.acquire("m", tokens=10)).settle()
    t0 = time.perf_counter()
    for _ in range(N_UNCONTENDED):
        permit = await lim.acquire("m", tokens=10)
        await permit.settle(input_tokens=9)
    return (time.perf_counter() - t0) / N_UNCONTENDED


async def bench_waiters(n: int, grants: int = 2_000) -> float:
    """Seconds per grant with ``n`` waiters in line (virtual clock: no real sleeping)."""
    clock = ManualClock(0.0)
    period = 1.0
    lim = Limiter(None, quotas={"m": [Limit("rpm", grants, period)]}, clock=clock)
    for _ in range(grants):  # fill the window
        await (await lim.acquire("m")).settle()
    done = 0
    stop = asyncio.Event()

    async def waiter(i: int) -> None:
        nonlocal done
        permit = await lim.acquire("m", priority=i % 4)
        await permit.settle()
        done += 1
        if done == grants:
            stop.set()

    tasks = [asyncio.create_task(waiter(i)) for i in range(n + grants)]
    for _ in range(5):
        await asyncio.sleep(0)
    while await lim.waiting("m") < n + grants:  # noqa: ASYNC110 - a benchmark's setup
        await asyncio.sleep(0)
    t0 = time.perf_counter()
    clock.advance(period * 1.01)  # the whole window returns: `grants` waiters get through
    await stop.wait()
    elapsed = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return elapsed / grants


def best(fn: object, repeat: int = 5) -> float:
    return min(asyncio.run(fn()) for _ in range(repeat))  # type: ignore[operator]


def rerun_compiled() -> int:
    """Build the compiled wheel of this checkout, unpack it, and run this script against it
    from a temporary directory (so the checkout's pure-Python sources do not shadow it)."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="quotaflow-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "QUOTAFLOW_PURE_PYTHON"}
        print("building the compiled wheel (python -m build) ...", flush=True)
        built = subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", f"{tmp}/dist", str(repo)],
            env={**env, "QUOTAFLOW_REQUIRE_COMPILED": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode:
            print((built.stdout + built.stderr)[-3000:], file=sys.stderr)
            print("building the compiled wheel failed (see above)", file=sys.stderr)
            return built.returncode
        (wheel,) = Path(tmp, "dist").glob("quotaflow-*.whl")
        zipfile.ZipFile(wheel).extractall(f"{tmp}/site")
        path = os.pathsep.join([f"{tmp}/site", env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        script = Path(__file__).resolve()
        return subprocess.run(
            [sys.executable, str(script)], cwd=tmp, env={**env, "PYTHONPATH": path}, check=False
        ).returncode


def main() -> None:
    print(
        f"quotaflow overhead benchmark, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    compiled = not (quotaflow._gate.__file__ or "").endswith(".py")
    print(
        "quotaflow build: "
        + (
            "compiled (mypyc), as a wheel installs it"
            if compiled
            else "pure Python (an editable install or QUOTAFLOW_PURE_PYTHON=1; a wheel is "
            "compiled, see the README)"
        )
    )
    bare, aio, qf = best(bench_bare), best(bench_aiolimiter), best(bench_quotaflow)
    empty = best(bench_empty_shape)
    print("\nUncontended (per call):")
    print(f"  bare asyncio bucket          {bare * 1e6:8.2f} us")
    print(f"  aiolimiter.acquire           {aio * 1e6:8.2f} us")
    print(f"  the API shape, empty         {empty * 1e6:8.2f} us  (acquire+settle doing nothing)")
    print(f"  quotaflow acquire+settle x3  {qf * 1e6:8.2f} us")
    print(f"  ratio quotaflow / bare       {qf / bare:8.2f}x  (target <= 3x)")
    print(f"  ratio empty shape / bare     {empty / bare:8.2f}x  (the floor of that ratio)")
    print(f"  ratio quotaflow / aiolimiter {qf / aio:8.2f}x")
    print("\nCost per grant as waiters grow:")
    costs = {}
    for n in (10, 100, 1_000, 10_000):
        costs[n] = statistics.median(asyncio.run(bench_waiters(n)) for _ in range(3))
        print(
            f"  {n:6d} waiters  {costs[n] * 1e6:8.2f} us/grant  ({costs[n] / costs[10]:.2f}x of 10)"
        )
    ok1 = qf / bare <= 3.0
    ok2 = costs[10_000] / costs[10] <= 2.0
    print(
        f"\ntargets: uncontended {'MET' if ok1 else 'MISSED'}; "
        f"10k waiters {'MET' if ok2 else 'MISSED'}"
    )
    assert math.isfinite(qf)


if __name__ == "__main__":
    if "--compiled" in sys.argv[1:]:
        sys.exit(rerun_compiled())
    main()
