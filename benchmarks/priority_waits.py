"""Waits per priority under overload: three priorities share one model's quota.

Tasks at ``high``, ``normal`` and ``low`` priority (``--tasks`` each) call ``generateContent``
through :class:`quotaflow.transports.QuotaTransport` against the emulator (real HTTP on
loopback), for ``--periods`` windows of ``--period`` seconds with ``--rpm`` requests per window:
together they ask for about ``--overload`` times the limit. Recorded per priority: calls,
the wait for the permit (``CallInfo.waited``: p50, p95) and the server's 429s (target 0). The
targets, as ratios of one run: high's p50 wait at most low's, normal's between; no priority
starves (each one's calls > 0, as aging lets low ones through).

Writes ``benchmarks/results/priority_waits.json`` (date, machine, versions, settings, waits,
the table) and, with the ``bench`` extra, ``priority_waits-waits.png``.

Run: ``python benchmarks/priority_waits.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plots

from quotaflow import RPM, Limiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, serve
from quotaflow.transports import QuotaTransport

MODEL = "gemini-2.5-flash"
LEVELS = ("high", "normal", "low")
RESULTS = Path(__file__).resolve().parent / "results" / "priority_waits.json"


async def run(rpm: int, period: float, periods: int, tasks: int, overload: float) -> dict[str, Any]:
    config = EmulatorConfig(
        minute_seconds=period,
        models=[ModelConfig(name=MODEL, rpm=rpm, tpm=10_000_000, rpd=None, tpd=None)],
    )
    # aging: a level's head start is 2 windows, so low still gets through under overload
    limiter = Limiter(None, quotas={MODEL: [RPM(rpm, period)]})
    waits: dict[str, list[float]] = {lv: [] for lv in LEVELS}
    # each task paces itself so that all of them ask for `overload` x the limit
    gap = period * 3 * tasks / (rpm * overload)
    body = {"contents": [{"parts": [{"text": "hello " * 20}]}]}
    with serve(config) as served:
        async with httpx.AsyncClient(
            transport=QuotaTransport(limiter, max_429_retries=0),
            base_url=served.base_url,
            headers={"x-goog-api-key": "test-key"},
            timeout=60,
        ) as client:
            stop_at = anyio.current_time() + periods * period

            async def task(level: str) -> None:
                while anyio.current_time() < stop_at:
                    started = anyio.current_time()
                    r = await client.post(
                        f"/v1beta/models/{MODEL}:generateContent",
                        json=body,
                        headers={"x-quotaflow-priority": level, "x-quotaflow-timeout": "600"},
                    )
                    if r.status_code == 200:
                        waits[level].append(r.extensions["quotaflow"].waited)
                    await anyio.sleep(max(0.0, gap - (anyio.current_time() - started)))

            async with anyio.create_task_group() as tg:
                for level in LEVELS:
                    for _ in range(tasks):
                        tg.start_soon(task, level)
        stats = served.emulator.stats()["models"][MODEL]
    return {"waits": waits, "rejected": int(stats.get("rejected", 0))}


def _q(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def table(result: dict[str, Any], settings: dict[str, Any]) -> str:
    head = (
        f"| {settings['tasks']} tasks per priority, {settings['rpm']} requests per "
        f"{settings['period']:g} s, {settings['overload']:g}x overload, {settings['periods']} "
        "windows | calls | p50 wait | p95 wait | mean wait |\n| --- | ---: | ---: | ---: | ---: |"
    )
    rows = []
    for lv, w in result["waits"].items():
        mean = statistics.fmean(w) if w else 0.0
        rows.append(
            f"| {lv} | {len(w)} | {_q(w, 0.5):.2f} s | {_q(w, 0.95):.2f} s | {mean:.2f} s |"
        )
    rows.append(f"| 429s at the server | {result['rejected']} | | | |")
    return head + "\n" + "\n".join(rows)


def misses(result: dict[str, Any]) -> list[str]:
    w = result["waits"]
    out = []
    if result["rejected"]:
        out.append(f"{result['rejected']} 429s (target 0)")
    if not all(w[lv] for lv in LEVELS):
        out.append("a priority got no call through")
    elif not _q(w["high"], 0.5) <= _q(w["normal"], 0.5) <= _q(w["low"], 0.5):
        out.append("p50 waits are not ordered high <= normal <= low")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the results and the plot; exit 1 on a missed target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpm", type=int, default=20, help="requests per window")
    parser.add_argument("--period", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--periods", type=int, default=10, help="windows to run")
    parser.add_argument("--tasks", type=int, default=6, help="tasks per priority")
    parser.add_argument("--overload", type=float, default=2.0, help="demand over the limit")
    parser.add_argument("--out", default=str(RESULTS), help="results file ('' to skip)")
    args = parser.parse_args(argv)
    settings = {k: getattr(args, k) for k in ("rpm", "period", "periods", "tasks", "overload")}
    result = anyio.run(lambda: run(**settings))
    text = table(result, settings)
    print(text)
    missed = misses(result)
    for line in missed:
        print(f"# MISSED: {line}", file=sys.stderr)
    if args.out:
        from importlib.metadata import version

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "benchmark": "benchmarks/priority_waits.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "versions": {n: version(n) for n in ("quotaflow", "httpx")},
            "settings": settings,
            "waits": {lv: [round(x, 4) for x in w] for lv, w in result["waits"].items()},
            "rejected": result["rejected"],
            "misses": missed,
            "table": text,
        }
        out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        if out.parent == plots.RESULTS:
            for path in plots.plot("priority_waits"):
                print(f"# wrote {path.name}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
