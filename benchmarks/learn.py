"""Learned limits, end to end: a fleet of google-genai processes on one Redis, through
``genai_http_options(Limiter("tier1", minute_seconds=P, backend=redis))``, against the emulator,
on a model the tier tables have no figures for (``gemini-3.5-flash``). Nothing tells the
limiters the limits: they learn them from the server's 429s.

Scenarios (one per run, or ``all``):

* ``figures``: the 429s carry ``quotaValue``. Targets: at most 10 429s in the whole run (the
  first ones teach), 0 failed calls, at least 95% of the binding limit used per window from the
  second window on.
* ``no-value``: the 429s carry a ``QuotaFailure`` without ``quotaValue``: the adaptive rate.
  Targets: at most 5% of requests rejected, 0 failed calls, at least 90% use per window from
  the fourth window on.
* ``tier-drop``: as ``figures``, and the server halves its limits at the start of the fourth
  window. Target: no 429 from two windows after the drop on.
* ``spend``: a spend cap binding before RPM/TPM (``benchmarks/learn_spend.py``, when present).

Each run writes ``benchmarks/results/learn.json`` (date, machine, versions, settings, figures
per window) and prints a table; ``docs/benchmarks.md`` shows it (``docs_tables.py``).

    python benchmarks/learn.py all --period 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

MODEL = "gemini-3.5-flash"
SCENARIOS = ("figures", "no-value", "tier-drop", "spend")
RESULTS = Path(__file__).parent / "results" / "learn.json"


@dataclass
class Settings:
    """The fleet, the server's limits and the load."""

    procs: int = 2
    tasks: int = 16
    period: float = 3.0  # the compressed minute, of the limiter and the emulator alike
    periods: int = 10
    rpm: int = 30
    tpm: int = 10_000
    latency: float = 0.02


# --------------------------------------------------------------------------------------------
# The worker: one process of the fleet


async def _worker(cfg: dict[str, Any]) -> None:
    import anyio
    from google import genai

    from quotaflow import Limiter
    from quotaflow.transports import genai_http_options

    s = Settings(**cfg["settings"])
    limiter = Limiter("tier1", minute_seconds=s.period, backend=cfg["url"])
    options = genai_http_options(limiter, base_url=cfg["base_url"], api_version="v1beta")
    client = genai.Client(api_key="test-key", http_options=options)
    await limiter.status(MODEL)  # connected
    print(json.dumps({"ev": "ready"}), flush=True)
    start = float((await anyio.to_thread.run_sync(sys.stdin.readline)).split()[1])
    await anyio.sleep(max(0.0, start - time.time()))
    end = time.monotonic() + s.periods * s.period
    ok = failed = 0
    errors: dict[str, int] = {}

    async def task(i: int) -> None:
        nonlocal ok, failed
        n = 0
        while time.monotonic() < end:
            n += 1
            try:
                await client.aio.models.generate_content(
                    model=MODEL, contents=f"worker {cfg['index']} task {i} call {n}: hello"
                )
                ok += 1
            except Exception as exc:
                failed += 1
                key = f"{type(exc).__name__}: {str(exc)[:160]}"
                errors[key] = errors.get(key, 0) + 1

    with anyio.move_on_after(s.periods * s.period + 4 * s.period + 10):
        async with anyio.create_task_group() as tg:
            for i in range(s.tasks):
                tg.start_soon(task, i)
    status = await limiter.status(MODEL)
    origins = {d: st.origin.kind for d, st in status.items()}
    print(
        json.dumps(
            {"ev": "done", "ok": ok, "failed": failed, "errors": errors, "origins": origins}
        ),
        flush=True,
    )
    await client.aio.aclose()
    client.close()
    limiter.close()
    await limiter.backend.aclose()  # type: ignore[union-attr]


class _Proc:
    def __init__(self, cfg: dict[str, Any], log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.ready = threading.Event()
        self.report: dict[str, Any] | None = None
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if ev.get("ev") == "ready":
                    self.ready.set()
                elif ev.get("ev") == "done":
                    self.report = ev
        self.ready.set()

    def go(self, start: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"go {start!r}\n")
        self.proc.stdin.flush()

    def close(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._t.join(5)
        self._log.close()


# --------------------------------------------------------------------------------------------
# The parent


def per_window(
    log: list[dict[str, Any]], s: Settings, t0: float, limits: list[tuple[int, int]]
) -> list[float]:
    """Use of the binding limit per fixed window of one period from ``t0``."""
    reqs = [0] * s.periods
    toks = [0] * s.periods
    for a in log:
        k = int((a["time"] - t0) // s.period)
        if 0 <= k < s.periods:
            reqs[k] += a["requests"]
            toks[k] += a["tokens"]
    return [
        round(max(r / rpm, t / tpm), 4) for r, t, (rpm, tpm) in zip(reqs, toks, limits, strict=True)
    ]


def rejections_per_window(times: list[float], s: Settings, t0: float) -> list[int]:
    out = [0] * s.periods
    for t in times:
        k = int((t - t0) // s.period)
        if 0 <= k < s.periods:
            out[k] += 1
    return out


def run(scenario: str, s: Settings) -> dict[str, Any]:
    """Run one scenario; its figures and the targets it misses."""
    if scenario == "spend":
        try:
            from learn_spend import run_spend  # type: ignore[import-not-found]
        except ImportError:
            return {"scenario": "spend", "skipped": "benchmarks/learn_spend.py is not here"}
        import anyio

        out: dict[str, Any] = anyio.run(run_spend)
        out["scenario"] = "spend"
        return out
    from fleet_faults import RedisProc

    from quotaflow.emulator import EmulatorConfig, FaultConfig, ModelConfig, serve

    detail = "no_value" if scenario == "no-value" else "full"
    config = EmulatorConfig(
        minute_seconds=s.period,
        models=[ModelConfig(name=MODEL, rpm=s.rpm, tpm=s.tpm)],
        faults=FaultConfig(latency_seconds=s.latency),
        quota_error_detail=detail,
    )
    rejected_at: list[float] = []
    logdir = Path(tempfile.mkdtemp(prefix="qf-learn-"))
    redis = RedisProc().start()
    procs: list[_Proc] = []
    drop_window = 3
    try:
        with serve(config) as served:
            emulator = served.emulator
            engine = emulator._engine
            admit = engine.admit

            def counting(*args: Any, **kw: Any) -> Any:
                try:
                    return admit(*args, **kw)
                except Exception as exc:
                    if getattr(exc, "code", None) == 429:
                        rejected_at.append(time.time())
                    raise

            engine.admit = counting  # type: ignore[method-assign]
            ns = f"learn-{os.getpid()}-{scenario}"
            url = f"{redis.url}?namespace={ns}"
            for i in range(s.procs):
                cfg = {"index": i, "url": url, "base_url": served.base_url, "settings": asdict(s)}
                procs.append(_Proc(cfg, logdir / f"w{i}.log"))
            for p in procs:
                if not p.ready.wait(90) or p.proc.poll() is not None:
                    raise RuntimeError((logdir / "w0.log").read_text()[-2000:])
            start = time.time() + 0.5
            for p in procs:
                p.go(start)
            limits = [(s.rpm, s.tpm)] * s.periods
            if scenario == "tier-drop":
                time.sleep(max(0.0, start + drop_window * s.period - time.time()))
                emulator.set_limits(MODEL, rpm=s.rpm // 2, tpm=s.tpm // 2)
                limits = [(s.rpm, s.tpm)] * drop_window + [(s.rpm // 2, s.tpm // 2)] * (
                    s.periods - drop_window
                )
            for p in procs:
                p.close(s.periods * s.period + 8 * s.period + 60)
            stats = emulator.stats(include_log=True)["models"].get(MODEL, {})
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
        redis.kill()
    reports = [p.report for p in procs if p.report]
    log = stats.get("log", [])
    t0 = min((a["time"] for a in log), default=start)
    use = per_window(log, s, t0, limits)
    rej = rejections_per_window(rejected_at, s, t0)
    received = int(stats.get("received", 0))
    result: dict[str, Any] = {
        "scenario": scenario,
        "settings": asdict(s),
        "rejected": int(stats.get("rejected", 0)),
        "received": received,
        "admitted": int(stats.get("admitted", 0)),
        "failed": sum(r["failed"] for r in reports),
        "errors": {k: v for r in reports for k, v in r["errors"].items()},
        "origins": [r.get("origins") for r in reports],
        "use": use,
        "rejected_per_window": rej,
        "rejected_at": [round(t - t0, 3) for t in rejected_at],
        "admitted_at": [round(a["time"] - t0, 3) for a in sorted(log, key=lambda a: a["time"])],
        "workers_reported": len(reports),
    }
    result["misses"] = misses(result, s, drop_window)
    return result


def misses(r: dict[str, Any], s: Settings, drop_window: int) -> list[str]:
    """The targets the figures miss (empty: all met)."""
    out = []
    if r["workers_reported"] < s.procs:
        out.append("a worker did not report")
    if r["failed"]:
        out.append(f"{r['failed']} failed calls (target 0): {r['errors']}")
    use = r["use"]
    if r["scenario"] == "figures":
        if r["rejected"] > 10:
            out.append(f"{r['rejected']} 429s (target <= 10)")
        if use[1:-1] and min(use[1:-1]) < 0.95:
            out.append(f"use per window {use} (target >= 95% from the second on)")
    elif r["scenario"] == "no-value":
        share = r["rejected"] / max(1, r["received"])
        if share > 0.05:
            out.append(f"{share:.1%} of requests rejected (target <= 5%)")
        if use[3:-1] and min(use[3:-1]) < 0.90:
            out.append(f"use per window {use} (target >= 90% from the fourth on)")
    elif r["scenario"] == "tier-drop":
        late = r["rejected_per_window"][drop_window + 2 :]
        if any(late):
            out.append(
                f"429s per window {r['rejected_per_window']} (target 0 from two "
                f"windows after the drop, window {drop_window + 1})"
            )
    return out


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| scenario | 429s at the server | failed calls | use per window | misses |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if "skipped" in r:
            rows.append(f"| {r['scenario']} | - | - | - | skipped: {r['skipped']} |")
            continue
        if r["scenario"] == "spend":  # learn_spend.py's figures: the cap's use per window
            use = " ".join(f"{u:.0%}" for u in r.get("cap_use_per_window", []))
            miss = (
                []
                if r.get("spend_429s") == 0 and r.get("min_cap_use", 0) >= 0.95
                else [f"{r.get('spend_429s')} spend 429s, min cap use {r.get('min_cap_use')}"]
            )
            rows.append(
                f"| spend (cap ${r.get('cap_usd')}) | {r.get('spend_429s', 0)} spend, "
                f"{r.get('other_429s', 0)} other, of {r.get('calls', '-')} calls | "
                f"{r.get('failed_calls', '-')} | {use} (of the cap) | {'; '.join(miss) or 'none'} |"
            )
            continue
        use = " ".join(f"{u:.0%}" for u in r.get("use", []))
        rows.append(
            f"| {r['scenario']} | {r.get('rejected', '-')} of {r.get('received', '-')} | "
            f"{r.get('failed', '-')} | {use} | {'; '.join(r.get('misses', [])) or 'none'} |"
        )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    return {
        "benchmark": "benchmarks/learn.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": f"{platform.system()} {platform.machine()}",
            "cpus": f"{os.cpu_count()} cores",
            "python": f"Python {platform.python_version()}",
        },
        "versions": {n: v(n) for n in ("quotaflow", "google-genai", "redis", "httpx")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=(*SCENARIOS, "all"))
    parser.add_argument(
        "--period", type=float, default=Settings.period, help="seconds of the compressed minute"
    )
    parser.add_argument("--periods", type=int, default=Settings.periods)
    parser.add_argument("--procs", type=int, default=Settings.procs, help="worker processes")
    parser.add_argument("--tasks", type=int, default=Settings.tasks, help="tasks per process")
    parser.add_argument("--out", default=str(RESULTS), help="results file ('' to skip)")
    args = parser.parse_args(argv)
    s = Settings(period=args.period, periods=args.periods, procs=args.procs, tasks=args.tasks)
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = [run(n, s) for n in names]
    text = table(results)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(machine() | {"results": results, "table": text}, indent=1) + "\n"
        )
        import plots  # benchmarks/plots.py, beside this script

        if Path(args.out).resolve().parent == plots.RESULTS:
            for path in plots.plot("learn"):
                print(f"# wrote {path.name}", file=sys.stderr)
    return 0 if not any(r.get("misses") for r in results) else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        import logging

        import anyio

        logging.basicConfig(
            level=os.environ.get("LEARN_LOG", "WARNING"),
            format="%(created).3f %(name)s %(levelname)s %(message)s",
        )

        anyio.run(_worker, json.loads(sys.argv[2]))
    else:
        raise SystemExit(main())
