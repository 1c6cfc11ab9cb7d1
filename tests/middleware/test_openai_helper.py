"""The OpenAI SDK in one line: ``openai_client`` / ``openai_http_client`` against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from quotaflow import RPM, TPM, ConfigError, Limiter, SyncLimiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import GEMINI_OPENAI_URL, openai_client, openai_http_client

FLASH = "gemini-2.5-flash"


@pytest.fixture
def served() -> Iterator[ServedEmulator]:
    # the server allows 2 requests per 1 s window; the limiter believes 50: 429s come back
    config = EmulatorConfig(
        minute_seconds=1.0, models=[ModelConfig(name=FLASH, rpm=2, tpm=100_000, rpd=None)]
    )
    with serve(config) as s:
        yield s


def _quotas() -> dict[str, Any]:
    return {FLASH: [RPM(50, 1.0), TPM(100_000, 1.0)]}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the SDK's SSE generators (see e2e)
@pytest.mark.anyio
async def test_async_client_in_one_line(served: ServedEmulator) -> None:
    limiter = Limiter(None, quotas=_quotas())
    client = openai_client(
        limiter, api_key="test-key", base_url=served.base_url + "/v1beta/openai/"
    )
    assert isinstance(client, openai.AsyncOpenAI)
    assert client.max_retries == 0  # the SDK's retries are off: quotaflow's handle 429s
    async with client:
        for _ in range(4):  # 2 over the server's window: answered 429, paused, retried
            c = await client.chat.completions.create(
                model=FLASH, messages=[{"role": "user", "content": "x" * 40}]
            )
            assert c.usage is not None and c.usage.prompt_tokens == 10
    stats = served.emulator.stats()["models"][FLASH]
    assert stats["requests_admitted"] == 4
    status = await limiter.status(FLASH)
    assert status["rpm"].in_flight == 0


def test_sync_client_folds_the_sdk_retries(served: ServedEmulator) -> None:
    limiter = SyncLimiter(None, quotas=_quotas())
    client = openai_client(
        limiter, api_key="test-key", base_url=served.base_url + "/v1beta/openai/", max_retries=0
    )
    assert isinstance(client, openai.OpenAI) and client.max_retries == 0
    with client:
        client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "y"}])
        client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "y"}])
        # max_retries=0 folded into quotaflow's: the third call in the window gets the 429
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "y"}])


def test_http_client_and_bad_input() -> None:
    http = openai_http_client(SyncLimiter(None, quotas=_quotas()))
    assert type(http).__name__ == "Client"
    http.close()
    assert GEMINI_OPENAI_URL.endswith("/v1beta/openai/")
    with pytest.raises(ConfigError, match="max_retries"):
        openai_http_client(Limiter(None, quotas=_quotas()), max_retries=-1)
    with pytest.raises(ConfigError, match="Limiter"):
        openai_http_client("nope")  # type: ignore[arg-type]
    folded = openai_client(Limiter(None, quotas=_quotas()), api_key="k", max_retries=5)
    assert folded.max_retries == 0
    with pytest.raises(ConfigError, match="http_client"):
        openai_client(Limiter(None, quotas=_quotas()), api_key="k", http_client=object())
