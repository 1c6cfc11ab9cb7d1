"""The text and live views of a status snapshot: :func:`render_text` and :func:`watch`
(``quotaflow status``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quotaflow.observe.status import RedisReader


__all__ = ["render_text", "watch"]


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def render_text(snap: Mapping[str, Any]) -> str:
    """A snapshot as plain text: a table per model, then agents and budgets."""
    lines = [f"quotaflow status: {snap['source']}"]
    if not snap["models"] and not snap["budgets"]:
        lines.append("  no model in use (no process has configured a scope here yet)")
    for m in snap["models"]:
        waiting = ", ".join(f"{k} {v}" for k, v in m["waiting"].items()) or "none"
        lines.append(f"\n{m['project']}/{m['model']}  waiting: {waiting}")
        lines.append(
            f"  {'dimension':<12} {'limit':>10} {'origin':<10} {'used':>10} {'free':>10} "
            f"{'in flight':>10} {'paused for':>10}"
        )
        for d in m["dimensions"]:
            lines.append(
                f"  {d['name']:<12} {d['limit']:>10} {d['origin']:<10} {d['used']:>10} "
                f"{d['free']:>10} {d['in_flight']:>10} {_fmt(d['paused_for_s']):>10}"
            )
        for agent, a in m["agents"].items():
            share = ", ".join(f"{d['name']} {d['used']}/{d['limit']}" for d in a["dimensions"])
            lines.append(f"  agent {agent}: share {share}; waiting {a['waiting']}")
    for b in snap["budgets"]:
        left = ", ".join(f"{d['name']} {d['free']} of {d['limit']}" for d in b["dimensions"])
        lines.append(f"\nbudget of agent {b['agent']} ({b['project']}): left {left}")
    return "\n".join(lines)


def _rich_view(snap: Mapping[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(f"quotaflow status: {snap['source']}", style="bold")]
    for m in snap["models"]:
        waiting = ", ".join(f"{k} {v}" for k, v in m["waiting"].items()) or "none"
        t = Table(title=f"{m['project']}/{m['model']}  waiting: {waiting}", title_justify="left")
        for col in ("dimension", "limit", "origin", "used", "free", "in flight", "paused for"):
            t.add_column(col, justify="left" if col in ("dimension", "origin") else "right")
        for d in m["dimensions"]:
            t.add_row(
                d["name"],
                str(d["limit"]),
                d["origin"],
                str(d["used"]),
                str(d["free"]),
                str(d["in_flight"]),
                _fmt(d["paused_for_s"]),
            )
        for agent, a in m["agents"].items():
            for d in a["dimensions"]:
                t.add_row(
                    f"{d['name']}@{agent}",
                    str(d["limit"]),
                    "share",
                    str(d["used"]),
                    str(d["free"]),
                    str(d["in_flight"]),
                    f"waiting {a['waiting']}",
                )
        parts.append(t)
    for b in snap["budgets"]:
        left = ", ".join(f"{d['name']} {d['free']} of {d['limit']}" for d in b["dimensions"])
        parts.append(Text(f"budget of agent {b['agent']}: left {left}"))
    if not snap["models"] and not snap["budgets"]:
        parts.append(Text("no model in use yet"))
    parts.append(Text(time.strftime("updated %H:%M:%S  (Ctrl-C to stop)"), style="dim"))
    return Group(*parts)


def watch(reader: RedisReader, *, interval: float = 1.0, once: bool = False) -> int:
    """Refresh a live view of ``reader``'s fleet until Ctrl-C (rich on a terminal when it is
    installed; otherwise the plain table, redrawn). Returns the exit code (0)."""
    try:
        import rich.live  # noqa: F401

        have_rich = True
    except ImportError:
        have_rich = False
    try:
        if have_rich and sys.stdout.isatty():
            from rich.console import Console
            from rich.live import Live

            console = Console()
            with Live(_rich_view(reader.snapshot()), console=console, auto_refresh=False) as live:
                while not once:
                    time.sleep(interval)
                    live.update(_rich_view(reader.snapshot()), refresh=True)
            return 0
        clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
        while True:
            print(clear + render_text(reader.snapshot()), flush=True)
            if once:
                return 0
            time.sleep(interval)
            if not clear:
                print(flush=True)
    except KeyboardInterrupt:
        return 0
