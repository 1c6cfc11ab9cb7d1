"""Shared by the smoke scripts of ``.ci/extras`` (each runs in a fresh venv of the wheel)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

import quotaflow


class SmokeError(Exception):
    """A smoke check failed."""


def check(ok: object, what: str) -> None:
    """Fail with ``what`` unless ``ok``."""
    if not ok:
        raise SmokeError(what)


def installed() -> str:
    """Where quotaflow comes from; fails if not from the venv's site-packages (a checkout)."""
    where = str(Path(quotaflow.__file__).resolve().parent)
    check("site-packages" in where, f"quotaflow imported from {where}, not the installed wheel")
    check(
        Path(sys.prefix).resolve() in Path(where).parents,
        f"quotaflow from {where}, not this venv ({sys.prefix})",
    )
    return where


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_up(proc: subprocess.Popen[bytes], probe: object, what: str, limit: float = 20) -> None:
    """Wait until ``probe()`` is true; fail if ``proc`` exits or ``limit`` seconds pass."""
    assert callable(probe)
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise SmokeError(f"{what} exited with {proc.returncode}: {out.strip()[-2000:]}")
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.05)
    raise SmokeError(f"{what} did not come up within {limit:g}s")


@contextlib.contextmanager
def process(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd``; terminate (then kill) it on exit."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise SmokeError(f"cannot run {cmd[0]}: {exc}") from exc
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@contextlib.contextmanager
def emulator(python: str) -> Iterator[str]:
    """The emulator served by ``python`` (a venv with the ``emulator`` extra); its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [python, "-m", "quotaflow.emulator", "--port", str(port), "--log-level", "warning"]
    with process(cmd) as proc:
        wait_up(
            proc, lambda: httpx.get(f"{url}/_emulator/stats").status_code == 200, "the emulator"
        )
        yield url


def main(run: object) -> None:
    """Run ``run() -> str`` and print its line; a failure prints why and exits 1."""
    assert callable(run)
    try:
        line = run()
    except Exception as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    print(line)
