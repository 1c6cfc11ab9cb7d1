"""The ``openai`` extra: the OpenAI SDK through quotaflow's transports, sync and async,
against the emulator served from another venv (argv[1]: its python)."""

from __future__ import annotations

import sys

import anyio
import openai
from _common import check, emulator, installed, main

import quotaflow
from quotaflow import transports as transport

MODEL = "gemini-2.5-flash"
CHAT = [{"role": "user", "content": "hi"}]


def run() -> str:
    installed()
    # openai 2.x+ sends through httpx2, older releases through httpx
    http2 = any(c.__module__.startswith("httpx2") for c in openai.DefaultHttpxClient.__mro__)
    sync_t = transport.SyncHttpx2QuotaTransport if http2 else transport.SyncQuotaTransport
    async_t = transport.Httpx2QuotaTransport if http2 else transport.QuotaTransport
    with emulator(sys.argv[1]) as url:
        base_url = f"{url}/v1beta/openai/"
        limiter = quotaflow.Limiter(tier="tier1")
        sync = quotaflow.SyncLimiter.sharing(limiter)
        with openai.OpenAI(
            api_key="test-key",
            base_url=base_url,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(transport=sync_t(sync)),
        ) as client:
            reply = client.chat.completions.create(model=MODEL, messages=CHAT)  # type: ignore[arg-type]
            check(reply.choices and reply.usage, f"sync chat completion: {reply}")

        async def use() -> int:
            async with openai.AsyncOpenAI(
                api_key="test-key",
                base_url=base_url,
                max_retries=0,
                http_client=openai.DefaultAsyncHttpxClient(transport=async_t(limiter)),
            ) as aclient:
                areply = await aclient.chat.completions.create(model=MODEL, messages=CHAT)  # type: ignore[arg-type]
                check(areply.choices and areply.usage, f"async chat completion: {areply}")
            status = await limiter.status(MODEL)
            return status["rpm"].used

        used = anyio.run(use)
        check(used == 2, f"limiter counted {used} requests, expected 2")
    via = "httpx2" if http2 else "httpx"
    return f"openai {openai.__version__} (via {via}): sync + async chat, limiter counted 2"


if __name__ == "__main__":
    main(run)
