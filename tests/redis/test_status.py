"""``quotaflow status`` on a live fleet in Redis: JSON, and --watch read off a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from quotaflow import Limit, SyncLimiter, WouldBlockError

pytestmark = pytest.mark.redis

MODEL = "gemini-2.5-flash"


@pytest.fixture
def fleet(redis_url: str, namespace: str) -> Iterator[SyncLimiter]:
    """A limiter at its limit (2 of 2 requests held) with one high-priority call waiting."""
    limiter = SyncLimiter(
        None,
        quotas={MODEL: [Limit("rpm", 2, 60.0), Limit("tpm", 10_000, 60.0, metric="input_tokens")]},
        backend=f"{redis_url}?namespace={namespace}",
    )
    held = [limiter.acquire_nowait(MODEL, 100) for _ in range(2)]
    with pytest.raises(WouldBlockError):
        limiter.acquire_nowait(MODEL, 100)

    def wait() -> None:
        with limiter.acquire(MODEL, 50, priority="high"):
            pass  # admitted once the held permits are released

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    deadline = time.monotonic() + 10
    while limiter.waiting(MODEL) < 1:
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.02)
    yield limiter
    for permit in held:
        permit.release()
    waiter.join(30)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quotaflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_json_shows_the_fleet(fleet: SyncLimiter, redis_url: str, namespace: str) -> None:
    before = _cli("status", "--redis", redis_url, "--namespace", namespace, "--json")
    assert before.returncode == 0, before.stderr
    snap = json.loads(before.stdout)
    (model,) = snap["models"]
    assert model["model"] == MODEL
    dims = {d["name"]: d for d in model["dimensions"]}
    assert dims["rpm"]["limit"] == 2
    assert dims["rpm"]["in_flight"] == 2
    assert dims["rpm"]["free"] == 0
    assert dims["tpm"]["in_flight"] == 200
    assert dims["rpm"]["origin"] == "configured"
    assert model["waiting"] == {"high": 1}
    # reading changed nothing: the waiter still waits, the permits are still held
    assert fleet.waiting(MODEL) == 1
    assert fleet.status(MODEL)["rpm"].in_flight == 2


def test_status_watch_shows_a_live_fleet_on_a_terminal(
    fleet: SyncLimiter, redis_url: str, namespace: str
) -> None:
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    args = [
        "status",
        "--redis",
        redis_url,
        "--namespace",
        namespace,
        "--watch",
        "--interval",
        "0.2",
    ]
    # a session of its own whose controlling terminal is the pty, so ^C there is a SIGINT
    boot = (
        "import fcntl, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "from quotaflow.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", boot, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
        start_new_session=True,
    )
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while b"waiting: high 1" not in screen or b"rpm" not in screen:
            assert time.monotonic() < deadline, screen.decode(errors="replace")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                screen += os.read(master, 65536)
        # the view refreshes in place: a second frame arrives without a new command
        frames = screen.count(b"Ctrl-C to stop")
        while screen.count(b"Ctrl-C to stop") <= frames:
            assert time.monotonic() < deadline
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                screen += os.read(master, 65536)
        os.write(master, b"\x03")  # Ctrl-C through the terminal
        assert proc.wait(timeout=20) == 0
        try:
            while True:
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    break
                screen += os.read(master, 65536)
        except OSError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert MODEL in text
    assert "Traceback" not in text
    assert "\x1b[" in text  # rich drew it with terminal controls (in place)


def test_status_names_an_unreachable_redis_in_one_line() -> None:
    done = _cli("status", "--redis", "redis://127.0.0.1:1")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot reach Redis at redis://127.0.0.1:1" in done.stderr


def test_status_shows_day_limits_and_agents_shares(redis_url: str, namespace: str) -> None:
    from quotaflow import RPD, RPM, Share

    limiter = SyncLimiter(
        None,
        quotas={MODEL: [RPM(10, 60.0), RPD(100)]},
        shares={"alice": Share(ceiling=0.5)},
        backend=f"{redis_url}?namespace={namespace}",
    )
    permit = limiter.acquire_nowait(MODEL, agent="alice")
    done = _cli("status", "--redis", f"{redis_url}?namespace={namespace}", "--json")
    permit.release()
    assert done.returncode == 0, done.stderr
    (model,) = json.loads(done.stdout)["models"]
    dims = {d["name"]: d for d in model["dimensions"]}
    assert dims["rpd"]["limit"] == 100 and dims["rpd"]["in_flight"] == 1  # a Pacific day
    alice = {d["name"]: d for d in model["agents"]["alice"]["dimensions"]}
    assert alice["rpm"]["limit"] == 5 and alice["rpm"]["in_flight"] == 1
    text = _cli("status", "--redis", redis_url, "--namespace", namespace)
    assert "agent alice: share rpm 0/5" in text.stdout
