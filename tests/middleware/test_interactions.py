"""The Interactions API through the quota transports: google-genai's ``client.interactions``
(sync and async, JSON and streamed) against the emulator over loopback, metered on the model's
quotas and settled from the interaction's ``usage``; reads and deletes spend nothing."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from google import genai

from quotaflow import RPD, RPM, TPM, Limiter, SyncLimiter
from quotaflow.agents import load_policy
from quotaflow.agents.grants import decide
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.gemini import classify
from quotaflow.transports import QuotaTransport, genai_http_options

KEY = "test-key"
FLASH = "gemini-2.5-flash"
PERIOD = 1.0


def _limiter(rpm: int = 60, tpm: int = 20_000) -> Limiter:
    return Limiter(tier=None, quotas={FLASH: [RPM(rpm, PERIOD), TPM(tpm, PERIOD), RPD(10_000)]})


@pytest.fixture
def served() -> Iterator[ServedEmulator]:
    config = EmulatorConfig(
        minute_seconds=PERIOD, models=[ModelConfig(name=FLASH, rpm=3, tpm=20_000, rpd=10_000)]
    )
    with serve(config) as s:
        yield s


def _stats(served: ServedEmulator) -> dict[str, Any]:
    entry: dict[str, Any] = served.emulator.stats()["models"].get(FLASH, {})
    return entry


# asyncio only: google-genai's Interactions client runs its hooks with asyncio.to_thread, which
# fails on trio ("no running event loop") with or without quotaflow in the way; the transport
# itself runs on both (the plain httpx test below).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_async_create_is_metered_and_settled_from_usage(served: ServedEmulator) -> None:
    limiter = _limiter(rpm=3)
    client = genai.Client(
        api_key=KEY, http_options=genai_http_options(limiter, base_url=served.base_url)
    )
    aio = client.aio
    try:
        first = await aio.interactions.create(
            model=FLASH, input="Tell me about tiles " * 10, service_tier="flex"
        )
        inputs = [first.usage.total_input_tokens]  # type: ignore[union-attr]
        last: Any = None
        async for event in await aio.interactions.create(
            model=FLASH, input=[{"type": "text", "text": "stream me " * 20}], stream=True
        ):
            last = event
        assert last.event_type == "interaction.completed"
        inputs.append(last.interaction.usage.total_input_tokens)
        got = await aio.interactions.get(first.id)
        assert got.id == first.id
        await aio.interactions.delete(first.id)

        async def one(i: int) -> int:
            r = await aio.interactions.create(model=FLASH, input=f"task {i} " * 5)
            return int(r.usage.total_input_tokens)  # type: ignore[union-attr]

        results: list[int] = []
        async with anyio.create_task_group() as tg:
            for i in range(5):  # 7 creates at 3 per second: the limiter spaces them

                async def run(i: int = i) -> None:
                    results.append(await one(i))

                tg.start_soon(run)
        inputs += results
    finally:
        await client.aio.aclose()
        client.close()
    status = await limiter.status(FLASH)
    assert status["rpm"].in_flight == 0 and status["tpm"].in_flight == 0
    stats = _stats(served)
    assert stats["rejected"] == 0  # no 429: the creates waited at the client
    assert stats["admitted"] == 7  # get and delete spent nothing
    assert stats["tokens_admitted"] == sum(inputs)


def test_sync_create_stream_get(served: ServedEmulator) -> None:
    limiter = _limiter()
    sync = SyncLimiter.sharing(limiter)
    options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
    with genai.Client(api_key=KEY, http_options=options) as client:
        r = client.interactions.create(
            model=FLASH, input="hello " * 40, service_tier="priority", store=True
        )
        assert r.usage is not None and r.usage.total_input_tokens == 60
        events = list(client.interactions.create(model=FLASH, input="abcd" * 25, stream=True))
        assert events[-1].event_type == "interaction.completed"
        assert client.interactions.get(r.id).status == "completed"
    status = sync.status(FLASH)
    assert (status["rpm"].used, status["tpm"].used, status["tpm"].in_flight) == (2, 60 + 25, 0)
    assert _stats(served)["admitted"] == 2


@pytest.mark.anyio
async def test_estimate_then_settlement_with_an_image(served: ServedEmulator) -> None:
    """An interaction with an inline 1000x800 PNG is sized as 4 tiles before the call, and
    settled from the usage the server reports."""
    ihdr = struct.pack(">IIBBBBB", 1000, 800, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
    image = base64.b64encode(head + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))).decode()
    limiter = _limiter()
    body = {
        "model": FLASH,
        "input": [
            {"type": "text", "text": "What is in it?"},
            {"type": "image", "mime_type": "image/png", "data": image},
        ],
    }
    async with httpx.AsyncClient(
        transport=QuotaTransport(limiter),
        base_url=served.base_url,
        headers={"x-goog-api-key": KEY},
    ) as http:
        r = await http.post("/v1beta/interactions", json=body)
        assert r.status_code == 200
        info = r.extensions["quotaflow"]
        assert (info.call.action, info.call.area, info.call.access) == (
            "interactions.create",
            "content",
            "write",
        )
        assert info.estimated == 4 + 4 * 258
        assert r.json()["usage"]["total_input_tokens"] == info.estimated
        cancel = await http.post(f"/v1beta/interactions/{r.json()['id']}/cancel")
        assert cancel.status_code == 200
        assert cancel.extensions["quotaflow"].call.access == "write"
        missing = await http.get("/v1beta/interactions/nope")
        assert missing.status_code == 404
    status = await limiter.status(FLASH)
    assert (status["rpm"].used, status["tpm"].used) == (1, info.estimated)


def test_grants_read_the_classification(tmp_path: Any) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[agents.reader]\ngrants = { content = "read" }\n'
        '[agents.writer]\ngrants = { content = "write" }\n'
    )
    policy = load_policy(path)
    create = classify("POST", "/v1beta/interactions", {"model": FLASH})
    get = classify("GET", "/v1beta/interactions/abc")
    delete = classify("DELETE", "/v1beta/interactions/abc")
    assert not decide(policy, "reader", create).allowed
    assert decide(policy, "reader", get).allowed
    assert not decide(policy, "reader", delete).allowed
    assert decide(policy, "writer", create).allowed and decide(policy, "writer", delete).allowed
    assert decide(policy, "writer", create).method == "interactions.create"
