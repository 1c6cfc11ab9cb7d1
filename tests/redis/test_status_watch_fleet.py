"""``quotaflow status --watch`` during the fault benchmark's run, read off a terminal screen.

``benchmarks/fleet_faults.py`` runs its fleet (worker processes of google-genai through the
transport, the emulator over loopback) on a redis-server this test starts; ``quotaflow status
--watch`` runs under a pseudo-terminal whose output a terminal emulator (pyte) turns into the
screen a user sees. The screen must show the fleet's model with live figures that change
between two reads, and Ctrl-C must end the view with exit code 0 and no traceback.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pyte = pytest.importorskip("pyte")

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gemini-2.5-flash"
RPM = 30  # the benchmark's default limits
COLUMNS, LINES = 120, 50


class Terminal:
    """A command on a pseudo-terminal of its own (its controlling terminal: ^C is a SIGINT),
    with the screen it draws."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": str(COLUMNS), "LINES": str(LINES), "TERM": "xterm"}
        boot = (
            "import fcntl, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "from quotaflow.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", boot, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""

    def pump(self, timeout: float) -> bool:
        """Feed what the command wrote within ``timeout`` s to the screen; False at its end."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the command closed the terminal
            return False
        if not data:
            return False
        self.raw += data
        self.stream.feed(data)
        return True

    def lines(self) -> list[str]:
        return [str(line) for line in self.screen.display]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def _row(lines: list[str], dimension: str) -> dict[str, Any] | None:
    """The figures of ``dimension`` in the model's table on the screen (``None``: not drawn)."""
    seen_model = False
    for line in lines:
        if MODEL in line:
            seen_model = True
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        cells = [c for c in cells if c]
        if seen_model and len(cells) >= 6 and cells[0] == dimension:
            try:
                limit, used, free, in_flight = (int(cells[i]) for i in (1, 3, 4, 5))
            except ValueError:
                continue
            return {"limit": limit, "used": used, "free": free, "in_flight": in_flight}
    return None


@pytest.mark.timeout(300)
def test_status_watch_shows_the_fault_benchmarks_fleet_live(own_redis: Any, tmp_path: Path) -> None:
    log = (tmp_path / "fleet_faults.log").open("wb")
    bench = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fleet_faults.py"),
            "--redis",
            own_redis.url,
            "--scenario",
            "none",
            "--procs",
            "2",
            "--tasks",
            "4",
            "--period",
            "1",
            "--periods",
            "30",
            "--out",
            "",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    term = Terminal(["status", "--redis", own_redis.url, "--watch", "--interval", "0.2"])
    try:
        # the fleet's workers start (imports, one configure each), then their load runs
        deadline = time.monotonic() + 180
        first: dict[str, Any] | None = None
        while first is None or first["used"] + first["in_flight"] == 0:
            assert bench.poll() is None, (tmp_path / "fleet_faults.log").read_text()
            assert term.proc.poll() is None, term.raw.decode(errors="replace")
            assert time.monotonic() < deadline, "\n".join(term.lines())
            term.pump(0.5)
            first = _row(term.lines(), "rpm")
        assert first["limit"] == RPM
        assert first["used"] + first["free"] == RPM  # used counts what is in flight
        assert first["in_flight"] <= first["used"]
        # live: a later frame of the same view shows other figures, with no new command
        figures = (first["used"], first["free"], first["in_flight"])
        later = first
        while (later["used"], later["free"], later["in_flight"]) == figures:
            assert time.monotonic() < deadline, "\n".join(term.lines())
            term.pump(0.5)
            later = _row(term.lines(), "rpm") or later
        screen = "\n".join(term.lines())
        assert f"default/{MODEL}" in screen
        assert _row(term.lines(), "tpm") is not None
        os.write(term.master, b"\x03")  # Ctrl-C, typed at the terminal
        assert term.proc.wait(timeout=30) == 0
        while term.pump(0.2) and time.monotonic() < deadline:
            pass
        assert "Traceback" not in term.raw.decode(errors="replace")
        assert "KeyboardInterrupt" not in term.raw.decode(errors="replace")
    finally:
        term.close()
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)  # the benchmark and its worker processes
        bench.wait(30)
        log.close()
