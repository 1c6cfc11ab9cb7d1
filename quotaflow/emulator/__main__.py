"""``python -m quotaflow.emulator``: serve the emulator (see :mod:`quotaflow.emulator.cli`)."""

from __future__ import annotations

from .cli import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli())
