"""Goodput under a saturating load: quotaflow against three common ways of coping with 429s.

One run, four clients, each against a fresh emulator served over real HTTP on loopback:

* ``sdk-retry``: no limiter, google-genai's own ``HttpRetryOptions()`` (5 attempts,
  exponential backoff from 1 s; it ignores ``retryDelay``);
* ``retry-delay``: no limiter, retry each 429 after its ``RetryInfo.retryDelay``;
* ``aiolimiter``: ``AsyncLimiter`` at the RPM limit, then retry 429s after ``retryDelay``;
* ``quotaflow``: google-genai through :func:`quotaflow.transports.genai_http_options`.

Every client runs the same load: ``--tasks`` coroutines calling ``generate_content`` in a loop
for ``--periods`` quota periods (of ``--period`` seconds), prompts of mixed sizes (75% small,
25% large) so that RPM and TPM both bind at times. Printed per client: 429s the server sent,
the share of the binding limit used (the larger of requests and input tokens the server
admitted in the ``periods`` periods from its first admission, over what the limits allow; the
same count for every client), p50/p95 latency of the calls that succeeded, and the calls that
failed. For quotaflow also the p95 *wait for the permit* (``CallInfo.waited``) of large and of
small prompts, and their p95 latency (no size starves: large within 1.5x of small).

Why 25% large: with 30% the mix asks on average for 40 x (0.3 x 600 + 0.7 x 25) = 7,900 of the
8,000 input tokens per period (98.75%) while RPM is full, more than a client that never earns a
429 can use (it holds each amount until one period after the response began, and a 600-token
prompt cannot use the last few hundred tokens of a window). Large prompts then queue without
bound: their p95 wait over small ones' grows with the length of the run (1.00x over 5 periods,
1.5x over 10, 1.9x over 20) whatever the order of service, so the ratio measures the overload,
not the scheduler. ``--large-share 0.3`` reproduces it.

Run: ``python benchmarks/goodput.py`` (``--help`` for the knobs). The figures go to
``benchmarks/results/goodput.json`` (``--out ''`` to skip; ``--sizing`` and ``--json`` write
none), with ``goodput-windows.png`` beside it (the ``bench`` extra), and the table is printed;
exit 1 if quotaflow misses its targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

MODEL = "gemini-2.5-flash"
RESULTS = Path(__file__).resolve().parent / "results" / "goodput.json"


@dataclass
class Load:
    """The load and the limits."""

    tasks: int = 64
    periods: int = 10
    period: float = 1.0
    rpm: int = 40
    tpm: int = 8000
    small: int = 25
    large: int = 600
    large_share: float = 0.25
    latency: float = 0.01
    jitter: float = 0.0
    seed: int = 7
    backfill_depth: int = 32


@dataclass
class Result:
    """What one client achieved."""

    name: str
    rejected: int = 0
    share: float = 0.0
    binding: str = ""
    p50: float = 0.0
    p95: float = 0.0
    failed: int = 0
    ok: int = 0
    by_size: dict[str, list[float]] = field(default_factory=dict)
    waits: dict[str, list[float]] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    # what the server admitted per window of one period from its first admission
    windows: dict[str, list[int]] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)


_WAITS: ContextVar[list[float] | None] = ContextVar("_WAITS", default=None)
"""Per worker: the seconds each call waited for its permit (quotaflow only), read from
``response.extensions["quotaflow"].waited`` by :func:`_wait_tap` (the SDK sends in the
caller's task, so the variable set by the worker is visible in the transport)."""


def _wait_tap(inner: Any) -> Any:
    """Wrap quotaflow's async transport to record how long each call waited for its permit."""
    import httpx

    base: Any = httpx.AsyncBaseTransport
    try:
        import httpx2

        if isinstance(inner, httpx2.AsyncBaseTransport):
            base = httpx2.AsyncBaseTransport
    except ImportError:  # pragma: no cover
        pass

    class WaitTap(base):  # type: ignore[misc, valid-type]
        async def handle_async_request(self, request: Any) -> Any:
            response = await inner.handle_async_request(request)
            sink = _WAITS.get()
            info = response.extensions.get("quotaflow")
            if sink is not None and info is not None:
                sink.append(info.waited)
            return response

        async def aclose(self) -> None:
            await inner.aclose()

    return WaitTap()


def _prompt(tokens: int, rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(letters) for _ in range(tokens * 4))  # 4 bytes per token


def _retry_delay(exc: Any) -> float:
    details = getattr(exc, "details", None) or {}
    err = details.get("error", details) if isinstance(details, dict) else {}
    for d in err.get("details", []) if isinstance(err, dict) else []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            return float(str(d.get("retryDelay", "1s")).rstrip("s"))
    return 1.0


async def _run_load(
    load: Load,
    call: Callable[[str], Awaitable[None]],
    result: Result,
) -> None:
    rng = random.Random(load.seed)
    prompts = {
        "small": [_prompt(load.small, rng) + str(i) for i in range(64)],
        "large": [_prompt(load.large, rng) + str(i) for i in range(64)],
    }
    end = time.monotonic() + load.periods * load.period
    latencies: list[float] = []

    async def worker(i: int) -> None:
        wrng = random.Random(load.seed * 1000 + i)
        waited: list[float] = []
        _WAITS.set(waited)
        while time.monotonic() < end:
            size = "large" if wrng.random() < load.large_share else "small"
            text = wrng.choice(prompts[size])
            waited.clear()
            t0 = time.monotonic()
            try:
                await call(text)
            except Exception:
                result.failed += 1
                continue
            dt = time.monotonic() - t0
            latencies.append(dt)
            result.by_size.setdefault(size, []).append(dt)
            if waited:
                result.waits.setdefault(size, []).append(sum(waited))
            result.ok += 1

    async with anyio.create_task_group() as tg:
        for i in range(load.tasks):
            tg.start_soon(worker, i)
    if latencies:
        q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
        result.p50 = statistics.median(latencies)
        result.p95 = q[18]


def _score(load: Load, stats: dict[str, Any], result: Result) -> None:
    entry = stats["models"].get(MODEL, {})
    result.rejected = int(entry.get("rejected", 0))
    log = entry.get("log", [])
    if not log:
        return
    t0 = min(a["time"] for a in log)
    horizon = t0 + load.periods * load.period
    reqs = sum(a["requests"] for a in log if a["time"] < horizon)
    toks = sum(a["tokens"] for a in log if a["time"] < horizon)
    per_req, per_tok = [0] * load.periods, [0] * load.periods
    for a in log:
        k = int((a["time"] - t0) // load.period)
        if 0 <= k < load.periods:
            per_req[k] += a["requests"]
            per_tok[k] += a["tokens"]
    result.windows = {"requests": per_req, "tokens": per_tok}
    r_share = reqs / (load.rpm * load.periods)
    t_share = toks / (load.tpm * load.periods)
    result.shares = {"rpm": r_share, "tpm": t_share}
    result.share, result.binding = max((r_share, "rpm"), (t_share, "tpm"))
    # how often TPM was what binds: windows (one per admission) holding so many input tokens
    # that a large prompt would not fit any more
    admitted = sorted((a["time"], a["tokens"]) for a in log if a["time"] < horizon)
    full, lo, held = 0, 0, 0
    for t, tokens in admitted:
        held += tokens
        while admitted[lo][0] <= t - load.period:
            held -= admitted[lo][1]
            lo += 1
        full += held > load.tpm - load.large
    result.shares["tpm_full"] = full / len(admitted) if admitted else 0.0


def _genai_client(base_url: str, http_options: Any = None, retry: bool = False) -> Any:
    from google import genai
    from google.genai import types

    if http_options is None:
        import httpx2

        http_options = types.HttpOptions(
            base_url=base_url,
            api_version="v1beta",
            retry_options=types.HttpRetryOptions() if retry else None,
            # the HTTP stack quotaflow rides on, so only the coping strategy differs (with
            # aiohttp installed the SDK would otherwise send these through aiohttp)
            async_client_args={"transport": httpx2.AsyncHTTPTransport()},
        )
    return genai.Client(api_key="test-key", http_options=http_options)


async def run_client(name: str, load: Load) -> Result:
    """Run the load with one client against a fresh emulator."""
    from google.genai import errors

    from quotaflow import RPM, TPM, Limiter, MemoryBackend
    from quotaflow.emulator import EmulatorConfig, FaultConfig, ModelConfig, serve
    from quotaflow.transports import genai_http_options

    config = EmulatorConfig(
        minute_seconds=load.period,
        models=[ModelConfig(name=MODEL, rpm=load.rpm, tpm=load.tpm, rpd=None)],
        faults=FaultConfig(
            latency_seconds=load.latency, jitter_seconds=load.jitter, seed=load.seed
        ),
    )
    result = Result(name)
    async with serve(config) as served:
        base = served.base_url
        if name == "quotaflow":
            limiter = Limiter(
                tier=None,
                quotas={MODEL: [RPM(load.rpm, load.period), TPM(load.tpm, load.period)]},
                backend=MemoryBackend(backfill_depth=load.backfill_depth),
            )
            options = genai_http_options(limiter, base_url=base, api_version="v1beta")
            assert options.async_client_args is not None
            args = options.async_client_args
            args["transport"] = _wait_tap(args["transport"])
            client = _genai_client(base, options)
        else:
            client = _genai_client(base, retry=name == "sdk-retry")
        aio = client.aio
        gate: Any = None
        if name == "aiolimiter":
            from aiolimiter import AsyncLimiter

            gate = AsyncLimiter(load.rpm, load.period)

        async def call(text: str) -> None:
            for _ in range(20):
                try:
                    if gate is not None:
                        async with gate:
                            await aio.models.generate_content(model=MODEL, contents=text)
                    else:
                        await aio.models.generate_content(model=MODEL, contents=text)
                    return
                except errors.ClientError as exc:
                    if exc.code != 429 or name in ("sdk-retry", "quotaflow"):
                        raise
                    await anyio.sleep(_retry_delay(exc))
            raise RuntimeError("gave up")

        try:
            await _run_load(load, call, result)
        finally:
            await aio.aclose()
            client.close()
        _score(load, served.emulator.stats(include_log=True), result)
    return result


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) > 1 else values[0]


def fairness(by_size: dict[str, list[float]]) -> float | None:
    """p95 of large prompts over p95 of small ones (``None`` without both sizes)."""
    if not by_size.get("small") or not by_size.get("large"):
        return None
    small, large = _p95(by_size["small"]), _p95(by_size["large"])
    return large / small if small else float("inf")


def _table(results: list[Result], load: Load) -> str:
    head = (
        f"load: {load.tasks} tasks, {load.periods} periods of {load.period:g}s, "
        f"limits rpm={load.rpm} tpm={load.tpm} per period, prompts {load.small}/{load.large} "
        f"tokens ({load.large_share:.0%} large), server latency {load.latency * 1000:.0f} ms"
    )
    rows = [
        head,
        "",
        "| client | 429s seen by server | share of binding limit used | p50 latency | "
        "p95 latency | failed calls |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r.name} | {r.rejected} | {r.share:.1%} ({r.binding}) | {r.p50 * 1000:.0f} ms | "
            f"{r.p95 * 1000:.0f} ms | {r.failed} |"
        )
    for r in results:
        if r.name != "quotaflow":
            continue
        rows.append("")
        rows.append(
            f"quotaflow shares: rpm {r.shares.get('rpm', 0):.1%}, "
            f"tpm {r.shares.get('tpm', 0):.1%}; "
            f"TPM full (no room for a large prompt) at {r.shares.get('tpm_full', 0):.0%} "
            "of admissions"
        )
        for label, by_size in (("wait for the permit", r.waits), ("latency", r.by_size)):
            ratio = fairness(by_size)
            if ratio is None:
                continue
            p95 = {k: _p95(v) for k, v in by_size.items()}
            rows.append(
                f"quotaflow p95 {label} by size: small {p95['small'] * 1000:.0f} ms, "
                f"large {p95['large'] * 1000:.0f} ms (large/small = {ratio:.2f}x)"
            )
    return "\n".join(rows)


async def measure_sizing(load: Load, calls: int = 200) -> str:
    """Extra latency and quota of ``sizing="count"`` against the estimate's error."""
    import httpx

    from quotaflow import RPM, TPM, Limiter
    from quotaflow.emulator import EmulatorConfig, FaultConfig, ModelConfig, serve
    from quotaflow.transports import QuotaTransport

    rng = random.Random(load.seed)
    shapes: list[dict[str, Any]] = []
    for i in range(calls):
        n = rng.choice([load.small, load.large, 3000])
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": [{"text": _prompt(n, rng)}]}]
        }
        if i % 4 == 1:
            body["systemInstruction"] = {"parts": [{"text": "Answer briefly. " * 20}]}
        if i % 4 == 2:
            body["tools"] = [
                {"functionDeclarations": [{"name": f"f{i}", "description": "x" * 200}]}
            ]
        if i % 4 == 3:
            body["contents"][0]["parts"].append({"text": "日本語のテキスト" * 30})
            body["contents"][0]["parts"].append(
                {"inlineData": {"mimeType": "image/png", "data": ""}}
            )
        shapes.append(body)
    config = EmulatorConfig(
        minute_seconds=60.0,
        models=[ModelConfig(name=MODEL, rpm=100_000, tpm=10**9, rpd=None)],
        faults=FaultConfig(latency_seconds=load.latency, seed=load.seed),
    )
    rows = [
        "| sizing | p50 latency | p95 latency | countTokens calls | mean abs error | max error |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sizing in ("estimate", "count"):
        async with serve(config) as served:
            limiter = Limiter(tier=None, quotas={MODEL: [RPM(100_000), TPM(10**9)]})
            lat: list[float] = []
            errors: list[float] = []
            async with httpx.AsyncClient(
                transport=QuotaTransport(limiter, sizing=sizing),
                base_url=served.base_url,
                headers={"x-goog-api-key": "test-key"},
            ) as client:
                for body in shapes:
                    t0 = time.monotonic()
                    r = await client.post(f"/v1beta/models/{MODEL}:generateContent", json=body)
                    lat.append(time.monotonic() - t0)
                    info = r.extensions["quotaflow"]
                    real = r.json()["usageMetadata"]["promptTokenCount"]
                    errors.append(abs(info.estimated - real) / real)
            counted = served.emulator.stats()["models"][MODEL]["count_tokens"]["received"]
        q = statistics.quantiles(lat, n=20)
        rows.append(
            f"| {sizing} | {statistics.median(lat) * 1000:.1f} ms | {q[18] * 1000:.1f} ms | "
            f"{counted} | {statistics.mean(errors):.2%} | {max(errors):.2%} |"
        )
    head = (
        f"sizing: {calls} sequential generateContent calls, unique prompts (text, system "
        f"instruction, tools, CJK, an image part), server latency {load.latency * 1000:.0f} ms"
    )
    return head + "\n\n" + "\n".join(rows)


def write(results: list[Result], load: Load, path: Path) -> None:
    """The results file (and its plot, when it is benchmarks/results/goodput.json)."""
    from fleet_faults import machine  # benchmarks/, beside this script

    clients = []
    for r in results:
        p95 = {k: _p95(v) for k, v in r.by_size.items() if v}
        wait95 = {k: _p95(v) for k, v in r.waits.items() if v}
        clients.append(
            {
                "name": r.name,
                "rejected": r.rejected,
                "share": r.share,
                "binding": r.binding,
                "shares": r.shares,
                "p50_s": r.p50,
                "p95_s": r.p95,
                "ok": r.ok,
                "failed": r.failed,
                "p95_latency_by_size_s": p95,
                "p95_wait_by_size_s": wait95,
                "wait_large_over_small": fairness(r.waits),
                "windows": r.windows,
            }
        )
    data = {
        "benchmark": "benchmarks/goodput.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": asdict(load),
        "clients": clients,
        "table": _table(results, load),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    import plots  # benchmarks/plots.py

    if path.resolve().parent == plots.RESULTS:
        for png in plots.plot("goodput"):
            print(f"# wrote {png.name}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run every client and print the table; exit 1 if quotaflow misses its targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    load = Load()
    for name, value in vars(load).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--clients", default="sdk-retry,retry-delay,aiolimiter,quotaflow")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", default=str(RESULTS), help="results file ('' to skip)")
    parser.add_argument(
        "--sizing", action="store_true", help="measure countTokens sizing against the estimate"
    )
    args = parser.parse_args(argv)
    load = Load(**{k: getattr(args, k) for k in vars(load)})
    if args.sizing:
        print(anyio.run(measure_sizing, load))
        return 0
    results = [anyio.run(run_client, name, load) for name in args.clients.split(",")]
    if args.json:
        print(json.dumps([r.__dict__ | {"by_size": None} for r in results], indent=2))
    else:
        print(_table(results, load))
    if args.out and not args.json:
        write(results, load, Path(args.out))
    ours = [r for r in results if r.name == "quotaflow"]
    ratio = fairness(ours[0].waits) if ours else None
    if ours and (ours[0].rejected or ours[0].share < 0.97 or (ratio or 0.0) > 1.5):
        print(
            "quotaflow missed its target (0 429s, >= 97% use, p95 wait large/small <= 1.5x)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
