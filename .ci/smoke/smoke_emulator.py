"""The ``emulator`` extra: serve it and call it with plain httpx."""

from __future__ import annotations

import httpx
from _common import check, installed, main

from quotaflow.emulator import EmulatorConfig, ModelConfig, serve


def run() -> str:
    installed()
    config = EmulatorConfig(models=[ModelConfig(name="gemini-2.5-flash", rpm=5, tpm=10_000)])
    with serve(config) as served:
        reply = httpx.post(
            f"{served.base_url}/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"x-goog-api-key": "test-key"},
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        )
        check(reply.status_code == 200, f"generateContent: {reply.status_code} {reply.text}")
        usage = reply.json().get("usageMetadata") or {}
        check(usage.get("promptTokenCount", 0) > 0, f"no usageMetadata in {reply.text}")
        admitted = served.emulator.stats()["models"]["gemini-2.5-flash"]["admitted"]
        check(admitted == 1, f"emulator stats: admitted {admitted}, expected 1")
    tokens = usage["promptTokenCount"], usage.get("candidatesTokenCount")
    return f"emulator: httpx generateContent 200, usageMetadata (prompt, candidates) {tokens}"


if __name__ == "__main__":
    main(run)
