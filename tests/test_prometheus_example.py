"""The Prometheus example of docs/observe.md, run as written: the instruments reach /metrics."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.exporter.prometheus")
pytest.importorskip("prometheus_client")

DOC = Path(__file__).resolve().parents[1] / "docs" / "observe.md"


def _example() -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- prometheus-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "docs/observe.md lost its Prometheus example"
    return m.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_prometheus_example_serves_the_instruments() -> None:
    port = _free_port()
    example = _example().replace("9464", str(port))
    calls = textwrap.dedent(
        f"""
        import httpx, anyio
        from google import genai
        from quotaflow import RPM, Limiter
        from quotaflow.emulator import EmulatorConfig, ModelConfig, serve
        from quotaflow.transports import genai_http_options

        MODEL = "gemini-2.5-flash"
        config = EmulatorConfig(minute_seconds=1.0, models=[ModelConfig(name=MODEL, rpm=2)])
        limiter = Limiter(None, quotas={{MODEL: [RPM(10, 1.0)]}})

        async def main():
            with serve(config) as served:
                client = genai.Client(api_key="test-key", http_options=genai_http_options(
                    limiter, base_url=served.base_url, api_version="v1beta"))
                for i in range(3):  # the third gets a 429, is paused and retried
                    await client.aio.models.generate_content(model=MODEL, contents=f"hi {{i}}")
                await client.aio.aclose()

        anyio.run(main)
        print(httpx.get("http://127.0.0.1:{port}/metrics").text)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", example + calls], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    scraped = done.stdout
    assert re.search(
        r'^quotaflow_grants_total\{.*model="gemini-2.5-flash".*\} [3-9]', scraped, re.M
    )
    assert "quotaflow_wait_duration_seconds_bucket" in scraped
    assert "quotaflow_server_rate_limited_total" in scraped
    assert "quotaflow_usage" in scraped
    assert "test-key" not in scraped
