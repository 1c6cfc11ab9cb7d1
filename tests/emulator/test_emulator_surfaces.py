"""The emulator's batch jobs (states, enqueued tokens, 429), media token counts by Gemini's
documented rates, and the Interactions API routes, over loopback."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx
from emulator_helpers import KEY, TickClock, small_config

from quotaflow.emulator import ServedEmulator

FLASH = "/v1beta/models/gemini-2.5-flash"


def _batch(n: int, text: str = "x" * 40) -> dict[str, Any]:
    request = {"contents": [{"parts": [{"text": text}], "role": "user"}]}
    inlined = [{"request": request, "metadata": {"key": str(i)}} for i in range(n)]
    return {"batch": {"displayName": "b", "inputConfig": {"requests": {"requests": inlined}}}}


def _client(served: ServedEmulator) -> httpx.Client:
    return httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY})


def test_batch_states_and_enqueued_tokens(
    start: Callable[..., ServedEmulator], clock: TickClock
) -> None:
    base = small_config()
    flash = base.models[0].model_copy(update={"batch_enqueued_tokens": 25})
    config = small_config(batch_delay_seconds=10.0, models=[flash, *base.models[1:]])
    served = start(config, clock)
    with _client(served) as http:
        first = http.post(f"{FLASH}:batchGenerateContent", json=_batch(2)).json()  # 20 tokens
        assert first["metadata"]["state"] == "BATCH_STATE_PENDING"
        refused = http.post(f"{FLASH}:batchGenerateContent", json=_batch(1))
        assert refused.status_code == 429
        details = refused.json()["error"]["details"]
        failure = next(d for d in details if d["@type"].endswith("QuotaFailure"))
        violation = failure["violations"][0]
        assert violation["quotaMetric"].endswith("batch_enqueued_tokens")
        assert violation["quotaValue"] == "25"
        retry = next(d for d in details if d["@type"].endswith("RetryInfo"))
        assert retry["retryDelay"] == "10s"  # when the running job is due
        clock.advance(6)
        assert http.get(f"/v1beta/{first['name']}").json()["metadata"]["state"] == (
            "BATCH_STATE_RUNNING"
        )
        clock.advance(5)
        done = http.get(f"/v1beta/{first['name']}").json()
        assert done["done"] and done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
        second = http.post(f"{FLASH}:batchGenerateContent", json=_batch(2)).json()
        assert http.post(f"/v1beta/{second['name']}:cancel").status_code == 200
        cancelled = http.get(f"/v1beta/{second['name']}").json()
        assert cancelled["metadata"]["state"] == "BATCH_STATE_CANCELLED"
        # a cancelled job holds nothing
        assert http.post(f"{FLASH}:batchGenerateContent", json=_batch(2)).status_code == 200
    stats = served.emulator.stats()["models"]["gemini-2.5-flash"]
    assert stats["rejected_by_dimension"] == {"batch_enqueued_tokens": 1}


def _png(width: int, height: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return base64.b64encode(
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc
    ).decode()


def test_media_counts_by_documented_rates(http: httpx.Client) -> None:
    parts = [
        {"inlineData": {"mimeType": "image/png", "data": _png(1000, 800)}},  # 2 x 2 tiles
        {"inlineData": {"mimeType": "image/png", "data": _png(100, 100)}},  # small
        {"inlineData": {"mimeType": "image/png", "data": "bm90IGFuIGltYWdl"}},  # unreadable
    ]
    body = {"contents": [{"role": "user", "parts": parts}]}
    pro = "/v1beta/models/gemini-2.5-pro"  # no limits in the small config
    counted = http.post(f"{pro}:countTokens", json=body).json()
    assert counted["totalTokens"] == 4 * 258 + 258 + 258  # the last: media_part_tokens
    usage = http.post(f"{pro}:generateContent", json=body).json()["usageMetadata"]
    assert usage["promptTokenCount"] == counted["totalTokens"]
    assert usage["promptTokensDetails"] == [{"modality": "IMAGE", "tokenCount": 6 * 258}]


def test_interactions_routes(http: httpx.Client, served: ServedEmulator) -> None:
    body = {"model": "gemini-2.5-pro", "input": "hello " * 8, "service_tier": "flex"}
    made = http.post("/v1beta/interactions", json=body)
    assert made.status_code == 200
    obj = made.json()
    assert obj["status"] == "completed" and obj["service_tier"] == "flex"
    assert obj["usage"]["total_input_tokens"] == 12
    assert obj["steps"][0]["content"][0]["type"] == "text"
    assert http.get(f"/v1beta/interactions/{obj['id']}").json() == obj
    assert http.post(f"/v1beta/interactions/{obj['id']}/cancel").status_code == 200
    assert http.delete(f"/v1beta/interactions/{obj['id']}").status_code == 200
    assert http.get(f"/v1beta/interactions/{obj['id']}").status_code == 404
    streamed = http.post("/v1beta/interactions", json={**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    assert events[0]["event_type"] == "interaction.created"
    assert events[-1]["event_type"] == "interaction.completed"
    assert events[-1]["interaction"]["usage"]["total_input_tokens"] == 12
    assert http.post("/v1beta/interactions", json={"input": "x"}).status_code == 400
    stats = served.emulator.stats()["models"]["gemini-2.5-pro"]
    assert stats["admitted"] == 2 and stats["tokens_admitted"] == 24
