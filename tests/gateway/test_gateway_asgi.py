"""The gateway app in-process (httpx's ASGI transport) on asyncio and trio, with the OpenAI
SDK's async client, against the emulator over loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from gateway_helpers import FLASH, KEY, gateway_config

from quotaflow.emulator import ServedEmulator
from quotaflow.gateway import Gateway, TokenFile, new_token

pytestmark = pytest.mark.anyio


async def test_openai_async_sdk_in_process(emulator: ServedEmulator, tmp_path: Path) -> None:
    config = gateway_config(emulator.base_url, tmp_path)
    token, entry = new_token("researcher")
    TokenFile(config.tokens_file).add(entry)
    gateway = Gateway(config, key=KEY)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
        ) as http:
            oc = openai.AsyncOpenAI(
                api_key=token, base_url="http://gateway/v1beta/openai/", http_client=http
            )
            out = await oc.chat.completions.create(
                model=FLASH, messages=[{"role": "user", "content": "hello"}]
            )
            assert "hello" in (out.choices[0].message.content or "")
            denied = openai.AsyncOpenAI(
                api_key="qfg_nope", base_url="http://gateway/v1beta/openai/", http_client=http
            )
            with pytest.raises(openai.PermissionDeniedError):
                await denied.chat.completions.create(
                    model=FLASH, messages=[{"role": "user", "content": "x"}]
                )
            missing = await http.post("/v1beta/openai/chat/completions", json={})
            assert missing.status_code == 401
            assert missing.json()[0]["error"]["status"] == "UNAUTHENTICATED"  # OpenAI shape
            assert (await http.get("/readyz")).status_code == 200
    finally:
        await gateway.aclose()
    assert emulator.emulator.stats()["models"][FLASH]["received"] == 1
