"""The ``quotaflow`` command.

Subcommands:
    audit     calls, denials, waits and tokens per agent and model (``audit FILE [--json]``)
    demo      prioritized agents share one quota through google-genai and the emulator
    emulator  serve the local Gemini emulator (``--port N --config FILE``)
    tiers     show a shipped tier table (``quotaflow tiers tier1``)
"""

from __future__ import annotations

import sys

__all__ = ["main"]

_USAGE = __doc__ or ""


def _tiers(argv: list[str]) -> int:
    import argparse
    import time
    from datetime import datetime, timezone

    from quotaflow._learned import GEMINI_DIMENSIONS, LearnedCache
    from quotaflow.errors import QuotaflowError
    from quotaflow.tiers import SHIPPED_TIERS, load_tier

    parser = argparse.ArgumentParser(
        prog="quotaflow tiers",
        description="Show a shipped tier table: each model's figures and where each comes "
        "from (the table's source, or learned from a 429 when --learned names a cache file).",
    )
    parser.add_argument("tier", nargs="?", default="free", choices=SHIPPED_TIERS)
    parser.add_argument(
        "--learned",
        metavar="FILE",
        help="a learned-limits cache file (Limiter(learned_cache=...)): its figures are shown "
        "with a * and listed with their quotaId and age",
    )
    parser.add_argument("--project", default="default", help="the project of --learned")
    args = parser.parse_args(argv)
    try:
        table = load_tier(args.tier)
    except QuotaflowError as exc:
        print(f"quotaflow tiers: {exc}", file=sys.stderr)
        return 1
    now = time.time()
    learned = LearnedCache(args.learned, ttl=float("inf")).load(now) if args.learned else {}
    prefix = f"{args.project}/"
    print(f"{'model':<34} {'rpm':>8} {'tpm':>12} {'rpd':>9} {'tpd':>11}  source")
    notes: list[str] = []
    names = sorted(set(table.models) | {k[len(prefix) :] for k in learned if k.startswith(prefix)})
    for name in names:
        m = table.models.get(name)
        figures = learned.get(prefix + name, {})
        cells = []
        for dim in GEMINI_DIMENSIONS:
            value = getattr(m, dim) if m is not None else None
            fig = figures.get(dim)
            if fig is not None and fig.kind == "learned" and (value is None or fig.amount < value):
                cells.append(f"{fig.amount}*")
                when = datetime.fromtimestamp(fig.at, timezone.utc).strftime("%Y-%m-%d %H:%M")
                notes.append(
                    f"  {name} {dim} = {fig.amount}: learned from {fig.quota_id or '?'}"
                    f" at {when} UTC"
                )
            elif fig is not None and fig.kind == "adaptive" and value is None:
                cells.append(f"~{fig.amount}")
                notes.append(f"  {name} {dim} ~ {fig.amount}: adaptive (429s named no figure)")
            else:
                cells.append("-" if value is None else str(value))
        source = (m.source or "") if m is not None else "learned"
        print(
            f"{name:<34} "
            + " ".join(f"{c:>{w}}" for c, w in zip(cells, (8, 12, 9, 11), strict=True))
            + f"  {source}"
        )
    if notes:
        print("\n* learned from the server, ~ adaptive:")
        print("\n".join(notes))
    print("\nsources:")
    for sid, src in sorted(table.sources.items()):
        print(f"  {sid}: {src.url} (read {src.read})")
    return 0


def _audit(argv: list[str]) -> int:
    from quotaflow.agents.report import format_table, read_records, summarize, to_json

    files = [a for a in argv if not a.startswith("-")]
    if not files or "-h" in argv or "--help" in argv:
        print("usage: quotaflow audit FILE [FILE ...] [--json]")
        return 0 if files or "-h" in argv or "--help" in argv else 2
    unknown = [a for a in argv if a.startswith("-") and a != "--json"]
    if unknown:
        print(f"quotaflow audit: unknown option {unknown[0]}; try --json", file=sys.stderr)
        return 2
    try:
        rows = summarize(read_records(files))
    except OSError as exc:
        print(f"quotaflow audit: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(to_json(rows) if "--json" in argv else format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``quotaflow`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: quotaflow {audit,demo,emulator,tiers} ...\n\n" + _USAGE)
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "audit":
        return _audit(rest)
    if cmd == "demo":
        from quotaflow.demo import main as demo_main

        return demo_main(rest)
    if cmd == "emulator":
        try:
            from quotaflow.emulator.cli import run_cli
        except ImportError as exc:
            print(f"quotaflow emulator: {exc}", file=sys.stderr)
            return 2
        return run_cli(rest)
    if cmd == "tiers":
        return _tiers(rest)
    print(f"quotaflow: unknown command {cmd!r}; try: audit, demo, emulator, tiers", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
