"""The README's main command: the demo runs end to end and the emulator sees no 429."""

from __future__ import annotations

import io

import anyio
import pytest

pytest.importorskip("google.genai")
pytest.importorskip("starlette")

from quotaflow.demo import run_demo


@pytest.mark.slow
def test_demo_runs_without_429_and_prioritizes() -> None:
    out = io.StringIO()
    summary = anyio.run(lambda: run_demo(period=1.0, rpm=6, tpm=3_000, agents=3, calls=3, out=out))
    assert summary["server_429s"] == 0
    assert summary["max_requests_in_any_window"] <= 6
    per = summary["per_priority"]
    assert all(row["calls"] == 9 for row in per.values())
    assert per["high"]["mean_wait_s"] <= per["low"]["mean_wait_s"]
    assert "emulator verdict" in out.getvalue()


def test_demo_prints_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    anyio.run(lambda: run_demo(period=0.5, rpm=6, tpm=3_000, agents=1, calls=2, out=out))
    text = out.getvalue()
    assert "\x1b[" not in text  # no terminal controls in a file or a pipe
    assert any(line.startswith("  t=") and "waiting:" in line for line in text.splitlines())


@pytest.mark.slow
def test_demo_shows_a_live_view_on_a_terminal() -> None:
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quotaflow.cli", "demo", "--period", "0.5", "--rpm", "6",
         "--tpm", "3000", "--agents", "1", "--calls", "3"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )  # fmt: skip
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None or select.select([master], [], [], 0.2)[0]:
            assert time.monotonic() < deadline
            if select.select([master], [], [], 0.2)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert proc.wait() == 0, text
    assert "3/3" in text and "mean wait" in text and "waiting in line" in text
    assert "\x1b[" in text  # redrawn in place with cursor controls
    assert "emulator verdict" in text  # the same summary
    assert "Traceback" not in text
