"""The ``quotaflow`` command: every bad input is one line naming the fix, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import quotaflow
from quotaflow.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def partial(tmp_path: Path) -> Path:
    p = tmp_path / "partial.jsonl"
    p.write_text('{"decision": "allowed", "agent": "a"}\n', encoding="utf-8")
    return p


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    p = tmp_path / "binary.jsonl"
    p.write_bytes(bytes(range(128, 256)) * 4)
    return p


BAD_USAGE = [
    ("tiers", "bogus"),
    ("tiers", "tier1", "extra"),
    ("demo", "--rpm", "-5"),
    ("demo", "--period", "nan"),
    ("demo", "--agents", "x"),
    ("emulator", "--log-level", "bogus"),
    ("emulator", "--port", "eighty"),
    ("status",),
    ("status", "--redis", "redis://h", "--interval", "0"),
    ("audit",),
    ("audit", "f.jsonl", "--csv"),
    ("bogus",),
]


@pytest.mark.parametrize("argv", BAD_USAGE, ids=" ".join)
def test_usage_errors_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err
    assert "error:" in err.splitlines()[-1]


def test_failures_exit_1_in_one_line(
    capsys: pytest.CaptureFixture[str], partial: Path, binary: Path, tmp_path: Path
) -> None:
    cases = {
        ("audit", str(partial)): "not a complete audit record (no time",
        ("audit", str(binary)): "not a UTF-8 text file",
        ("audit", str(tmp_path / "missing.jsonl")): "check the path",
        ("audit", str(tmp_path)): "check the path",
        ("status", "--redis", "http://example.invalid"): "give a redis://",
    }
    for argv, fix in cases.items():
        code, _, err = _run(capsys, *argv)
        assert code == 1, (argv, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"quotaflow {argv[0]}: ")
        assert fix in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--version")
    assert (code, out.strip()) == (0, f"quotaflow {quotaflow.__version__}")
    for cmd in ("audit", "demo", "emulator", "status", "tiers"):
        code, out, _ = _run(capsys, cmd, "--help")
        assert code == 0
        assert out.startswith(f"usage: quotaflow {cmd}")
        assert len(out.split("\n\n")) >= 3, f"{cmd} --help has no description"
    code, out, _ = _run(capsys)
    assert code == 2
    assert "exit codes: 0 success, 1 failure, 2 usage" in " ".join(out.split())


def test_json_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(capsys, "tiers", "tier1", "--json")
    assert code == 0
    table = json.loads(out)
    flash = next(m for m in table["models"] if m["model"] == "gemini-2.5-flash")
    assert flash["rpm"]["origin"] == "table"
    log = tmp_path / "audit.jsonl"
    log.write_text("", encoding="utf-8")
    code, out, _ = _run(capsys, "audit", str(log), "--json")
    assert (code, json.loads(out)) == (0, [])


def test_the_installed_command_prints_no_traceback(binary: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quotaflow.cli", "audit", str(binary)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
