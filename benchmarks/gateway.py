"""The gateway's cost per call and its quota accuracy, against the emulator (20 ms latency).

Run: ``python benchmarks/gateway.py [--calls 400]`` (``REDIS_URL`` to use your server; otherwise
a private ``redis-server`` is started). Every part is its own process on this machine: the
emulator (``quotaflow.emulator``), one or two gateways (``quotaflow gateway --config ...``, on
one Redis backend, access log and audit log on) and the load generator (this script: httpx,
asyncio, one client per target, ``generateContent`` with a short prompt).

1. Latency and throughput: the same calls straight to the emulator (with the real key) and
   through 1 gateway on the memory backend, 1 and 2 replicas on Redis (with an agent token;
   2 replicas take turns), at
   concurrency 1 and 8, with limits far above the load. Added latency is the gateway's
   percentile minus the direct one; throughput is calls per second at that concurrency; the
   gateways' CPU per call (user + system, from ``/proc``), which depends little on what else
   runs on the machine. The floor row is a pass-through proxy in its own process
   (``gateway.py --bare-proxy``: uvicorn with the gateway's server settings, a raw ASGI app
   that relays the body with the real key on the gateway's upstream client; no tokens, quota
   or audit), measured the same way: what any proxy in Python costs here, beside which each
   gateway row shows the floor's added latency.
2. Saturation: the emulator and the gateways' limiter both allow ``--limit`` requests per 1 s
   window; 32 concurrent loops through 2 replicas for ``--seconds``. Reported: the emulator's
   429s (upstream) and the share of the limit admitted in each full 1 s window after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from redis_throughput import Server

KEY = "AIzaSyBench0000000000000000000000000000"
MODEL = "gemini-2.5-flash"
BODY = {"contents": [{"parts": [{"text": "Say hello to the benchmark."}]}]}
LATENCY = 0.020
FLOOR = "pass-through proxy (floor)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str) -> None:
    for _ in range(500):
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{url} did not come up")


def emulator_main(port: int, rpm: int) -> None:
    """The emulator process: ``rpm`` requests per 1 s window, 20 ms latency."""
    from quotaflow.emulator import ApiKeyConfig, EmulatorConfig, FaultConfig, ModelConfig, serve

    config = EmulatorConfig(
        keys=[ApiKeyConfig(key=KEY, project="bench")],
        minute_seconds=1.0,
        models=[ModelConfig(name=MODEL, rpm=rpm, tpm=10**9, rpd=10**9)],
        faults=FaultConfig(latency_seconds=LATENCY),
    )
    with serve(config, port=port):
        while True:
            time.sleep(3600)


def start_emulator(rpm: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--emulator", str(port), str(rpm)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/_emulator/stats")
    return proc, url


def bare_proxy_main(port: int, upstream: str) -> None:
    """The floor: a pass-through proxy with no tokens, quota, settlement or audit. uvicorn with
    the gateway's server settings and a raw ASGI app that reads the request body, sends it
    upstream with the real key on the gateway's upstream client, reads the whole answer and
    relays it."""
    import uvicorn

    from quotaflow.gateway._serve import _SERVER_OPTIONS
    from quotaflow.gateway._upstream import Upstream

    client = httpx.AsyncClient(
        transport=Upstream(), base_url=upstream, headers={"x-goog-api-key": KEY}, timeout=60
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        r = await client.request(scope["method"], scope["path"], content=body, headers=headers)
        back = [(b"content-type", r.headers.get("content-type", "").encode()),
                (b"content-length", str(len(r.content)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": r.status_code, "headers": back})
        await send({"type": "http.response.body", "body": r.content})

    options = {**_SERVER_OPTIONS, "lifespan": "on"}
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options)).run()


def start_bare_proxy(upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--bare-proxy", str(port), upstream],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/")
    return proc, url


def start_gateways(
    n: int, upstream: str, redis_url: str | None, rpm: int, tmp: Path
) -> tuple[list[subprocess.Popen[bytes]], list[str], str]:
    from quotaflow.gateway import TokenFile, new_token

    ns = f"bench-gw-{time.time_ns()}"
    token, entry = new_token("agent")
    procs, urls = [], []
    for i in range(n):
        d = tmp / f"gw{i}-{ns}"
        d.mkdir()
        TokenFile(d / "tokens.toml").add(entry)
        port = free_port()
        (d / "gateway.toml").write_text(
            f"""[gateway]
host = "127.0.0.1"
port = {port}
upstream = "{upstream}"
tokens_file = "tokens.toml"

[limiter]
tier = "tier1"
minute_seconds = 1.0
backend = "{f"{redis_url}?namespace={ns}" if redis_url else "memory://"}"
overrides = {{ "{MODEL}" = {{ rpm = {rpm}, rpd = 1000000000, tpm = 1000000000 }} }}

[audit]
path = "audit.jsonl"

[agents.agent.grants]
content = "write"
"""
        )
        log = open(d / "access.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "quotaflow.cli", "gateway", "--config", "gateway.toml"],
                cwd=d,
                env={**os.environ, "GEMINI_API_KEY": KEY},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_up(url + "/healthz")
    return procs, urls, token


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


async def load(
    urls: list[str], key: str, concurrency: int, calls: int | None, seconds: float | None
) -> tuple[list[float], float, int]:
    """Latencies (s), elapsed seconds and non-200 answers of ``calls`` calls (or of
    ``seconds`` of calls) by ``concurrency`` loops taking turns over ``urls``."""
    clients = [
        httpx.AsyncClient(
            base_url=u,
            headers={"x-goog-api-key": key},
            limits=httpx.Limits(max_connections=concurrency + 4),
            timeout=60,
        )
        for u in urls
    ]
    path = f"/v1beta/models/{MODEL}:generateContent"
    latencies: list[float] = []
    bad = 0
    turn = 0
    left = calls
    end = None if seconds is None else time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal turn, left, bad
        while True:
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            if end is not None and time.perf_counter() >= end:
                return
            client = clients[turn % len(clients)]
            turn += 1
            t0 = time.perf_counter()
            r = await client.post(path, json=BODY)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                bad += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    for c in clients:
        await c.aclose()
    return latencies, elapsed, bad


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes ``pids`` used so far (Linux; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(
    urls: list[str], key: str, concurrency: int, calls: int, pids: list[int] | None = None
) -> dict[str, float]:
    asyncio.run(load(urls, key, concurrency, 40, None))  # warm up connections and caches
    # the load generator's own collector pauses (tens of ms in a full pass) are not the
    # gateway's: none while measuring
    gc.collect()
    gc.disable()
    try:
        before = cpu_seconds(pids or [])
        lat, elapsed, bad = asyncio.run(load(urls, key, concurrency, calls, None))
        used = cpu_seconds(pids or []) - before
    finally:
        gc.enable()
    if bad:
        raise SystemExit(f"{bad} calls failed at concurrency {concurrency} on {urls}")
    out = {
        "p50_ms": pct(lat, 0.50) * 1000,
        "p99_ms": pct(lat, 0.99) * 1000,
        "per_s": len(lat) / elapsed,
    }
    if pids:
        out["gateway_cpu_ms"] = used * 1000 / len(lat)  # the gateways' CPU per call
    return out


def window_use(log: list[dict[str, Any]], limit: int) -> list[float]:
    times = sorted(a["time"] for a in log)
    if not times:
        return []
    out = []
    t = times[0] + 1.0  # the first window fills the line; the rest are steady state
    while t + 1.0 <= times[-1]:
        out.append(sum(1 for x in times if t <= x < t + 1.0) / limit)
        t += 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emulator", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bare-proxy", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=400, help="measured calls per cell")
    ap.add_argument("--limit", type=int, default=60, help="requests per 1 s window (phase 2)")
    ap.add_argument("--seconds", type=float, default=8.0, help="saturation phase length")
    ap.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(__file__), "results", "gateway.json"),
        help="results file ('' to skip); benchmarks/docs_tables.py puts its table in the docs",
    )
    args = ap.parse_args()
    if args.emulator:
        emulator_main(*args.emulator)
        return
    if args.bare_proxy:
        bare_proxy_main(int(args.bare_proxy[0]), args.bare_proxy[1])
        return
    redis = Server()
    tmp = Path(tempfile.mkdtemp(prefix="quotaflow-gw-bench-"))
    rows: dict[str, dict[int, dict[str, float]]] = {}
    try:
        emu, emu_url = start_emulator(10**7)
        try:
            rows["direct"] = {c: measure([emu_url], KEY, c, args.calls) for c in (1, 8)}
            bare, bare_url = start_bare_proxy(emu_url)
            try:
                rows[FLOOR] = {
                    c: measure([bare_url], KEY, c, args.calls, [bare.pid]) for c in (1, 8)
                }
            finally:
                stop([bare])
            for name, n, backend in (
                ("1 replica, memory backend", 1, None),
                ("1 replica, Redis", 1, redis.url),
                ("2 replicas, Redis", 2, redis.url),
            ):
                procs, urls, token = start_gateways(n, emu_url, backend, 10**7, tmp)
                try:
                    pids = [p.pid for p in procs]
                    rows[name] = {c: measure(urls, token, c, args.calls, pids) for c in (1, 8)}
                finally:
                    stop(procs)
        finally:
            stop([emu])
        emu, emu_url = start_emulator(args.limit)
        try:
            procs, urls, token = start_gateways(2, emu_url, redis.url, args.limit, tmp)
            try:
                _, _, refused = asyncio.run(load(urls, token, 32, None, args.seconds))
            finally:
                stop(procs)
            stats = httpx.get(emu_url + "/_emulator/stats?log=1").json()["models"][MODEL]
        finally:
            stop([emu])
    finally:
        redis.stop()
    use = window_use(stats["log"], args.limit)
    direct = rows["direct"]
    title = (
        f"Gateway, {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs: "
        f"emulator with {LATENCY * 1000:.0f} ms latency; gateways on one Redis"
    )
    out = [
        "| path | concurrency | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| floor's added p50 / p99 ms | calls/s | of direct | CPU ms per call "
        "| targets (<= 2 / 5 ms, >= 80%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cells in rows.items():
        for c, r in cells.items():
            d = direct[c]
            added = (
                ("-", "-")
                if name == "direct"
                else (f"{r['p50_ms'] - d['p50_ms']:.2f}", f"{r['p99_ms'] - d['p99_ms']:.2f}")
            )
            f = rows[FLOOR][c]
            floor = (
                "-"
                if name in ("direct", FLOOR)
                else f"{f['p50_ms'] - d['p50_ms']:.2f} / {f['p99_ms'] - d['p99_ms']:.2f}"
            )
            misses = []
            if name != "direct":
                if r["p50_ms"] - d["p50_ms"] > 2.0:
                    misses.append("p50")
                if r["p99_ms"] - d["p99_ms"] > 5.0:
                    misses.append("p99")
                if r["per_s"] < 0.8 * d["per_s"]:
                    misses.append("throughput")
            verdict = (
                "-"
                if name == "direct"
                else ("met" if not misses else "missed: " + ", ".join(misses))
            )
            out.append(
                f"| {name} | {c} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {added[0]} | "
                f"{added[1]} | {floor} | {r['per_s']:.0f} | {r['per_s'] / d['per_s']:.0%} | "
                f"{f'{cpu:.2f}' if (cpu := r.get('gateway_cpu_ms')) is not None else '-'} | "
                f"{verdict} |"
            )
    sat = (
        f"Saturation through 2 replicas ({args.limit} requests per 1 s window, 32 loops, "
        f"{args.seconds:.0f} s): {stats['rejected']} upstream 429s, "
        f"{refused} calls answered other than 200, "
        f"limit used per full window: mean {statistics.mean(use):.1%}, "
        f"min {min(use):.1%}, max {max(use):.1%} ({len(use)} windows); "
        f"max in any rolling window {stats['max_requests_in_window']}."
    )
    table = "\n".join(out) + "\n\n" + sat
    print(f"# {title}\n\n{table}")
    if args.out:
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "benchmark": "benchmarks/gateway.py",
            "settings": {"calls": args.calls, "limit": args.limit, "seconds": args.seconds},
            "rows": {k: {str(c): v for c, v in cells.items()} for k, cells in rows.items()},
            "saturation": {
                "upstream_429": stats["rejected"],
                "non_200": refused,
                "window_use": use,
                "max_in_window": stats["max_requests_in_window"],
            },
            "table": f"{title}\n\n{table}",
        }
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
