"""Helpers of the Redis tests: find, start, kill and restart ``redis-server`` processes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
HOW = "install it with `apt-get install redis-server` (or set REDIS_URL)"


def need_redis(what: str = "redis-server") -> None:
    """Skip (or fail under QUOTAFLOW_REQUIRE_REDIS=1) when ``what`` is missing."""
    msg = f"{what} not found: {HOW}"
    if os.environ.get("QUOTAFLOW_REQUIRE_REDIS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def free_port(bus: bool = False) -> int:
    """A free TCP port; with ``bus``, ``port + 10000`` (the cluster bus) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000) if bus else (port,):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


class RedisServer:
    """A ``redis-server`` process owned by a test (no persistence unless asked)."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            need_redis()
        self.port = port or free_port()
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="qf-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        cmd = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self, down: float = 0.0) -> None:
        self.kill()
        time.sleep(down)
        self.start()


WORKER = str(Path(__file__).with_name("redis_worker.py"))


def spawn_worker(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    """A ``redis_worker.py`` process with ``cfg``; its events come as JSON lines on stdout."""
    return subprocess.Popen(
        [sys.executable, WORKER, json.dumps(cfg)], stdout=subprocess.PIPE, text=True
    )


def wait_stopped(p: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Return once every thread of ``p`` is stopped, after a ``SIGSTOP`` was sent to it.

    ``kill()`` returns before a multi-threaded process has stopped: one thread takes the
    signal and stops the others, and on a loaded machine the rest run on meanwhile (and may
    read what arrives on their sockets). Without ``/proc`` it returns at once.
    """
    tasks = Path(f"/proc/{p.pid}/task")
    if not tasks.is_dir():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.002)
    raise AssertionError(f"process {p.pid} did not stop within {timeout} s")


def read_until(p: subprocess.Popen[str], ev: str, count: int = 1) -> dict[str, Any]:
    """Read the worker's events until the ``count``-th ``ev``; returns that event."""
    assert p.stdout is not None
    seen = 0
    while True:
        line = p.stdout.readline()
        assert line, "worker ended early"
        event: dict[str, Any] = json.loads(line)
        if event["ev"] == ev:
            seen += 1
            if seen == count:
                return event
