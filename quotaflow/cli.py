"""The ``quotaflow`` command.

Subcommands (``quotaflow COMMAND --help`` describes each):
    audit     calls, denials, waits and tokens per agent and model, from audit log files
    demo      prioritized agents share one quota through google-genai and the emulator
    emulator  serve the local Gemini emulator
    gateway   serve the gateway (``--config FILE``); ``gateway token create|list|revoke``
    status    limits, use, waiters and agents' shares of a fleet (Redis) right now, or live
    tiers     show a shipped tier table and where each figure comes from

Exit codes: 0 success, 1 failure (an error, or a demo that saw a 429), 2 usage (bad arguments).
Every error is printed as one line naming the fix; ``QUOTAFLOW_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _version() -> str:
    from quotaflow import __version__

    return __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive; give a number above 0")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive, finite number")
    return value


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- tiers -----------------------------------------------------------------------------------
def _tiers(args: argparse.Namespace) -> int:
    import time
    from datetime import datetime, timezone

    from quotaflow.quotas.learned import GEMINI_DIMENSIONS, LearnedCache
    from quotaflow.quotas.tiers import load_tier

    table = load_tier(args.tier)
    now = time.time()
    learned = LearnedCache(args.learned, ttl=float("inf")).load(now) if args.learned else {}
    prefix = f"{args.project}/"
    names = sorted(set(table.models) | {k[len(prefix) :] for k in learned if k.startswith(prefix)})
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for name in names:
        m = table.models.get(name)
        figures = learned.get(prefix + name, {})
        row: dict[str, Any] = {"model": name, "source": (m.source or "") if m else "learned"}
        cells = []
        for dim in GEMINI_DIMENSIONS:
            value = getattr(m, dim) if m is not None else None
            fig = figures.get(dim)
            if fig is not None and fig.kind == "learned" and (value is None or fig.amount < value):
                cells.append(f"{fig.amount}*")
                row[dim] = {"amount": fig.amount, "origin": "learned", "quota_id": fig.quota_id}
                when = datetime.fromtimestamp(fig.at, timezone.utc).strftime("%Y-%m-%d %H:%M")
                notes.append(
                    f"  {name} {dim} = {fig.amount}: learned from {fig.quota_id or '?'}"
                    f" at {when} UTC"
                )
            elif fig is not None and fig.kind == "adaptive" and value is None:
                cells.append(f"~{fig.amount}")
                row[dim] = {"amount": fig.amount, "origin": "adaptive"}
                notes.append(f"  {name} {dim} ~ {fig.amount}: adaptive (429s named no figure)")
            else:
                cells.append("-" if value is None else str(value))
                row[dim] = None if value is None else {"amount": value, "origin": "table"}
        row["cells"] = cells
        rows.append(row)
    if args.json:
        _print_json(
            {
                "tier": args.tier,
                "models": [{k: v for k, v in r.items() if k != "cells"} for r in rows],
                "sources": {
                    sid: {"url": src.url, "read": str(src.read)}
                    for sid, src in sorted(table.sources.items())
                },
            }
        )
        return EXIT_OK
    print(f"{'model':<34} {'rpm':>8} {'tpm':>12} {'rpd':>9} {'tpd':>11}  source")
    for r in rows:
        print(
            f"{r['model']:<34} "
            + " ".join(f"{c:>{w}}" for c, w in zip(r["cells"], (8, 12, 9, 11), strict=True))
            + f"  {r['source']}"
        )
    if notes:
        print("\n* learned from the server, ~ adaptive:")
        print("\n".join(notes))
    print("\nsources:")
    for sid, src in sorted(table.sources.items()):
        print(f"  {sid}: {src.url} (read {src.read})")
    return EXIT_OK


# --- audit -----------------------------------------------------------------------------------
def _audit(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from quotaflow.agents.report import format_table, read_records, summarize

    rows = summarize(read_records(args.files))
    if args.json:
        _print_json([asdict(r) for r in rows])
    else:
        print(format_table(rows))
    return EXIT_OK


# --- demo ------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    import io

    import anyio

    from quotaflow.demo import run_demo

    out: Any = io.StringIO() if args.json else None
    summary = anyio.run(
        lambda: run_demo(
            period=args.period,
            rpm=args.rpm,
            tpm=args.tpm,
            agents=args.agents,
            calls=args.calls,
            out=out,
        )
    )
    if args.json:
        _print_json(summary)
    return EXIT_OK if summary["server_429s"] == 0 else EXIT_FAILURE


# --- emulator --------------------------------------------------------------------------------
def _emulator(args: argparse.Namespace) -> int:
    from quotaflow.emulator.cli import run_parsed

    return run_parsed(args)


# --- gateway ---------------------------------------------------------------------------------
def _gateway(args: argparse.Namespace, rest: Sequence[str] = ()) -> int:
    from quotaflow.gateway.cli import run_cli

    return run_cli(list(rest))


# --- status ----------------------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    from quotaflow.observe.status import RedisReader, render_text, watch

    reader = RedisReader(
        args.redis,
        namespace=args.namespace,
        tier=args.tier,
        minute_seconds=args.minute_seconds,
        day_seconds=args.day_seconds,
    )
    try:
        if args.watch:
            return watch(reader, interval=args.interval, once=args.once)
        snap = reader.snapshot()
    finally:
        reader.close()
    if args.json:
        _print_json(snap)
    else:
        print(render_text(snap))
    return EXIT_OK


# --- the parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``quotaflow`` argument parser (one subparser per command)."""
    from quotaflow.quotas.tiers import SHIPPED_TIERS

    parser = argparse.ArgumentParser(
        prog="quotaflow",
        description="Run many AI agents against Gemini's quotas without tripping them.",
        epilog="exit codes: 0 success, 1 failure, 2 usage. "
        "Run 'quotaflow COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"quotaflow {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_: str, description: str, run: Callable[..., int]) -> Any:
        p = sub.add_parser(name, help=help_, description=description)
        p.set_defaults(run=run)
        return p

    p = command(
        "audit",
        "summarize audit log files per agent and model",
        "Read the JSON lines files an AuditLog writes and print calls, denials, errors, 429s, "
        "retries, waits and tokens per (agent, model).",
        _audit,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="an audit log (JSON lines)")
    p.add_argument("--json", action="store_true", help="print the totals as JSON")

    p = command(
        "demo",
        "prioritized agents share one quota (google-genai + the emulator)",
        "Run agents at three priorities against the local emulator through the real "
        "google-genai SDK: a live view per priority on a terminal, then waits per priority and "
        "the emulator's verdict (exit 1 if the server answered any 429).",
        _demo,
    )
    p.add_argument("--period", type=_positive_float, default=2.0, help="seconds per minute")
    p.add_argument("--rpm", type=_positive_int, default=12, help="requests per period")
    p.add_argument("--tpm", type=_positive_int, default=6_000, help="input tokens per period")
    p.add_argument("--agents", type=_positive_int, default=6, help="agents per priority level")
    p.add_argument("--calls", type=_positive_int, default=5, help="calls per agent")
    p.add_argument("--json", action="store_true", help="print only the summary, as JSON")

    from quotaflow.emulator.cli import add_arguments

    p = command(
        "emulator",
        "serve the local Gemini emulator",
        "Serve a local Gemini Developer API emulator with Gemini's quotas (real HTTP).",
        _emulator,
    )
    add_arguments(p)

    command(
        "gateway",
        "serve the gateway; 'gateway token' manages agent tokens",
        "Serve Gemini's REST surface to agents holding gateway tokens (the gateway alone holds "
        "the key): quotaflow gateway --config gateway.toml; quotaflow gateway token "
        "create|list|revoke --config gateway.toml.",
        _gateway,
    )

    p = command(
        "status",
        "a fleet's limits, use, waiters and agents right now (or --watch)",
        "Read the shared state of a fleet in Redis without changing it: per model and "
        "dimension the limit and where it comes from, used, free, held in flight, paused "
        "until; waiters per priority; per agent its share and budget.",
        _status,
    )
    p.add_argument(
        "--redis",
        required=True,
        metavar="URL",
        help="the fleet's Redis URL (as given to Limiter(backend=...))",
    )
    p.add_argument(
        "--namespace", help="the backend's key prefix (default: the URL's or 'quotaflow')"
    )
    p.add_argument(
        "--tier",
        default="free",
        choices=SHIPPED_TIERS,
        help="the tier the fleet runs (names the origin of figures and the calendar days)",
    )
    p.add_argument(
        "--minute-seconds", type=_positive_float, default=60.0, help="the fleet's minute_seconds"
    )
    p.add_argument("--day-seconds", type=_positive_float, help="the fleet's day_seconds")
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON")
    p.add_argument("--watch", action="store_true", help="refresh a live view until Ctrl-C")
    p.add_argument(
        "--interval", type=_positive_float, default=1.0, help="seconds between refreshes"
    )
    p.add_argument("--once", action="store_true", help=argparse.SUPPRESS)

    p = command(
        "tiers",
        "show a shipped tier table",
        "Show a shipped tier table: each model's figures and where each comes from (the "
        "table's source, or learned from a 429 when --learned names a cache file).",
        _tiers,
    )
    p.add_argument("tier", nargs="?", default="free", choices=SHIPPED_TIERS)
    p.add_argument(
        "--learned",
        metavar="FILE",
        help="a learned-limits cache file (Limiter(learned_cache=...)): its figures are shown "
        "with a * and listed with their quotaId and age",
    )
    p.add_argument("--project", default="default", help="the project of --learned")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    return parser


def _one_line(exc: BaseException) -> str:
    """An error as one line: pydantic's errors name each field; others their message."""
    errors: Any = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        try:
            parts = [
                f"{'.'.join(str(x) for x in e.get('loc', ())) or 'value'}: {e.get('msg', '')}"
                for e in errors()
            ]
        except Exception:  # pragma: no cover - a foreign ValidationError
            parts = []
        if parts:
            return "; ".join(parts)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _fix(exc: BaseException) -> str:
    from quotaflow.errors import QuotaflowError

    if isinstance(exc, OSError) and not isinstance(exc, QuotaflowError):
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            return "; check the path"
        if isinstance(exc, ConnectionError):
            return "; check the URL and that the server is running"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``quotaflow`` command; returns the exit code (0 ok, 1 failure, 2 usage)."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["gateway"]:  # its own parser: serve, and token create|list|revoke
        try:
            return _gateway(argparse.Namespace(), given[1:])
        except ImportError as exc:
            print(
                f"quotaflow gateway: {exc.name or exc} is not installed: "
                "pip install 'quotaflow[gateway]'",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    parser = build_parser()
    try:
        args = parser.parse_args(given)
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return EXIT_USAGE
    prog = f"quotaflow {args.command}"
    try:
        return int(run(args))
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "watch", False) else 130
    except SystemExit as exc:  # a command that stops with a message (a missing extra)
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print(f"{prog}: {exc.code}", file=sys.stderr)
        return EXIT_FAILURE
    except ImportError as exc:
        missing = exc.name or "a module"
        print(
            f"{prog}: {missing} is not installed; install the extra this command needs "
            "(pip install 'quotaflow[demo]', '[emulator]', '[redis]' or '[status]')",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except Exception as exc:  # every other error: one line, never a traceback
        if os.environ.get("QUOTAFLOW_DEBUG"):
            raise
        print(f"{prog}: {_one_line(exc)}{_fix(exc)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
