"""Acquires per second on one Redis: quotaflow against the raw floor, limits and pyrate-limiter.

Run: ``python benchmarks/redis_throughput.py [--seconds 3]`` (``REDIS_URL`` to use your server;
otherwise a private ``redis-server`` is started). Limits are far above the load, so nothing
waits: this measures the cost of one uncontended acquire.

What is counted: for quotaflow, one operation is what a user does per call, ``acquire`` then
``permit.settle`` (``Limiter`` on the Redis backend, one RPM limit). Its settle costs no round
trip of its own while nobody waits: it is queued in the process and applied by the scope's next
script call (here the next acquire), or sent alone after 2 ms if no call comes. Calls of one
process that find its two connections in flight are queued and written together. Round trips per
operation are counted from ``INFO commandstats`` (EVALSHA + EVAL calls, all processes, the
flushes included) and the ratio to the floor is operations per second over the floor's, not
per script call. The peers' operation is one ``hit``/``try_acquire`` (they have no settle).

Each cell runs every contender ``--rounds`` times, interleaved (floor, quotaflow, limits,
pyrate, floor, ...), so that the floor and the contenders see the same load of the machine;
each figure is the median of its runs.

Contenders are ``make(url, ns, params) -> (acquire, close)``; ``acquire()`` returns ``False``
when refused, else ``True``, or a ``(Redis time, amount)`` pair when ``params["record"]`` asks
(one more round trip; the accuracy benchmark, ``redis_accuracy.py``, uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

Acquire = Callable[[], Awaitable[Any]]
Made = tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]


class Server:
    """``REDIS_URL`` if set, else a private ``redis-server`` on a free port."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        url = os.environ.get("REDIS_URL")
        if url:
            self.url = url
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found: apt-get install redis-server")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tempfile.mkdtemp(),
            ],
            stdout=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def script_stats(url: str) -> tuple[int, int]:
    """EVALSHA + EVAL calls so far (the round trips of script-based limiters), and the
    microseconds Redis spent in them."""
    import redis

    c = redis.Redis.from_url(url)
    stats = c.info("commandstats")
    c.close()
    names = ("cmdstat_evalsha", "cmdstat_eval")
    return (
        sum(int(stats.get(k, {}).get("calls", 0)) for k in names),
        sum(int(stats.get(k, {}).get("usec", 0)) for k in names),
    )


def script_calls(url: str) -> int:
    """EVALSHA + EVAL calls so far."""
    return script_stats(url)[0]


async def _worker_main(
    name: str,
    url: str,
    ns: str,
    tasks: int,
    seconds: float,
    params: dict[str, Any],
    start: Any,
    out: Any,
) -> None:
    make = CONTENDERS_BY_NAME[name]
    acquire, close = await make(url, ns, params)
    await acquire()  # warm up: connections, scripts, configure
    start.wait()
    stop = time.monotonic() + seconds
    counts = [0] * tasks
    events: list[tuple[float, int]] = []
    cpu0 = time.process_time()

    async def loop(i: int) -> None:
        while time.monotonic() < stop:
            got = await acquire()
            if got is not False:
                counts[i] += 1
                if params.get("record"):
                    events.append(got)

    await asyncio.gather(*(loop(i) for i in range(tasks)))
    cpu = time.process_time() - cpu0
    await close()
    out.put((sum(counts), events, cpu))


def _worker(*args: Any) -> None:
    asyncio.run(_worker_main(*args))


def run_cell(
    name: str,
    url: str,
    procs: int,
    tasks: int,
    seconds: float,
    params: dict[str, Any],
    stats: dict[str, float] | None = None,
) -> tuple[float, list[tuple[float, int]]]:
    """Operations per second of ``procs`` x ``tasks``, and recorded events if asked;
    ``stats`` gets ``client_cpu_us``: the workers' CPU time per operation."""
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    ps = [
        ctx.Process(target=_worker, args=(name, url, ns, tasks, seconds, params, start, out))
        for _ in range(procs)
    ]
    for p in ps:
        p.start()
    time.sleep(1.5 + 0.3 * procs)  # imports, connections, warm-up
    start.set()
    t0 = time.monotonic()
    results = [out.get(timeout=seconds + 60) for _ in ps]
    elapsed = time.monotonic() - t0
    for p in ps:
        p.join(10)
    total = sum(r[0] for r in results)
    events = [e for r in results for e in r[1]]
    if stats is not None:
        stats["client_cpu_us"] = 1e6 * sum(r[2] for r in results) / max(total, 1)
    return total / min(elapsed, seconds + 0.05), events


async def _recorder(url: str, params: dict[str, Any]) -> Any:
    if not params.get("record"):
        return None
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url)


async def floor(url: str, ns: str, params: dict[str, Any]) -> Made:
    """The raw floor: EVALSHA of a trivial one-key script."""
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(url)
    sha = await r.script_load("return 1")
    key = f"{ns}:floor"

    async def acquire() -> Any:
        return bool(await r.evalsha(sha, 1, key))

    async def close() -> None:
        await r.aclose()

    return acquire, close


async def quotaflow(url: str, ns: str, params: dict[str, Any]) -> Made:
    """quotaflow's Limiter on the Redis backend: acquire, then settle (it rides on the next
    acquire's script call: one round trip per cycle while nobody waits)."""
    from quotaflow import Limit, Limiter

    limit, period = params.get("limit", 10**9), params.get("period", 60.0)
    tokens = params.get("tokens", 0)
    quotas = {"m": [Limit("rpm", limit, period)]}
    if tokens:
        quotas["m"].append(Limit("tpm", params["tpm"], period, metric="input_tokens"))
    limiter = Limiter(tier=None, quotas=quotas, backend=f"{url}?namespace={ns}")
    rec = await _recorder(url, params)
    rng = random.Random()

    async def acquire() -> Any:
        n = rng.randint(*tokens) if tokens else 0
        permit = await limiter.acquire("m", tokens=n)
        permit.mark_sent()
        out: Any = True
        if rec is not None:
            sec, usec = await rec.time()
            permit.mark_response_started()
            out = (sec + usec / 1e6, n)
        await permit.settle(input_tokens=n)
        return out

    async def close() -> None:
        if rec is not None:
            await rec.aclose()

    return acquire, close


async def limits_moving(url: str, ns: str, params: dict[str, Any]) -> Made:
    """limits (alisaifee), moving window, async, on redis-py; waits by sleeping until reset."""
    import asyncio
    import time

    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    storage = RedisStorage(
        url.replace("redis://", "async+redis://"), implementation="redispy", key_prefix=ns
    )
    limit = params.get("limit", 10**9)
    item = RateLimitItemPerSecond(limit, int(params.get("period", 60)))
    lim = MovingWindowRateLimiter(storage)
    rec = await _recorder(url, params)

    async def acquire() -> Any:
        while not await lim.hit(item, "m"):
            stats = await lim.get_window_stats(item, "m")
            await asyncio.sleep(max(0.001, stats.reset_time - time.time()))
        if rec is not None:
            sec, usec = await rec.time()
            return (sec + usec / 1e6, 1)
        return True

    async def close() -> None:
        if rec is not None:
            await rec.aclose()

    return acquire, close


async def pyrate(url: str, ns: str, params: dict[str, Any]) -> Made:
    """pyrate-limiter's RedisBucket (async redis-py client), blocking acquire."""
    import redis.asyncio
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    r = redis.asyncio.Redis.from_url(url)
    limit = params.get("limit", 10**9)
    period_ms = int(params.get("period", 60) * Duration.SECOND)
    bucket = await RedisBucket.init([Rate(limit, period_ms)], r, f"{ns}:pyrate")
    lim = Limiter(bucket)
    rec = await _recorder(url, params)

    async def acquire() -> Any:
        ok = await lim.try_acquire_async("m", 1, blocking=True)
        if not ok:
            return False
        if rec is not None:
            sec, usec = await rec.time()
            return (sec + usec / 1e6, 1)
        return True

    async def close() -> None:
        if rec is not None:
            await rec.aclose()

    return acquire, close


CONTENDERS_BY_NAME: dict[str, Callable[[str, str, dict[str, Any]], Awaitable[Made]]] = {
    "floor": floor,
    "quotaflow": quotaflow,
    "limits_moving": limits_moving,
    "pyrate": pyrate,
}

CELLS = [(1, 1), (1, 32), (4, 8)]
CONTENDERS = ["floor", "quotaflow", "limits_moving", "pyrate"]
LABELS = {
    "floor": "raw floor (EVALSHA 'return 1')",
    "quotaflow": "quotaflow (acquire + settle)",
    "limits_moving": "limits, moving window (async)",
    "pyrate": "pyrate-limiter RedisBucket",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(__file__), "results", "redis_throughput.json"),
        help="results file ('' to skip); benchmarks/docs_tables.py puts its table in the docs",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of every contender per cell, interleaved; each figure is the median",
    )
    args = ap.parse_args()
    server = Server()
    try:
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTENDERS}
        costs: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTENDERS}
        for procs, tasks in CELLS:
            runs: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in CONTENDERS}
            for _ in range(args.rounds):
                for name in CONTENDERS:
                    calls0, usec0 = script_stats(server.url)
                    st: dict[str, float] = {}
                    rate, _ = run_cell(name, server.url, procs, tasks, args.seconds, {}, st)
                    calls1, usec1 = script_stats(server.url)
                    ops = max(rate * args.seconds, 1)
                    runs[name].append(
                        (rate, (calls1 - calls0) / ops, (usec1 - usec0) / ops, st["client_cpu_us"])
                    )
            for name in CONTENDERS:
                rate, rts, script_us, cpu_us = sorted(runs[name])[len(runs[name]) // 2]
                rows[name].append((rate, rts))
                costs[name].append((script_us, cpu_us))
    finally:
        server.stop()
    title = (
        f"Redis throughput, {datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    head = " | ".join(f"{p}x{t}" for p, t in CELLS)
    out = [f"| operations per second | {head} |", "|---" * (len(CELLS) + 1) + "|"]
    for name in CONTENDERS:
        cells = " | ".join(f"{r:,.0f}" for r, _ in rows[name])
        out.append(f"| {LABELS[name]} | {cells} |")
    out += ["", f"| operations per second / raw floor | {head} | round trips per op |"]
    out.append("|---" * (len(CELLS) + 2) + "|")
    floor = [r for r, _ in rows["floor"]]
    for name in CONTENDERS[1:]:
        ratios = " | ".join(f"{r / f:.0%}" for (r, _), f in zip(rows[name], floor, strict=True))
        rts = "/".join(f"{rt:.2f}" for _, rt in rows[name])
        out.append(f"| {LABELS[name]} | {ratios} | {rts} |")
    out += ["", f"| microseconds per operation: Redis script / client CPU | {head} |"]
    out.append("|---" * (len(CELLS) + 1) + "|")
    for name in CONTENDERS:
        cells = " | ".join(f"{s:.1f} / {c:.0f}" for s, c in costs[name])
        out.append(f"| {LABELS[name]} | {cells} |")
    table = "\n".join(out)
    print(f"# {title}\n\n{table}")
    if args.out:
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "benchmark": "benchmarks/redis_throughput.py",
            "settings": {"seconds": args.seconds, "rounds": args.rounds, "cells": CELLS},
            "rows": {name: rows[name] for name in CONTENDERS},
            "costs_us": {name: costs[name] for name in CONTENDERS},
            "table": f"{title}\n\n{table}",
        }
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
