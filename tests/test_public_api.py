"""The public surface: a sorted ``__all__``, typed package, sans-I/O core modules, the CLI."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import quotaflow

ROOT = pathlib.Path(quotaflow.__file__).parent

PURE = [
    "limits.py",
    "scheduler/buckets.py",
    "scheduler/bucket_base.py",
    "scheduler/queue.py",
    "scheduler/scope.py",
    "quotas/tiers.py",
    "errors.py",
]


def test_all_is_sorted_and_complete() -> None:
    names = quotaflow.__all__

    def group(n: str) -> tuple[int, str]:  # isort style: CONSTANTS, Classes, functions
        return (0 if n.isupper() else 1 if n[0].isupper() else 2, n)

    assert list(names) == sorted(names, key=group)
    for name in names:
        assert hasattr(quotaflow, name), name


def test_package_is_typed() -> None:
    assert (ROOT / "py.typed").exists()


def test_core_modules_do_no_io() -> None:
    for rel in PURE:
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                assert top not in {"anyio", "httpx", "redis", "asyncio", "trio", "time"}, (
                    f"{rel} imports {mod}"
                )


def test_cli_lists_commands_and_rejects_unknown() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "quotaflow.cli", "--help"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "demo" in ok.stdout and "emulator" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "quotaflow.cli", "frobnicate"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice: 'frobnicate'" in bad.stderr
    tiers = subprocess.run(
        [sys.executable, "-m", "quotaflow.cli", "tiers", "tier1"], capture_output=True, text=True
    )
    assert tiers.returncode == 0 and "gemini-2.5-flash" in tiers.stdout
