"""The ``genai`` extra: google-genai through ``genai_http_options``, sync and async, against
the emulator served from another venv (argv[1]: its python)."""

from __future__ import annotations

import sys

import anyio
from _common import check, emulator, installed, main
from google import genai

import quotaflow
from quotaflow.transports import genai_http_options

MODEL = "gemini-2.5-flash"


def run() -> str:
    installed()
    with emulator(sys.argv[1]) as url:
        limiter = quotaflow.Limiter(tier="tier1")
        options = genai_http_options(limiter, base_url=url, api_version="v1beta")
        client = genai.Client(api_key="test-key", http_options=options)
        reply = client.models.generate_content(model=MODEL, contents="hi")
        check(reply.text, f"sync generate_content: no text in {reply}")

        async def use() -> int:
            areply = await client.aio.models.generate_content(model=MODEL, contents="hello")
            check(areply.text, f"async generate_content: no text in {areply}")
            status = await limiter.status(MODEL)
            return status["rpm"].used

        used = anyio.run(use)
        check(used == 2, f"limiter counted {used} requests, expected 2")
        client.close()
    return f"google-genai {genai.__version__}: sync + async generate_content, limiter counted 2"


if __name__ == "__main__":
    main(run)
