"""The google-genai async client, on asyncio and trio, served and in-process.

google-genai's own async transport is asyncio-only; an explicit ``httpx.AsyncClient`` (as
``httpx_async_client``) makes it run on trio too.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
from emulator_helpers import KEY, small_config
from google import genai
from google.genai import errors, types

from quotaflow.emulator import Emulator, ModelConfig, serve

pytestmark = pytest.mark.anyio
FLASH = "gemini-2.5-flash"


async def test_served_over_loopback() -> None:
    async with serve(small_config()) as served, httpx.AsyncClient(timeout=10) as http:
        options = types.HttpOptions(
            base_url=served.base_url, api_version="v1beta", httpx_async_client=http
        )
        client = genai.Client(api_key=KEY, http_options=options)
        response = await client.aio.models.generate_content(model=FLASH, contents="async hi")
        assert response.text == ("Echo: async hi " * 7)[:96]
        counted = await client.aio.models.count_tokens(model=FLASH, contents="async hi")
        assert response.usage_metadata is not None
        assert counted.total_tokens == response.usage_metadata.prompt_token_count
        chunks = [
            c
            async for c in await client.aio.models.generate_content_stream(
                model=FLASH, contents="async hi"
            )
        ]
        assert chunks[-1].usage_metadata is not None
        assert chunks[-1].usage_metadata.candidates_token_count == 24
        embedded = await client.aio.models.embed_content(
            model="gemini-embedding-001", contents=["x", "y", "z"]
        )
        assert embedded.embeddings is not None and len(embedded.embeddings) == 3
        stats = served.emulator.stats()["models"]
        assert stats[FLASH]["admitted"] == 2
        assert stats["gemini-embedding-001"]["requests_admitted"] == 3


async def test_concurrent_clients_never_exceed_the_limit() -> None:
    config = small_config(models=[ModelConfig(name=FLASH, rpm=5)], minute_seconds=60.0)
    async with serve(config) as served, httpx.AsyncClient(timeout=10) as http:
        options = types.HttpOptions(
            base_url=served.base_url, api_version="v1beta", httpx_async_client=http
        )
        client = genai.Client(api_key=KEY, http_options=options)
        outcomes: list[int] = []

        async def one(i: int) -> None:
            try:
                await client.aio.models.generate_content(model=FLASH, contents=f"n{i}")
                outcomes.append(200)
            except errors.ClientError as exc:
                outcomes.append(exc.code)

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
        assert sorted(outcomes) == [200] * 5 + [429] * 7
        flash = served.emulator.stats()["models"][FLASH]
        assert flash["max_requests_in_window"] == 5
        assert flash["rejected_by_dimension"] == {"rpm": 7}


async def test_in_process_asgi_transport() -> None:
    emulator = Emulator(small_config())
    transport = httpx.ASGITransport(app=emulator)
    async with httpx.AsyncClient(transport=transport) as http:
        options = types.HttpOptions(
            base_url="http://emulator", api_version="v1beta", httpx_async_client=http
        )
        client = genai.Client(api_key=KEY, http_options=options)
        response = await client.aio.models.generate_content(model=FLASH, contents="in process")
        assert response.text is not None and response.text.startswith("Echo: in process")
        models = [m.name async for m in await client.aio.models.list()]
        assert f"models/{FLASH}" in models
        emulator.inject(FLASH, 503)
        with pytest.raises(errors.ServerError) as info:
            await client.aio.models.generate_content(model=FLASH, contents="x")
        assert info.value.code == 503
    assert emulator.stats()["models"][FLASH]["failed"] == 1
