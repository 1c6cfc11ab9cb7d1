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
    from quotaflow.tiers import SHIPPED_TIERS, load_tier

    tier = argv[0] if argv else "free"
    if tier in ("-h", "--help"):
        print(f"usage: quotaflow tiers [{'|'.join(SHIPPED_TIERS)}]")
        return 0
    table = load_tier(tier)
    print(f"{'model':<34} {'rpm':>8} {'tpm':>12} {'rpd':>9} {'tpd':>11}")
    for name, m in sorted(table.models.items()):
        cells = [m.rpm, m.tpm, m.rpd, m.tpd]
        print(
            f"{name:<34} "
            + " ".join(
                f"{c if c is not None else '-':>{w}}"
                for c, w in zip(cells, (8, 12, 9, 11), strict=True)
            )
        )
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
