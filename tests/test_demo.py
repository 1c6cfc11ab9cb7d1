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
