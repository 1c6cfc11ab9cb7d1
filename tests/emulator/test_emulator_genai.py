"""The real google-genai SDK (sync) against a served emulator, through every area."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from emulator_helpers import KEY, TickClock, small_config
from google import genai
from google.genai import errors, types

from quotaflow.emulator import ModelConfig, ServedEmulator, serve

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")

FLASH = "gemini-2.5-flash"


@pytest.fixture(scope="module")
def module_served() -> Iterator[ServedEmulator]:
    config = small_config(
        models=[
            ModelConfig(name=FLASH),
            ModelConfig(name="gemini-2.5-pro"),
            ModelConfig(name="gemini-2.0-flash", rpm=1, rpd=1000),
            ModelConfig(name="gemini-embedding-001", kind="embed", embedding_dimensions=16),
        ],
        minute_seconds=60.0,
    )
    with serve(config) as served:
        yield served


@pytest.fixture
def client(module_served: ServedEmulator) -> Iterator[genai.Client]:
    module_served.emulator.reset()
    options = types.HttpOptions(base_url=module_served.base_url, api_version="v1beta")
    with genai.Client(api_key=KEY, http_options=options) as c:
        yield c


def test_generate_is_deterministic(client: genai.Client) -> None:
    response = client.models.generate_content(model=FLASH, contents="hello world")
    again = client.models.generate_content(model=FLASH, contents="hello world")
    assert response.text == again.text
    assert response.text == ("Echo: hello world " * 6)[:96]
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count) == (3, 24)
    assert usage.total_token_count == 27
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details[0].token_count == 3
    assert response.model_version == FLASH


def test_max_output_tokens_and_json(client: genai.Client) -> None:
    config = types.GenerateContentConfig(max_output_tokens=5, response_mime_type="application/json")
    response = client.models.generate_content(model=FLASH, contents="hi", config=config)
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert json.loads(response.text or "") == {"text": "Echo: hi Echo: hi Ec"}


def test_stream_usage_is_cumulative(client: genai.Client) -> None:
    chunks = list(client.models.generate_content_stream(model=FLASH, contents="hello world"))
    assert len(chunks) == 3
    counts = [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata]
    assert counts == sorted(counts)
    assert counts[-1] == 24
    assert "".join(c.text or "" for c in chunks) == ("Echo: hello world " * 6)[:96]
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_count_tokens_equals_prompt_token_count(client: genai.Client) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part(text="Ünïcode ✓ text"), types.Part(text="b")]),
        types.Content(
            role="user",
            parts=[types.Part.from_bytes(data=b"\x89PNG....", mime_type="image/png")],
        ),
    ]
    counted = client.models.count_tokens(model=FLASH, contents=contents)
    generated = client.models.generate_content(model=FLASH, contents=contents)
    assert generated.usage_metadata is not None
    assert counted.total_tokens == generated.usage_metadata.prompt_token_count
    assert counted.total_tokens == 5 + 1 + 258


def test_embed_uses_batch_embed(client: genai.Client, module_served: ServedEmulator) -> None:
    response = client.models.embed_content(model="gemini-embedding-001", contents=["a", "bb"])
    assert response.embeddings is not None
    vectors = [e.values or [] for e in response.embeddings]
    assert [len(v) for v in vectors] == [16, 16]
    assert vectors[0] != vectors[1]
    short = client.models.embed_content(
        model="gemini-embedding-001",
        contents="a",
        config=types.EmbedContentConfig(output_dimensionality=4),
    )
    assert short.embeddings is not None
    assert len(short.embeddings[0].values or []) == 4
    stats = module_served.emulator.stats()["models"]["gemini-embedding-001"]
    assert stats["requests_admitted"] == 3


def test_models_list_pages_and_get(client: genai.Client) -> None:
    pager = client.models.list(config={"page_size": 2})
    assert len(pager.page) == 2
    names = [m.name for m in pager]
    assert names == [
        f"models/{FLASH}",
        "models/gemini-2.5-pro",
        "models/gemini-2.0-flash",
        "models/gemini-embedding-001",
    ]
    model = client.models.get(model="gemini-embedding-001")
    assert model.supported_actions is not None
    assert "embedContent" in model.supported_actions
    assert model.input_token_limit == 1_048_576


def test_files(client: genai.Client, module_served: ServedEmulator) -> None:
    data = b"0123456789" * 1000
    uploaded = client.files.upload(
        file=io.BytesIO(data), config={"mime_type": "text/plain", "display_name": "digits"}
    )
    assert uploaded.name is not None
    assert uploaded.size_bytes == len(data)
    assert uploaded.display_name == "digits"
    assert uploaded.expiration_time is not None and uploaded.create_time is not None
    assert (uploaded.expiration_time - uploaded.create_time).total_seconds() == 48 * 3600
    assert [f.name for f in client.files.list()] == [uploaded.name]
    assert client.files.get(name=uploaded.name).sha256_hash == uploaded.sha256_hash
    part = types.Part.from_uri(file_uri=uploaded.uri or "", mime_type="text/plain")
    response = client.models.generate_content(model=FLASH, contents=[part, "summarize"])
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 258 + 3
    client.files.delete(name=uploaded.name)
    assert list(client.files.list()) == []
    with pytest.raises(errors.ClientError) as info:
        client.files.get(name=uploaded.name)
    assert info.value.code == 403


def test_files_expire_after_48_hours(module_served: ServedEmulator) -> None:
    clock = TickClock()
    with serve(small_config(), clock=clock) as served:
        options = types.HttpOptions(base_url=served.base_url, api_version="v1beta")
        with genai.Client(api_key=KEY, http_options=options) as c:
            c.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
            clock.advance(48 * 3600 - 1)
            assert len(list(c.files.list())) == 1
            clock.advance(1)
            assert list(c.files.list()) == []


def test_caches(client: genai.Client) -> None:
    cache = client.caches.create(
        model=FLASH,
        config=types.CreateCachedContentConfig(
            contents=["word " * 100], system_instruction="be brief", ttl="60s", display_name="c"
        ),
    )
    assert cache.name is not None and cache.usage_metadata is not None
    assert cache.usage_metadata.total_token_count == 125 + 2
    assert [c.name for c in client.caches.list()] == [cache.name]
    updated = client.caches.update(name=cache.name, config={"ttl": "7200s"})
    assert updated.expire_time is not None and cache.expire_time is not None
    assert updated.expire_time > cache.expire_time
    assert client.caches.get(name=cache.name).display_name == "c"
    response = client.models.generate_content(
        model=FLASH, contents="hi", config=types.GenerateContentConfig(cached_content=cache.name)
    )
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.cached_content_token_count, usage.prompt_token_count) == (127, 128)
    client.caches.delete(name=cache.name)
    assert list(client.caches.list()) == []


def test_batches(client: genai.Client) -> None:
    request = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    job = client.batches.create(model=FLASH, src=[request, request], config={"display_name": "b"})
    assert job.name is not None
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.inlined_responses is not None
    first = done.dest.inlined_responses[0].response
    assert first is not None and first.text == ("Echo: hi " * 11)[:96]
    assert [b.name for b in client.batches.list()] == [job.name]
    client.batches.cancel(name=job.name)  # already done: unchanged
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_SUCCEEDED
    client.batches.delete(name=job.name)
    assert list(client.batches.list()) == []


def test_batch_cancel_before_completion(module_served: ServedEmulator) -> None:
    clock = TickClock()
    with serve(small_config(batch_delay_seconds=100.0), clock=clock) as served:
        options = types.HttpOptions(base_url=served.base_url, api_version="v1beta")
        with genai.Client(api_key=KEY, http_options=options) as c:
            request = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
            job = c.batches.create(model=FLASH, src=[request])
            assert job.name is not None and job.state == types.JobState.JOB_STATE_PENDING
            clock.advance(60)
            assert c.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
            c.batches.cancel(name=job.name)
            clock.advance(60)
            assert c.batches.get(name=job.name).state == types.JobState.JOB_STATE_CANCELLED


def test_tuned_models(client: genai.Client) -> None:
    dataset = types.TuningDataset(examples=[types.TuningExample(text_input="a", output="b")])
    job = client.tunings.tune(base_model=f"models/{FLASH}", training_dataset=dataset)
    assert job.name is not None and job.name.startswith("tunedModels/")
    got = client.tunings.get(name=job.name)
    assert got.state == types.JobState.JOB_STATE_SUCCEEDED
    assert got.base_model == f"models/{FLASH}"
    listed = [m.name for m in client.models.list(config={"query_base": False})]
    assert listed == [job.name]
    response = client.models.generate_content(model=job.name, contents="tuned")
    assert response.model_version == job.name
    assert response.text is not None and response.text.startswith("Echo: tuned")
    client.models.delete(model=job.name)
    with pytest.raises(errors.ClientError) as info:
        client.tunings.get(name=job.name)
    assert info.value.code == 404


def test_sdk_sees_429_with_details(client: genai.Client) -> None:
    client.models.generate_content(model="gemini-2.0-flash", contents="one")
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model="gemini-2.0-flash", contents="two")
    assert info.value.code == 429
    assert info.value.status == "RESOURCE_EXHAUSTED"
    details = info.value.details["error"]["details"]
    assert details[1]["violations"][0]["quotaValue"] == "1"


def test_default_api_version_v1(module_served: ServedEmulator) -> None:
    options = types.HttpOptions(base_url=module_served.base_url)  # google-genai 3.x: v1
    with genai.Client(api_key=KEY, http_options=options) as c:
        assert c.models.generate_content(model=FLASH, contents="v1").text
        assert c.models.count_tokens(model=FLASH, contents="v1").total_tokens == 1


def test_wrong_key_through_sdk(module_served: ServedEmulator) -> None:
    options = types.HttpOptions(base_url=module_served.base_url, api_version="v1beta")
    with (
        genai.Client(api_key="nope", http_options=options) as c,
        pytest.raises(errors.ClientError) as info,
    ):
        c.models.generate_content(model=FLASH, contents="x")
    assert info.value.code == 400
    assert info.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
