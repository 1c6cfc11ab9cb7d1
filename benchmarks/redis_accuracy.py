"""Accuracy on one Redis: 4 processes x 16 tasks against a limit of L per short period.

Run: ``python benchmarks/redis_accuracy.py [--limit 50] [--period 1] [--periods 8]``
(``REDIS_URL`` to use your server; otherwise a private ``redis-server`` is started).

Every admitted call reads Redis ``TIME`` right after its grant, as a server would count it.
Reported per limiter: the largest count in any rolling window of the period divided by L
(1.00 is the target: more means the server would answer 429) and the share of the limit used
over whole periods from the first grant (target >= 99%).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from redis_throughput import LABELS, Server, run_cell


def max_in_window(stamps: list[float], period: float) -> int:
    """The most stamps in any half-open window ``[t, t + period)``."""
    pts = sorted(stamps)
    best = j = 0
    for i in range(len(pts)):
        while pts[i] - pts[j] >= period:
            j += 1
        best = max(best, i - j + 1)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--period", type=float, default=1.0)
    ap.add_argument("--periods", type=int, default=8)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--tasks", type=int, default=16)
    args = ap.parse_args()
    params = {"limit": args.limit, "period": args.period, "record": True}
    seconds = args.period * (args.periods + 1)
    server = Server()
    rows = []
    try:
        for name in ("quotaflow", "limits_moving", "pyrate"):
            _, events = run_cell(name, server.url, args.procs, args.tasks, seconds, params)
            stamps = [t for t, _ in events]
            worst = max_in_window(stamps, args.period) / args.limit
            t0 = min(stamps)
            used = sum(1 for t in stamps if t < t0 + args.periods * args.period)
            rows.append((name, worst, used / (args.limit * args.periods)))
    finally:
        server.stop()
    print(
        f"# Redis accuracy, {datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores: {args.procs} processes x {args.tasks} tasks, "
        f"L = {args.limit} per {args.period:g} s, {args.periods} periods"
    )
    print("\n| limiter | max in any window / L | share of the limit used |")
    print("|---|---|---|")
    for name, worst, share in rows:
        print(f"| {LABELS[name]} | {worst:.2f} | {share:.1%} |")


if __name__ == "__main__":
    main()
