"""PNG plots of the benchmarks' results files (needs the ``bench`` extra: matplotlib).

Each benchmark calls :func:`plot` after writing ``benchmarks/results/<name>.json``; the PNGs go
next to it as ``<name>-<what>.png`` and ``docs/benchmarks.md`` shows them:

* ``fleet_faults-windows.png``: requests admitted per window against the limit, per scenario;
* ``fleet_faults-timeline.png``: use over time around the fault, per scenario;
* ``learn-windows.png``: use and 429s per window, per scenario;
* ``priority_waits-waits.png``: the distribution of waits per priority;
* ``goodput-windows.png``: requests and input tokens the server admitted per window against
  the limits, per client;
* ``redis_accuracy-windows.png``: grants per window across the processes against the limit,
  and the most in any rolling window, per limiter;
* ``overhead-transport.png``: p50/p99 of a bare call and of the same call through quotaflow;
* ``overhead-redis.png``: quotaflow's cost per call on Redis against the raw floor, per cell.

Run: ``python benchmarks/plots.py [NAME ...]`` re-draws from the results files (all by default).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _grid(
    plt: Any, n: int, width: float = 4.0, height: float = 2.6, cols: int = 3
) -> tuple[Any, list[Any]]:
    cols = min(n, cols)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _fleet_faults(data: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    scenarios = list(data["scenarios"].values())
    written = []
    fig, axes = _grid(plt, len(scenarios))
    for ax, s in zip(axes, scenarios, strict=True):
        reqs = s["windows"]["requests"]
        limit = s["settings"]["rpm"]
        ax.bar(range(1, len(reqs) + 1), reqs, color="#4c72b0", label="admitted")
        ax.axhline(limit, color="#c44e52", linestyle="--", label=f"limit {limit}")
        if s.get("fault_window") is not None:  # 0-based: the bars are numbered from 1
            ax.axvline(s["fault_window"] + 0.5, color="#dd8452", linestyle=":", label="fault")
        ax.set_title(s["scenario"])
        ax.set_xlabel("window")
        ax.set_ylabel("requests")
        ax.set_ylim(0, limit * 1.25)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Fleet faults: requests admitted per window against the limit")
    fig.tight_layout()
    path = out / "fleet_faults-windows.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)

    fig, axes = _grid(plt, len(scenarios))
    for ax, s in zip(axes, scenarios, strict=True):
        tl = s["timeline"]
        xs = [tl["from_fault"] + i * tl["bin_seconds"] for i in range(len(tl["requests"]))]
        ax.step(xs, tl["requests"], where="post", color="#55a868")
        ax.axvline(0.0, color="#dd8452", linestyle=":", label="fault")
        ax.set_title(s["scenario"])
        ax.set_xlabel("seconds from the fault")
        ax.set_ylabel(f"requests / {tl['bin_seconds']:g} s")
    axes[0].legend(fontsize=7)
    fig.suptitle("Fleet faults: admissions over time around the fault")
    fig.tight_layout()
    path = out / "fleet_faults-timeline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    return written


def _learn(data: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    runs = [r for r in data["results"] if r.get("use")]
    if not runs:
        return []
    fig, axes = _grid(plt, len(runs))
    for ax, r in zip(axes, runs, strict=True):
        use = [u * 100 for u in r["use"]]
        xs = range(1, len(use) + 1)
        ax.bar(xs, use, color="#4c72b0", label="use of the limit (%)")
        ax.axhline(100, color="#c44e52", linestyle="--", label="limit")
        ax.set_ylim(0, 130)
        ax.set_xlabel("window")
        ax.set_ylabel("% of the limit")
        twin = ax.twinx()
        twin.plot(xs, r.get("rejected_per_window", [0] * len(use)), "o-", color="#dd8452")
        twin.set_ylabel("429s", color="#dd8452")
        ax.set_title(r["scenario"])
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Learned limits: use and 429s per window")
    fig.tight_layout()
    path = out / "learn-windows.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def _priority_waits(data: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    waits = data["waits"]
    levels = list(waits)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.boxplot([waits[lv] for lv in levels], whis=(5, 95), showfliers=False)
    ax.set_xticks(range(1, len(levels) + 1), levels)
    ax.set_ylabel("wait for the permit (s)")
    ax.set_title("Waits per priority (boxes p25-p75, whiskers p5-p95)", fontsize=10)
    fig.tight_layout()
    path = out / "priority_waits-waits.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def _goodput(data: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    clients = [c for c in data["clients"] if c.get("windows", {}).get("requests")]
    if not clients:
        return []
    load = data["settings"]
    fig, axes = _grid(plt, len(clients), width=5.0, height=3.0, cols=2)
    for ax, c in zip(axes, clients, strict=True):
        reqs = c["windows"]["requests"]
        toks = c["windows"]["tokens"]
        xs = range(1, len(reqs) + 1)
        ax.bar(xs, reqs, color="#4c72b0", label="requests admitted")
        ax.axhline(load["rpm"], color="#c44e52", linestyle="--", label=f"RPM {load['rpm']}")
        ax.set_ylim(0, load["rpm"] * 1.3)
        ax.set_xlabel("window")
        ax.set_ylabel("requests")
        twin = ax.twinx()
        twin.plot(xs, toks, "o-", color="#55a868", markersize=3, label="input tokens")
        twin.axhline(load["tpm"], color="#55a868", linestyle=":", label=f"TPM {load['tpm']}")
        twin.set_ylim(0, load["tpm"] * 1.3)
        twin.set_ylabel("input tokens", color="#55a868")
        ax.set_title(f"{c['name']}: {c['rejected']} 429s", fontsize=10)
        if ax is axes[0]:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = twin.get_legend_handles_labels()
            fig.legend(h1 + h2, l1 + l2, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("Goodput: what the server admitted per window against the limits")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = out / "goodput-windows.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def _redis_accuracy(data: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    rows = [r for r in data["limiters"] if r.get("per_window")]
    if not rows:
        return []
    limit = data["settings"]["limit"]
    top = max([limit, *(max(r["rolling_max_per_window"]) for r in rows)]) * 1.15
    fig, axes = _grid(plt, len(rows), width=4.2, height=3.0)
    for ax, r in zip(axes, rows, strict=True):
        xs = range(1, len(r["per_window"]) + 1)
        ax.bar(xs, r["per_window"], color="#4c72b0", label="grants per window")
        ax.plot(
            xs,
            r["rolling_max_per_window"],
            "o-",
            color="#dd8452",
            markersize=3,
            label="most in a rolling window",
        )
        ax.axhline(limit, color="#c44e52", linestyle="--", label=f"limit {limit}")
        ax.set_ylim(0, top)
        ax.set_xlabel("window")
        ax.set_ylabel("grants (all processes)")
        ax.set_title(f"{r['label']}: max {r['max_over_limit']:.2f} x L", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    s = data["settings"]
    fig.suptitle(
        f"Redis accuracy: {s['procs']} processes x {s['tasks']} tasks, "
        f"L = {limit} per {s['period']:g} s"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = out / "redis_accuracy-windows.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def _overhead(data: dict[str, Any], out: Path) -> list[Path]:
    plt = _pyplot()
    written = []
    t = data["transport_us"]
    paths = [("bare httpx call", t["bare"]), ("through quotaflow", t["quotaflow"])]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.38
    for i, (label, color) in enumerate((("p50", "#4c72b0"), ("p99", "#dd8452"))):
        xs = [k + (i - 0.5) * width for k in range(len(paths))]
        vals = [v[i] for _, v in paths]
        bars = ax.bar(xs, vals, width, color=color, label=label)
        ax.bar_label(bars, fmt="%.0f us", fontsize=7)
    ax.set_xticks(range(len(paths)), [p for p, _ in paths])
    ax.set_ylabel("microseconds per call")
    added = data["added_us"]
    ax.set_title(
        f"One generateContent call: quotaflow adds {added[0]:.0f} us p50, {added[1]:.0f} us p99",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    path = out / "overhead-transport.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)

    rates = data.get("redis_ops_per_s")
    if rates:
        cells = data.get("redis_cells") or [f"cell {k + 1}" for k in range(len(rates["floor"]))]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for i, (name, color) in enumerate((("floor", "#8c8c8c"), ("quotaflow", "#4c72b0"))):
            xs = [k + (i - 0.5) * width for k in range(len(cells))]
            vals = [1e6 / r for r in rates[name]]
            label = "raw floor (EVALSHA of return 1)" if name == "floor" else "quotaflow"
            bars = ax.bar(xs, vals, width, color=color, label=label)
            ax.bar_label(bars, fmt="%.0f us", fontsize=7)
        for k, (q, f) in enumerate(zip(rates["quotaflow"], rates["floor"], strict=True)):
            ax.annotate(
                f"{q / f:.0%} of the floor's rate",
                (k, 0),
                xytext=(0, -28),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
        ax.set_xticks(range(len(cells)), [f"{c} (processes x tasks)" for c in cells], fontsize=8)
        ax.set_ylabel("microseconds per call (aggregate)")
        ax.set_title("Redis: acquire + settle against the raw floor", fontsize=10)
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
        fig.tight_layout()
        path = out / "overhead-redis.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Path]]] = {
    "fleet_faults": _fleet_faults,
    "learn": _learn,
    "priority_waits": _priority_waits,
    "goodput": _goodput,
    "redis_accuracy": _redis_accuracy,
    "overhead": _overhead,
}


def plot(name: str, results: Path = RESULTS) -> list[Path]:
    """Draw the PNGs of ``results/<name>.json``; ``[]`` without matplotlib (a note on
    stderr) or for a benchmark that has no plot."""
    draw = PLOTTERS.get(name)
    source = results / f"{name}.json"
    if draw is None or not source.exists():
        return []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            f"# no plots for {name}: pip install 'quotaflow[bench]' (matplotlib)", file=sys.stderr
        )
        return []
    return draw(json.loads(source.read_text(encoding="utf-8")), results)


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(PLOTTERS)
    for name in names:
        if name not in PLOTTERS:
            print(
                f"plots: no plot for {name!r}; choose from {', '.join(PLOTTERS)}", file=sys.stderr
            )
            return 2
        for path in plot(name):
            print(path.relative_to(RESULTS.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
