"""Accuracy on one Redis: 4 processes x 16 tasks against a limit of L per short period.

Run: ``python benchmarks/redis_accuracy.py [--limit 50] [--period 1] [--periods 8]``
(``REDIS_URL`` to use your server; otherwise a private ``redis-server`` is started).

Every admitted call reads Redis ``TIME`` right after its grant, as a server would count it.
Reported per limiter: the largest count in any rolling window of the period divided by L
(1.00 is the target: more means the server would answer 429) and the share of the limit used
over whole periods from the first grant (target >= 99%). The figures go to
``benchmarks/results/redis_accuracy.json`` (``--out ''`` to skip) with
``redis_accuracy-windows.png`` beside it (the ``bench`` extra): per limiter the grants of all
processes per window of one period from the first grant, and the most in any rolling window
starting in it, against the limit.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from redis_throughput import LABELS, Server, run_cell

RESULTS = Path(__file__).resolve().parent / "results" / "redis_accuracy.json"


def max_in_window(stamps: list[float], period: float) -> int:
    """The most stamps in any half-open window ``[t, t + period)``."""
    pts = sorted(stamps)
    best = j = 0
    for i in range(len(pts)):
        while pts[i] - pts[j] >= period:
            j += 1
        best = max(best, i - j + 1)
    return best


def per_window(stamps: list[float], period: float, periods: int) -> tuple[list[int], list[int]]:
    """Per window of ``period`` from the first stamp: the stamps in it, and the most stamps in
    any rolling window ``[t, t + period)`` whose ``t`` (a stamp) falls in it."""
    pts = sorted(stamps)
    t0 = pts[0]
    counts, rolling = [0] * periods, [0] * periods
    for i, t in enumerate(pts):
        k = int((t - t0) // period)
        if k >= periods:
            continue
        counts[k] += 1
        rolling[k] = max(rolling[k], bisect.bisect_left(pts, t + period) - i)
    return counts, rolling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--periods", type=int, default=8)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--out", default=str(RESULTS), help="results file ('' to skip)")
    args = ap.parse_args()
    params = {"limit": args.limit, "period": args.period, "record": True}
    seconds = args.period * (args.periods + 1)
    server = Server()
    rows = []
    series: dict[str, tuple[list[int], list[int]]] = {}
    try:
        for name in ("quotaflow", "limits_moving", "pyrate"):
            _, events = run_cell(name, server.url, args.procs, args.tasks, seconds, params)
            stamps = [t for t, _ in events]
            worst = max_in_window(stamps, args.period) / args.limit
            t0 = min(stamps)
            used = sum(1 for t in stamps if t < t0 + args.periods * args.period)
            rows.append((name, worst, used / (args.limit * args.periods)))
            series[name] = per_window(stamps, args.period, args.periods)
    finally:
        server.stop()
    print(
        f"# Redis accuracy, {datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores: {args.procs} processes x {args.tasks} tasks, "
        f"L = {args.limit} per {args.period:g} s, {args.periods} periods"
    )
    table = [
        f"| {args.procs} processes x {args.tasks} tasks, L = {args.limit} per {args.period:g} s, "
        f"{args.periods} periods | largest count in any window / L | share of L used |",
        "| --- | ---: | ---: |",
    ]
    for name, worst, share in rows:
        label = f"**{LABELS[name]}**" if name == "quotaflow" else LABELS[name]
        table.append(f"| {label} | {worst:.2f} | {share:.1%} |")
    print("\n" + "\n".join(table))
    if args.out:
        from fleet_faults import machine  # benchmarks/, beside this script

        data = {
            "benchmark": "benchmarks/redis_accuracy.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {
                "limit": args.limit,
                "period": args.period,
                "periods": args.periods,
                "procs": args.procs,
                "tasks": args.tasks,
            },
            "limiters": [
                {
                    "name": name,
                    "label": LABELS[name],
                    "max_over_limit": worst,
                    "share_used": share,
                    "per_window": series[name][0],
                    "rolling_max_per_window": series[name][1],
                }
                for name, worst, share in rows
            ],
            "table": "\n".join(table),
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        import plots  # benchmarks/plots.py

        if out.resolve().parent == plots.RESULTS:
            for png in plots.plot("redis_accuracy"):
                print(f"# wrote {png.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
