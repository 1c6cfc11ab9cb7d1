"""PNG plots of the benchmarks' results files (needs the ``bench`` extra: matplotlib).

Each benchmark calls :func:`plot` after writing ``benchmarks/results/<name>.json``; the PNGs go
next to it as ``<name>-<what>.png`` and ``docs/benchmarks.md`` shows them:

* ``fleet_faults-windows.png``: requests admitted per window against the limit, per scenario;
* ``fleet_faults-timeline.png``: use over time around the fault, per scenario;
* ``learn-windows.png``: use and 429s per window, per scenario;
* ``priority_waits-waits.png``: the distribution of waits per priority.

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


def _grid(plt: Any, n: int, width: float = 4.0, height: float = 2.6) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
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


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Path]]] = {
    "fleet_faults": _fleet_faults,
    "learn": _learn,
    "priority_waits": _priority_waits,
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
