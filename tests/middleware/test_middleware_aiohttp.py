"""google-genai with aiohttp installed: ``client.aio`` prefers aiohttp unless it is handed an
async transport, so :func:`genai_http_options` must keep it on the quota transport.

Real HTTP on loopback to the emulator, the real SDK, aiohttp really importable (the ``dev`` extra
installs it). Without quotaflow the same burst earns 429s through aiohttp; with the helper's
options it is paced by the limiter (which sees and settles every call) and earns none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from google import genai
from google.genai import _api_client, types
from google.genai import errors as genai_errors

from quotaflow import RPD, RPM, TPD, TPM, ConfigError, Limiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import genai_http_options

KEY = "test-key"
FLASH = "gemini-2.5-flash"
PERIOD = 1.0
RPM_LIMIT = 8  # per PERIOD, at the emulator and in the limiter
GENERATE, STREAM, COUNT = 12, 8, 4  # 20 metered calls in one burst: 2.5x the limit


def _config() -> EmulatorConfig:
    return EmulatorConfig(
        minute_seconds=PERIOD,
        models=[ModelConfig(name=FLASH, rpm=RPM_LIMIT, tpm=100_000, rpd=10_000)],
    )


def _limiter() -> Limiter:
    quota = [RPM(RPM_LIMIT, PERIOD), TPM(100_000, PERIOD), RPD(10_000), TPD(10**9)]
    return Limiter(tier=None, quotas={FLASH: quota})


def _prompt(i: int) -> str:
    return ("w" * (40 if i % 3 else 1200)) + str(i)  # small and large prompts


async def _burst(aio: Any) -> tuple[list[int], list[BaseException]]:
    """Every call at once; returns prompt token counts seen and the errors raised."""
    prompts: list[int] = []
    errors: list[BaseException] = []

    async def generate(i: int) -> None:
        r = await aio.models.generate_content(model=FLASH, contents=_prompt(i))
        prompts.append(r.usage_metadata.prompt_token_count)

    async def stream(i: int) -> None:
        last: Any = None
        async for chunk in await aio.models.generate_content_stream(
            model=FLASH, contents=_prompt(i)
        ):
            last = chunk
        prompts.append(last.usage_metadata.prompt_token_count)

    async def count(i: int) -> None:
        r = await aio.models.count_tokens(model=FLASH, contents=_prompt(i))
        assert r.total_tokens == len(_prompt(i)) // 4 + (len(_prompt(i)) % 4 > 0)

    async def guarded(fn: Callable[[int], Awaitable[None]], i: int) -> None:
        try:
            await fn(i)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(GENERATE):
            tg.start_soon(guarded, generate, i)
        for i in range(STREAM):
            tg.start_soon(guarded, stream, GENERATE + i)
        for i in range(COUNT):
            tg.start_soon(guarded, count, i)
    return prompts, errors


def _stats(served: ServedEmulator) -> dict[str, Any]:
    entry: dict[str, Any] = served.emulator.stats()["models"][FLASH]
    return entry


def test_the_sdk_prefers_aiohttp_and_the_helper_turns_it_off() -> None:
    """The premise, from the SDK's own routing rule: aiohttp is importable, a plain client
    would send ``client.aio`` through it, the helper's options send it through httpx(2)."""
    assert _api_client.has_aiohttp and aiohttp.ClientSession is not None
    base = "http://127.0.0.1:9/"
    plain = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base))
    ours = genai.Client(api_key=KEY, http_options=genai_http_options(_limiter(), base_url=base))
    try:
        assert plain._api_client._use_aiohttp()
        assert not ours._api_client._use_aiohttp()
    finally:
        plain.close()
        ours.close()


# asyncio only: aiohttp runs on asyncio alone (the quotaflow run below also passes on trio: the
# SDK never touches aiohttp there). The SDK's aiohttp session class warns on aiohttp >= 3.14; the
# warning (an error in this suite) also shows that the quotaflow run never opens that session.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
@pytest.mark.anyio
async def test_without_quotaflow_the_burst_earns_429s_through_aiohttp() -> None:
    with serve(_config()) as served:
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=served.base_url))
        assert client._api_client._use_aiohttp()
        try:
            _, errors = await _burst(client.aio)
        finally:
            await client.aio.aclose()
            client.close()
        stats = _stats(served)
    assert errors and all(isinstance(e, genai_errors.ClientError) and e.code == 429 for e in errors)
    assert stats["rejected"] == len(errors) > 0
    assert stats["admitted"] == RPM_LIMIT  # the rest of the burst was over the limit


@pytest.mark.anyio
async def test_client_aio_goes_through_the_quota_transport_with_aiohttp_installed() -> None:
    limiter = _limiter()
    with serve(_config()) as served:
        options = genai_http_options(limiter, base_url=served.base_url)  # the SDK's v1
        client = genai.Client(api_key=KEY, http_options=options)
        assert _api_client.has_aiohttp and not client._api_client._use_aiohttp()
        try:
            prompts, errors = await _burst(client.aio)
        finally:
            await client.aio.aclose()
            client.close()
        stats = _stats(served)
    assert errors == []
    # the emulator saw every call, refused none, and never more than the limit in a window
    assert stats["received"] == stats["admitted"] == GENERATE + STREAM
    assert stats["rejected"] == 0 and stats["max_requests_in_window"] <= RPM_LIMIT
    assert stats["count_tokens"]["admitted"] == COUNT
    # the limiter paced and settled every one of them, with the server's own counts
    status = await limiter.status(FLASH)
    assert status["rpd"].used == GENERATE + STREAM and status["rpd"].in_flight == 0
    assert status["tpd"].used == sum(prompts) == stats["tokens_admitted"]
    assert status["tpd"].in_flight == 0 and status["rpm"].in_flight == 0


def test_a_forced_backend_the_transports_cannot_serve_fails_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``GOOGLE_GENAI_HTTP_CLIENT`` overrides what the SDK detects from the transports: an
    httpx2 client driving httpx transports would fail only after the call reached the server."""
    monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", "httpx2")
    with pytest.raises(ConfigError) as caught:
        genai_http_options(_limiter(), backend="httpx")
    message = str(caught.value)
    assert "GOOGLE_GENAI_HTTP_CLIENT='httpx2'" in message and "backend='auto'" in message
    assert genai_http_options(_limiter(), backend="httpx2") is not None
    assert genai_http_options(_limiter()) is not None  # auto follows the variable
    monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", "httpx")
    with pytest.raises(ConfigError, match="backend='httpx'"):
        genai_http_options(_limiter(), backend="httpx2")
