"""The demo: prioritized agents share one model's quota through the real google-genai SDK.

Everything runs on this machine: quotaflow's Gemini emulator is served on a free loopback port
(real HTTP), with a compressed "minute" so the demo takes seconds. Agents at three priorities
call ``generate_content`` through :func:`quotaflow.transports.genai_http_options`; on a
terminal a live view (rich) shows each priority's progress in place, otherwise a plain line a
second; the summary shows waits per priority and the emulator's verdict: 429s seen
by the server and the share of the binding limit used.

Run: ``quotaflow demo`` (options: ``--period``, ``--rpm``, ``--tpm``, ``--agents``, ``--calls``).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from quotaflow.context import priority
from quotaflow.limiter import Limiter
from quotaflow.limits import RPM, TPM

__all__ = ["main", "run_demo"]

MODEL = "gemini-2.5-flash"
LEVELS = ("high", "normal", "low")


@dataclass
class _Tally:
    done: int = 0
    total: int = 0
    waits: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0


async def run_demo(
    *,
    period: float = 2.0,
    rpm: int = 12,
    tpm: int = 6_000,
    agents: int = 6,
    calls: int = 5,
    seed: int = 1,
    out: Any = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary (also printed to ``out``)."""
    try:
        from google import genai
        from google.genai import types

        from quotaflow.emulator import EmulatorConfig, ModelConfig, serve
        from quotaflow.transports import genai_http_options
    except ImportError as exc:
        raise SystemExit(
            f"the demo needs the 'demo' extra ({exc.name} is missing): "
            "pip install 'quotaflow[demo]'"
        ) from exc
    out = out or sys.stdout
    rng = random.Random(seed)
    config = EmulatorConfig(
        minute_seconds=period,
        models=[ModelConfig(name=MODEL, rpm=rpm, tpm=tpm, rpd=None, tpd=None)],
    )
    limiter = Limiter(None, quotas={MODEL: [RPM(rpm, period), TPM(tpm, period)]})
    tallies = {level: _Tally(total=agents * calls) for level in LEVELS}
    started = time.monotonic()
    with serve(config) as served:
        client = genai.Client(
            api_key="test-key",
            http_options=genai_http_options(
                limiter, base_url=served.base_url, api_version="v1beta"
            ),
        )

        async def agent(level: str, n: int) -> None:
            tally = tallies[level]
            for _ in range(calls):
                words = rng.randint(20, max(21, tpm // (2 * rpm)))
                prompt = f"[{level} agent {n}] " + " ".join(["token"] * words)
                t0 = time.monotonic()
                try:
                    with priority(level):  # carried to the transport by a context variable
                        resp = await client.aio.models.generate_content(
                            model=MODEL,
                            contents=prompt,
                            config=types.GenerateContentConfig(max_output_tokens=32),
                        )
                except Exception:
                    tally.errors += 1
                    continue
                tally.waits.append(time.monotonic() - t0)
                usage = resp.usage_metadata
                tally.tokens += (usage.prompt_token_count or 0) if usage else 0
                tally.done += 1

        live = _live_view(out, tallies)

        async def progress(stop: anyio.Event) -> None:
            while not stop.is_set():
                waiting = await limiter.waiting(MODEL)
                elapsed = time.monotonic() - started
                if live is not None:
                    live.update(elapsed, waiting)
                else:
                    parts = "  ".join(f"{lv}: {t.done:>2}/{t.total}" for lv, t in tallies.items())
                    print(f"  t={elapsed:5.1f}s  {parts}  waiting: {waiting:>2}", file=out)
                with anyio.move_on_after(0.1 if live is not None else 1.0):
                    await stop.wait()
            if live is not None:
                live.update(time.monotonic() - started, 0)
                live.stop()

        print(
            f"quotaflow demo: {3 * agents} agents x {calls} calls on {MODEL}, limits "
            f"{rpm} requests and {tpm} input tokens per {period:g}s window (emulated)",
            file=out,
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress, stop)
            async with anyio.create_task_group() as work:
                for level in LEVELS:
                    for n in range(agents):
                        work.start_soon(agent, level, n)
            stop.set()
        await client.aio.aclose()
        client.close()
        stats = served.emulator.stats()
    elapsed = time.monotonic() - started
    model_stats = stats["models"][MODEL]
    summary = _summarize(tallies, model_stats, rpm, tpm, period, elapsed)
    _print_summary(summary, out)
    return summary


class _Live:
    """A progress bar per priority and the line's length, redrawn in place (rich; a terminal
    only)."""

    def __init__(self, out: Any, tallies: dict[str, _Tally]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.tallies = tallies
        self.live = Live(
            self._view(0.0, 0), console=Console(file=out, force_terminal=True), auto_refresh=False
        )
        self.live.start()

    def _view(self, elapsed: float, waiting: int) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column()
        for lv, t in self.tallies.items():
            mean = sum(t.waits) / len(t.waits) if t.waits else 0.0
            note = f"mean wait {mean:5.2f}s" + (f"  errors {t.errors}" if t.errors else "")
            bar = ProgressBar(total=max(1, t.total), completed=t.done, width=30)
            table.add_row(f"{lv:<8}", bar, f"{t.done:>3}/{t.total}", note)
        return Group(table, Text(f"t={elapsed:5.1f}s  waiting in line: {waiting}", style="dim"))

    def update(self, elapsed: float, waiting: int) -> None:
        self.live.update(self._view(elapsed, waiting), refresh=True)

    def stop(self) -> None:
        self.live.stop()


def _live_view(out: Any, tallies: dict[str, _Tally]) -> _Live | None:
    """The live view when ``out`` is a terminal and rich is installed, else ``None`` (plain
    lines, one a second)."""
    if not bool(getattr(out, "isatty", lambda: False)()):
        return None
    try:
        return _Live(out, tallies)
    except ImportError:
        return None


def _summarize(
    tallies: dict[str, _Tally],
    model_stats: dict[str, Any],
    rpm: int,
    tpm: int,
    period: float,
    elapsed: float,
) -> dict[str, Any]:
    per_level = {}
    for level, t in tallies.items():
        waits = sorted(t.waits) or [0.0]
        per_level[level] = {
            "calls": t.done,
            "errors": t.errors,
            "mean_wait_s": round(statistics.fmean(waits), 3),
            "p95_wait_s": round(waits[min(len(waits) - 1, int(0.95 * len(waits)))], 3),
            "input_tokens": t.tokens,
        }
    rejected_total = int(model_stats.get("rejected", 0))
    # Under a rolling window, a run of T seconds can admit at most L x (floor(T/P) + 1).
    windows = int(elapsed // period) + 1
    used_req = model_stats.get("requests_admitted", 0) / (rpm * windows)
    used_tok = model_stats.get("tokens_admitted", 0) / (tpm * windows)
    return {
        "per_priority": per_level,
        "server_429s": rejected_total,
        "max_requests_in_any_window": model_stats.get("max_requests_in_window"),
        "max_tokens_in_any_window": model_stats.get("max_input_tokens_in_window"),
        "limits": {"rpm": rpm, "tpm": tpm, "period_s": period},
        "binding_limit_used": round(max(used_req, used_tok), 3),
        "elapsed_s": round(elapsed, 2),
    }


def _print_summary(s: dict[str, Any], out: Any) -> None:
    print("\n  priority  calls  mean wait  p95 wait  input tokens", file=out)
    for level, row in s["per_priority"].items():
        print(
            f"  {level:<8}  {row['calls']:>5}  {row['mean_wait_s']:>8.2f}s  "
            f"{row['p95_wait_s']:>7.2f}s  {row['input_tokens']:>12}",
            file=out,
        )
    lim = s["limits"]
    print(
        f"\n  emulator verdict: {s['server_429s']} requests rejected with 429; at most "
        f"{s['max_requests_in_any_window']}/{lim['rpm']} requests and "
        f"{s['max_tokens_in_any_window']}/{lim['tpm']} input tokens in any "
        f"{lim['period_s']:g}s window; binding limit used: {s['binding_limit_used']:.0%} "
        f"over {s['elapsed_s']:.1f}s",
        file=out,
    )


def main(argv: list[str] | None = None) -> int:
    """``quotaflow demo`` entry point (see ``quotaflow demo --help``)."""
    from quotaflow.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])
