"""End to end over real HTTP on loopback: google-genai (httpx and httpx2 backends, async and
sync), the OpenAI SDK and plain httpx, through the quota transports, to the emulator."""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from typing import Any, Literal

import anyio
import httpx
import httpx2
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

from quotaflow import RPD, RPM, TPM, Limiter, SyncLimiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import (
    Httpx2QuotaTransport,
    QuotaTransport,
    SyncHttpx2QuotaTransport,
    SyncQuotaTransport,
    genai_http_options,
)
from tests._timing import InFlight

Flavor = Literal["httpx", "httpx2"]

KEY = "test-key"
FLASH = "gemini-2.5-flash"
EMBED = "gemini-embedding-001"
PERIOD = 1.0


def _quotaflow_info(exc: genai_errors.APIError) -> dict[str, str]:
    """The ``ErrorInfo`` metadata of a local refusal (domain ``quotaflow``), as the SDK's
    error holds it."""
    (info,) = [d for d in exc.details["error"]["details"] if d.get("domain") == "quotaflow"]
    return {"code": info["reason"], **info["metadata"]}


def _config(rpm: int = 60, tpm: int = 20_000, **kw: Any) -> EmulatorConfig:
    return EmulatorConfig(
        minute_seconds=PERIOD,
        models=[
            ModelConfig(name=FLASH, rpm=rpm, tpm=tpm, rpd=10_000),
            ModelConfig(name=EMBED, kind="embed", rpm=rpm, tpm=tpm, rpd=10_000),
        ],
        **kw,
    )


def _limiter(rpm: int = 60, tpm: int = 20_000) -> Limiter:
    quota = [RPM(rpm, PERIOD), TPM(tpm, PERIOD), RPD(10_000)]
    return Limiter(tier=None, quotas={FLASH: quota, EMBED: quota})


@pytest.fixture
def served() -> Iterator[ServedEmulator]:
    with serve(_config()) as s:
        yield s


def _stats(served: ServedEmulator, model: str = FLASH) -> dict[str, Any]:
    entry: dict[str, Any] = served.emulator.stats()["models"].get(model, {})
    return entry


async def _settled(limiter: Limiter, model: str) -> tuple[int, int]:
    status = await limiter.status(model)
    assert status["tpm"].in_flight == 0 and status["rpm"].in_flight == 0
    return status["rpm"].used, status["tpm"].used


# --- google-genai ----------------------------------------------------------------------------


def _sdk_uses(flavor: Flavor, monkeypatch: pytest.MonkeyPatch) -> None:
    """google-genai 3.x picks its HTTP package from the clients in the options; 2.x (the last
    release for Python 3.10) only from ``GOOGLE_GENAI_HTTP_CLIENT``: tell it which."""
    from google.genai import _api_client

    if not inspect.signature(_api_client._get_http_client_backend).parameters:
        monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", flavor)


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", ["httpx", "httpx2"])
async def test_genai_async(
    served: ServedEmulator, flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sdk_uses(flavor, monkeypatch)
    limiter = _limiter()
    options = genai_http_options(limiter, backend=flavor, base_url=served.base_url)
    client = genai.Client(api_key=KEY, http_options=options)  # api_version: the SDK's v1
    try:
        aio = client.aio
        r = await aio.models.generate_content(model=FLASH, contents="hello " * 50)
        prompt = r.usage_metadata.prompt_token_count  # type: ignore[union-attr]
        last: Any = None
        async for chunk in await aio.models.generate_content_stream(
            model=FLASH, contents="hello " * 50
        ):
            last = chunk
        assert last.usage_metadata.prompt_token_count == prompt
        counted = await aio.models.count_tokens(model=FLASH, contents="hello " * 50)
        assert counted.total_tokens == prompt
        e = await aio.models.embed_content(model=EMBED, contents=["a" * 40, "b" * 40, "c"])
        assert e.embeddings is not None and len(e.embeddings) == 3
    finally:
        await client.aio.aclose()
        client.close()
    assert await _settled(limiter, FLASH) == (2, 2 * prompt)
    assert await _settled(limiter, EMBED) == (3, 10 + 10 + 1)  # 3 items: 3 requests
    assert _stats(served)["admitted"] == 2 and _stats(served)["count_tokens"]["admitted"] == 1
    assert _stats(served, EMBED)["requests_admitted"] == 3


@pytest.mark.parametrize("flavor", ["httpx", "httpx2"])
def test_genai_sync(
    served: ServedEmulator, flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sdk_uses(flavor, monkeypatch)
    limiter = _limiter()
    sync = SyncLimiter.sharing(limiter)
    options = genai_http_options(
        limiter, sync_limiter=sync, backend=flavor, base_url=served.base_url, api_version="v1beta"
    )
    with genai.Client(api_key=KEY, http_options=options) as client:
        r = client.models.generate_content(model=FLASH, contents="hi " * 30)
        prompt = r.usage_metadata.prompt_token_count or 0  # type: ignore[union-attr]
        chunks = list(client.models.generate_content_stream(model=FLASH, contents="hi " * 30))
        assert chunks[-1].usage_metadata.prompt_token_count == prompt  # type: ignore[union-attr]
        assert client.models.count_tokens(model=FLASH, contents="hi").total_tokens == 1
        e = client.models.embed_content(model=EMBED, contents="abcd" * 10)
        assert e.embeddings is not None
    status = sync.status(FLASH)
    assert (status["rpm"].used, status["tpm"].used, status["tpm"].in_flight) == (2, 2 * prompt, 0)
    assert sync.status(EMBED)["tpm"].used == 10


# --- OpenAI SDK ------------------------------------------------------------------------------


# asyncio only: the OpenAI SDK leaves its SSE async generators unexhausted, which trio reports
# as a ResourceWarning (an error here) even without quotaflow in the way.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("flavor", ["httpx2", "httpx"])  # the SDK's own, and legacy httpx
@pytest.mark.anyio
async def test_openai_async(served: ServedEmulator, flavor: Flavor) -> None:
    limiter = _limiter()
    http: Any = (
        httpx2.AsyncClient(transport=Httpx2QuotaTransport(limiter))
        if flavor == "httpx2"
        else httpx.AsyncClient(transport=QuotaTransport(limiter))
    )
    client = openai.AsyncOpenAI(
        api_key=KEY, base_url=served.base_url + "/v1beta/openai/", http_client=http, max_retries=0
    )
    async with client:
        messages: Any = [{"role": "user", "content": "x" * 400}]
        c = await client.chat.completions.create(model=FLASH, messages=messages)
        assert c.usage is not None and c.usage.prompt_tokens == 100
        stream = await client.chat.completions.create(
            model=FLASH, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        async with stream:
            async for _ in stream:
                pass
        emb = await client.embeddings.create(model=EMBED, input=["abcd" * 3, "abcd"])
        assert len(emb.data) == 2
    assert await _settled(limiter, FLASH) == (2, 200)
    assert await _settled(limiter, EMBED) == (2, 4)


@pytest.mark.parametrize("flavor", ["httpx2", "httpx"])
def test_openai_sync(served: ServedEmulator, flavor: Flavor) -> None:
    limiter = SyncLimiter(tier=None, quotas={FLASH: [RPM(60, PERIOD), TPM(20_000, PERIOD)]})
    http: Any = (
        httpx2.Client(transport=SyncHttpx2QuotaTransport(limiter))
        if flavor == "httpx2"
        else httpx.Client(transport=SyncQuotaTransport(limiter))
    )
    client = openai.OpenAI(
        api_key=KEY, base_url=served.base_url + "/v1beta/openai/", http_client=http, max_retries=0
    )
    with client:
        messages: Any = [{"role": "user", "content": "y" * 40}]
        client.chat.completions.create(model=FLASH, messages=messages)
        for _ in client.chat.completions.create(model=FLASH, messages=messages, stream=True):
            pass  # no include_usage: settles with the estimate (exact here)
    status = limiter.status(FLASH)
    assert (status["rpm"].used, status["tpm"].used, status["tpm"].in_flight) == (2, 20, 0)


# --- plain httpx: streaming settles without buffering ----------------------------------------

GEN = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


def _stream_client(limiter: Limiter, served: ServedEmulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=QuotaTransport(limiter),
        base_url=served.base_url,
        headers={"x-goog-api-key": KEY},
    )


STREAM_BODY = {"contents": [{"parts": [{"text": "z" * 800}]}]}  # 200 tokens


@pytest.mark.anyio
async def test_stream_settles_when_the_last_chunk_passes(served: ServedEmulator) -> None:
    limiter = _limiter()
    async with (
        _stream_client(limiter, served) as client,
        client.stream("POST", GEN, json=STREAM_BODY) as r,
    ):
        info = r.extensions["quotaflow"]
        chunks = 0
        async for _ in r.aiter_raw():
            assert not info.settled  # nothing buffered: chunks pass as they come
            chunks += 1
        assert info.settled and info.usage.input_tokens == 200 and chunks >= 2
    assert await _settled(limiter, FLASH) == (1, 200)


# asyncio only: breaking out of a response stream leaves httpx's own BoundAsyncStream
# generator unexhausted, which trio reports as a ResourceWarning (an error here).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_stream_closed_early_settles_with_what_is_known(served: ServedEmulator) -> None:
    limiter = _limiter()
    async with _stream_client(limiter, served) as client:
        async with client.stream("POST", GEN, json=STREAM_BODY) as r:
            async for _ in r.aiter_raw():
                break  # close after the first chunk
        early = r.extensions["quotaflow"]
        assert early.settled and early.usage is not None and early.usage.input_tokens == 200
    assert await _settled(limiter, FLASH) == (1, 200)


def test_sync_stream_closed_early(served: ServedEmulator) -> None:
    limiter = SyncLimiter(tier=None, quotas={FLASH: [RPM(60, PERIOD), TPM(20_000, PERIOD)]})
    transport = SyncQuotaTransport(limiter)
    with httpx.Client(transport=transport, base_url=served.base_url) as client:
        url = GEN + f"&key={KEY}"
        with client.stream("POST", url, json=STREAM_BODY) as r:
            for _ in r.iter_raw():
                break
    assert r.extensions["quotaflow"].usage.input_tokens == 200
    assert limiter.status(FLASH)["tpm"].used == 200


# --- feedback from the server ----------------------------------------------------------------


@pytest.mark.anyio
async def test_injected_429s_and_5xx(served: ServedEmulator) -> None:
    limiter = _limiter()
    emulator = served.emulator
    options = genai_http_options(limiter, backend="httpx", base_url=served.base_url, backoff=0.05)
    client = genai.Client(api_key=KEY, http_options=options)
    try:
        aio = client.aio
        # one violation, fractional delay
        emulator.inject(FLASH, 429, violations=["rpm"], retry_delay=0.25)
        t0 = anyio.current_time()
        await aio.models.generate_content(model=FLASH, contents="one")
        assert anyio.current_time() - t0 >= 0.25
        # several violations in one body
        emulator.inject(FLASH, 429, violations=["rpm", "tpm"], retry_delay=0.1)
        await aio.models.generate_content(model=FLASH, contents="two")
        # 5xx: retried with backoff
        emulator.inject(FLASH, 503, count=2)
        emulator.inject(FLASH, 500)
        await aio.models.generate_content(model=FLASH, contents="three")
        # per-day: a local 429 at once, and the limiter fails fast afterwards
        emulator.inject(FLASH, 429, violations=["rpd"], retry_delay=0.1)
        with pytest.raises(genai_errors.ClientError) as caught:
            await aio.models.generate_content(model=FLASH, contents="four")
        assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
        info = _quotaflow_info(caught.value)
        assert info["code"] == "QUOTAFLOW_QUOTA_EXHAUSTED" and info["dimension"] == "rpd"
        assert float(info["retry_after"]) > 60
        received = _stats(served)["received"]
        with pytest.raises(genai_errors.ClientError) as again:
            await aio.models.generate_content(model=FLASH, contents="five")
        assert _quotaflow_info(again.value)["reason"] == "quota_exhausted"
        assert _stats(served)["received"] == received  # never sent
    finally:
        await client.aio.aclose()
        client.close()
    stats = _stats(served)
    assert stats["injected_rejections"] == 3 and stats["rejected"] == 3 and stats["failed"] == 3


@pytest.mark.anyio
async def test_quota_value_below_ours_lowers_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with serve(_config(rpm=5)) as served:
        limiter = _limiter(rpm=8)  # we believe 8; the server says 5
        served.emulator.inject(FLASH, 429, violations=["rpm"], retry_delay=0.05)
        async with httpx.AsyncClient(
            transport=QuotaTransport(limiter), base_url=served.base_url
        ) as client:
            r = await client.post(
                f"/v1beta/models/{FLASH}:generateContent?key={KEY}",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
        assert r.status_code == 200
    assert {lim.name: lim.amount for lim in limiter.quota(FLASH)}["rpm"] == 5
    assert "configured 8" in caplog.text and KEY not in caplog.text


@pytest.mark.anyio
async def test_retries_run_out_and_sdk_error_classes_still_work(served: ServedEmulator) -> None:
    limiter = _limiter()
    options = genai_http_options(
        limiter, backend="httpx", base_url=served.base_url, max_5xx_retries=1, backoff=0.01
    )
    client = genai.Client(api_key=KEY, http_options=options)
    try:
        served.emulator.inject(FLASH, 503, count=2)
        with pytest.raises(genai_errors.ServerError) as caught:
            await client.aio.models.generate_content(model=FLASH, contents="x")
        assert caught.value.code == 503
    finally:
        await client.aio.aclose()
        client.close()


# --- a saturating load -----------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # 10 s of load: once is enough
@pytest.mark.anyio
async def test_saturating_load_no_429_and_full_use(monkeypatch: pytest.MonkeyPatch) -> None:
    rpm, tpm, periods, tasks = 40, 8000, 10, 64
    in_flight = InFlight(monkeypatch, FLASH)
    rng = random.Random(3)
    prompts = ["s" * 100 + str(i) for i in range(20)] + ["L" * 2400 + str(i) for i in range(8)]
    with serve(_config(rpm=rpm, tpm=tpm)) as served:
        limiter = _limiter(rpm=rpm, tpm=tpm)
        options = genai_http_options(limiter, base_url=served.base_url, api_version="v1beta")
        client = genai.Client(api_key=KEY, http_options=options)
        end = anyio.current_time() + periods * PERIOD
        failures: list[BaseException] = []

        async def worker(seed: int) -> None:
            wrng = random.Random(seed)
            while anyio.current_time() < end:
                text = wrng.choice(prompts)
                try:
                    await client.aio.models.generate_content(model=FLASH, contents=text)
                except Exception as exc:  # pragma: no cover - reported below
                    failures.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(worker, rng.randrange(10**6))
        finally:
            await client.aio.aclose()
            client.close()
        stats = served.emulator.stats(include_log=True)["models"][FLASH]
    assert not failures and stats["rejected"] == 0
    assert stats["max_requests_in_window"] <= rpm and stats["max_input_tokens_in_window"] <= tpm
    log = stats["log"]
    t0 = min(a["time"] for a in log)
    horizon = t0 + periods * PERIOD
    reqs = sum(a["requests"] for a in log if a["time"] < horizon) / (rpm * periods)
    toks = sum(a["tokens"] for a in log if a["time"] < horizon) / (tpm * periods)
    # each unit of capacity cycles: in flight (grant to response), then one period anchored;
    # the server counts the anchored part, the time in flight is the machine's latency
    # (measured), and of the rest the limiter leaves at most 5 % idle
    lag = in_flight.share(PERIOD)
    assert max(reqs, toks) * (1 + lag) >= 0.95, (reqs, toks, lag)
    assert min(reqs, toks) > 0.5  # both dimensions were under pressure


class _Counting(httpx.AsyncHTTPTransport):
    """The real transport, counting the requests that leave."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.url.path)
        return await super().handle_async_request(request)


@pytest.mark.anyio
@pytest.mark.parametrize("local_errors", ["response", "raise"])
async def test_a_malformed_path_is_answered_here_and_never_sent(
    served: ServedEmulator, local_errors: str
) -> None:
    from quotaflow import MalformedRequestError

    limiter = _limiter()
    inner = _Counting()
    transport = QuotaTransport(limiter, inner, local_errors=local_errors)
    hostile = [
        f"/v1beta/models/x/%2e%2e/{FLASH}:generateContent",  # a dot segment onto the model
        f"/v1beta/models/{FLASH}%2F..%2Fy:generateContent",  # an escaped slash
    ]
    async with httpx.AsyncClient(base_url=served.base_url, transport=transport) as http:
        for path in hostile:
            if local_errors == "raise":
                with pytest.raises(MalformedRequestError) as caught:
                    await http.post(f"{path}?key={KEY}", json={"contents": []})
                assert caught.value.problem and KEY not in str(caught.value)
                continue
            r = await http.post(f"{path}?key={KEY}", json={"contents": []})
            detail = r.json()["error"]
            assert (r.status_code, detail["status"]) == (400, "INVALID_ARGUMENT")
            assert detail["details"][0]["reason"] == "QUOTAFLOW_INVALID_REQUEST"
            assert KEY not in r.text
        ok = await http.post(
            f"/v1beta/models/{FLASH}:generateContent?key={KEY}",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    assert ok.status_code == 200
    assert inner.sent == [f"/v1beta/models/{FLASH}:generateContent"]  # the hostile ones: none
    assert (await limiter.status(FLASH))["rpm"].used == 1
