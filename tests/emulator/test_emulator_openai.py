"""The OpenAI SDK against the OpenAI-compatible surface (``/v1beta/openai/``)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest
from emulator_helpers import KEY, small_config

from quotaflow.emulator import ServedEmulator, serve

FLASH = "gemini-2.5-flash"


@pytest.fixture
def served_oa() -> Iterator[ServedEmulator]:
    with serve(small_config(minute_seconds=60.0)) as served:
        yield served


@pytest.fixture
def client(served_oa: ServedEmulator) -> Iterator[openai.OpenAI]:
    url = f"{served_oa.base_url}/v1beta/openai/"
    with openai.OpenAI(api_key=KEY, base_url=url, max_retries=0) as c:
        yield c


def test_chat_completion(client: openai.OpenAI, served_oa: ServedEmulator) -> None:
    completion = client.chat.completions.create(
        model=FLASH,
        messages=[
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "hello there"},
        ],
    )
    assert completion.choices[0].message.content == ("Echo: hello there " * 6)[:96]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 + 3  # system instruction + message
    assert completion.usage.completion_tokens == 24
    assert completion.usage.total_tokens == 29
    assert served_oa.emulator.stats()["models"][FLASH]["tokens_admitted"] == 5


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=f"models/{FLASH}",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=10,
    )
    with stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ("Echo: stream me " * 3)[:40]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 10)


def test_embeddings_cost_one_request_each(client: openai.OpenAI, served_oa: ServedEmulator) -> None:
    result = client.embeddings.create(
        model="gemini-embedding-001", input=["a", "b", "c"], dimensions=8
    )
    assert [len(d.embedding) for d in result.data] == [8, 8, 8]
    assert result.usage.prompt_tokens == 3
    embed = served_oa.emulator.stats()["models"]["gemini-embedding-001"]
    assert embed["requests_admitted"] == 3
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model="gemini-embedding-001", input=["d", "e", "f"])
    body = info.value.body  # the SDK keeps the JSON list as it came
    assert isinstance(body, list) and body[0]["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_base64_embeddings(served_oa: ServedEmulator) -> None:
    response = httpx.post(
        f"{served_oa.base_url}/v1beta/openai/embeddings",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "gemini-embedding-001", "input": "a", "encoding_format": "base64"},
    )
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert len(struct.unpack("<3072f", raw)) == 3072


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [
        "models/gemini-2.5-flash",
        "models/gemini-2.5-pro",
        "models/gemini-embedding-001",
    ]
    assert client.models.retrieve(f"models/{FLASH}").owned_by == "google"


def test_429_is_a_list_holding_one_google_error(served_oa: ServedEmulator) -> None:
    url = f"{served_oa.base_url}/v1beta/openai/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": FLASH, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(headers=headers) as http:
        statuses = [http.post(url, json=body).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        response = http.post(url, json=body)
    assert response.status_code == 429
    payload = response.json()
    assert isinstance(payload, list) and len(payload) == 1
    error = payload[0]["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    violation = error["details"][1]["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"


def test_openai_errors_without_details() -> None:
    with serve(small_config(openai_error_details=False)) as served:
        response = httpx.post(
            f"{served.base_url}/v1beta/openai/chat/completions",
            headers={"Authorization": "Bearer wrong"},
            json={"model": FLASH, "messages": [{"role": "user", "content": "x"}]},
        )
    assert response.status_code == 400
    assert response.json() == [
        {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
            }
        }
    ]


def test_shares_quota_with_native_routes(client: openai.OpenAI, served_oa: ServedEmulator) -> None:
    native = f"{served_oa.base_url}/v1beta/models/{FLASH}:generateContent"
    for _ in range(3):
        body = {"contents": [{"parts": [{"text": "n"}]}]}
        assert httpx.post(native, json=body, headers={"x-goog-api-key": KEY}).status_code == 200
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "x"}])


def test_bad_key(served_oa: ServedEmulator) -> None:
    url = f"{served_oa.base_url}/v1beta/openai/"
    with (
        openai.OpenAI(api_key="wrong", base_url=url, max_retries=0) as c,
        pytest.raises(openai.BadRequestError) as info,
    ):
        c.models.list()
    assert info.value.status_code == 400


# openai's AsyncStream stops at [DONE] without closing its (httpx2) async generators; trio's
# finalizer reports that (an SDK issue, not the emulator's).
@pytest.mark.filterwarnings(
    "ignore:Async generator '(openai._streaming|httpx2._models|httpcore2._async):ResourceWarning"
)
@pytest.mark.anyio
async def test_async_client() -> None:
    async with serve(small_config()) as served:
        url = f"{served.base_url}/v1beta/openai/"
        async with openai.AsyncOpenAI(api_key=KEY, base_url=url, max_retries=0) as c:
            completion = await c.chat.completions.create(
                model=FLASH, messages=[{"role": "user", "content": "async"}]
            )
            assert completion.choices[0].message.content == ("Echo: async " * 9)[:96]
            stream = await c.chat.completions.create(
                model=FLASH,
                messages=[{"role": "user", "content": "async"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                chunks = [chunk async for chunk in stream]
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24
            embedded = await c.embeddings.create(model="gemini-embedding-001", input="q")
            assert len(embedded.data[0].embedding) == 3072
