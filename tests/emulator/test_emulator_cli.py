"""The ``quotaflow emulator`` command: ``run_cli`` and ``python -m quotaflow.emulator``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from quotaflow.emulator.cli import run_cli

CONFIG = (
    '[[keys]]\nkey = "cli-key"\nproject = "p"\n[[models]]\nname = "gemini-2.5-flash"\nrpm = 1\n'
)


def test_check_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "emu.toml"
    path.write_text(CONFIG)
    assert run_cli(["--check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out and "gemini-2.5-flash" in out
    assert "cli-key" not in out


def test_check_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "emu.toml"
    path.write_text("tiers = 1\n")
    assert run_cli(["--check", "--config", str(path)]) == 2
    assert "unknown key 'tiers'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_python_dash_m_serves(tmp_path: Path) -> None:
    path = tmp_path / "emu.toml"
    path.write_text(CONFIG)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quotaflow.emulator", "--port", str(port), "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/_emulator/stats")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        url = f"{base}/v1beta/models/gemini-2.5-flash:generateContent"
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
        statuses = [httpx.post(url, json=body, params={"key": "cli-key"}).status_code for _ in "ab"]
        assert statuses == [200, 429]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert b"cli-key" not in err
