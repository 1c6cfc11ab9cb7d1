"""Command line: ``quotaflow emulator --port N --config FILE``.

The ``quotaflow`` console command dispatches its ``emulator`` subcommand to :func:`run_cli`;
``python -m quotaflow.emulator`` calls it directly.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_arguments", "build_parser", "run_cli", "run_parsed"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator command's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free one")
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON config file")
    parser.add_argument(
        "--check", action="store_true", help="validate the config, print a summary and exit"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=LOG_LEVELS,
        help="log level (default: info)",
    )


def build_parser(prog: str = "quotaflow emulator") -> argparse.ArgumentParser:
    """The argument parser of the emulator command."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local Gemini Developer API emulator with Gemini's quotas.",
    )
    add_arguments(parser)
    return parser


def run_cli(argv: list[str] | None = None) -> int:
    """Run the emulator command until interrupted.

    Args:
        argv: Arguments after ``emulator`` (default: ``sys.argv[1:]``).

    Returns:
        The process exit status: 0 on a clean stop, 2 for an invalid config.
    """
    return run_parsed(build_parser().parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Run the emulator with parsed arguments (see :func:`add_arguments`)."""
    try:
        import uvicorn

        from ._app import Emulator
        from ._config import EmulatorConfig, EmulatorConfigError, load_config
        from ._serve import KEEP_ALIVE
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        hint = "pip install 'quotaflow[emulator]'"
        print(f"the emulator needs the 'emulator' extra: {hint} ({exc})", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config) if args.config else EmulatorConfig()
    except EmulatorConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    models = ", ".join(m.name for m in config.models)
    projects = sorted({k.project for k in config.keys})
    summary = f"tier={config.tier} models=[{models}] keys={len(config.keys)} projects={projects}"
    if args.check:
        print(f"config OK: {summary}")
        return 0
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    print(f"quotaflow emulator on http://{args.host}:{args.port} ({summary})", file=sys.stderr)
    uvicorn.run(
        Emulator(config),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,  # the access log would print ?key=
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE,  # see quotaflow.emulator._serve
    )
    return 0
