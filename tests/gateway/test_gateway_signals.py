"""``quotaflow gateway`` as a process: SIGTERM (and SIGINT) drain it; the calls in flight
finish and are audited, every log line is written, and the process exits with status 0."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import FLASH, KEY

from quotaflow.emulator import ApiKeyConfig, EmulatorConfig, FaultConfig, ModelConfig, serve
from quotaflow.gateway import TokenFile, new_token

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CALLS = 4
LATENCY = 1.0  # long enough that the signal meets every call in flight


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(directory: Path, upstream: str) -> tuple[Path, str, int]:
    token, entry = new_token("agent")
    TokenFile(directory / "tokens.toml").add(entry)
    port = _free_port()
    path = directory / "gateway.toml"
    path.write_text(
        f"""[gateway]
host = "127.0.0.1"
port = {port}
upstream = "{upstream}"
tokens_file = "tokens.toml"

[limiter]
tier = "tier1"

[audit]
path = "audit.jsonl"

[agents.agent.grants]
content = "write"
"""
    )
    return path, token, port


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


def _received(stats: dict[str, Any]) -> int:
    return int(stats["models"].get(FLASH, {}).get("received", 0))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_the_gateway_and_it_exits_cleanly(tmp_path: Path, sig: int) -> None:
    config = EmulatorConfig(
        keys=[ApiKeyConfig(key=KEY, project="proj")],
        models=[ModelConfig(name=FLASH, rpm=1000, tpm=10**8, rpd=10**6)],
        faults=FaultConfig(latency_seconds=LATENCY),
    )
    with serve(config) as emulator:
        path, token, port = _config(tmp_path, emulator.base_url)
        log = tmp_path / "gateway.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "quotaflow.cli", "gateway", "--config", str(path)],
                cwd=tmp_path,
                env={**os.environ, "GEMINI_API_KEY": KEY},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                _wait_up(base + "/healthz", proc)

                def call() -> int:
                    r = httpx.post(
                        f"{base}/v1beta/models/{FLASH}:generateContent",
                        json={"contents": [{"parts": [{"text": "hello"}]}]},
                        headers={"x-goog-api-key": token},
                        timeout=30,
                    )
                    return r.status_code

                with concurrent.futures.ThreadPoolExecutor(CALLS) as pool:
                    futures = [pool.submit(call) for _ in range(CALLS)]
                    deadline = time.monotonic() + 10
                    while _received(emulator.emulator.stats()) < CALLS:
                        assert time.monotonic() < deadline, "the calls did not reach upstream"
                        time.sleep(0.02)
                    proc.send_signal(sig)  # every call is in flight upstream
                    statuses = [f.result() for f in futures]
                code = proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert statuses == [200] * CALLS  # the calls in flight finished
    assert code == 0  # drained and closed, not ended by the signal
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(records) == CALLS
    lines = log.read_text().splitlines()
    access = [json.loads(x) for x in lines if x.startswith("{") and '"access"' in x]
    assert [a["status"] for a in access] == [200] * CALLS
    assert lines[-1].startswith("Finished server process")  # nothing of the log was lost
    assert token not in log.read_text() and KEY not in log.read_text()
