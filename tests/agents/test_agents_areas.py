"""Every area, allowed and denied, read and write, through the real google-genai SDK (sync,
its default HTTP package) against the emulator. A denied call never reaches the emulator."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agents_helpers import EMBED, FLASH, KEY, EmulatorRequests, Records, limiter
from google import genai
from google.genai import errors, types

from quotaflow.emulator import ServedEmulator

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")

AREAS = ("content", "embeddings", "counting", "files", "caching", "batch", "tuning")
POLICY = {
    "agents": {
        "reader": {"grants": dict.fromkeys(AREAS, "read")},
        "writer": {"grants": dict.fromkeys(AREAS, "write")},
    }
}
REQUEST = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
Op = Callable[[genai.Client], Any]

# per area: (a read call, a write call); embeddings has no read method, counting no write
CALLS: dict[str, tuple[Op | None, Op | None]] = {
    "content": (
        lambda c: list(c.models.list()),
        lambda c: c.models.generate_content(model=FLASH, contents="hello"),
    ),
    "embeddings": (None, lambda c: c.models.embed_content(model=EMBED, contents="abc")),
    "counting": (lambda c: c.models.count_tokens(model=FLASH, contents="hello"), None),
    "files": (
        lambda c: list(c.files.list()),
        lambda c: c.files.upload(file=io.BytesIO(b"data"), config={"mime_type": "text/plain"}),
    ),
    "caching": (
        lambda c: list(c.caches.list()),
        lambda c: c.caches.create(
            model=FLASH, config=types.CreateCachedContentConfig(contents=["word " * 10])
        ),
    ),
    "batch": (
        lambda c: list(c.batches.list()),
        lambda c: c.batches.create(model=FLASH, src=[REQUEST]),  # type: ignore[arg-type]
    ),
    "tuning": (
        lambda c: list(c.models.list(config={"query_base": False})),  # GET tunedModels
        lambda c: c.tunings.tune(
            base_model=f"models/{FLASH}",
            training_dataset=types.TuningDataset(
                examples=[types.TuningExample(text_input="a", output="b")]
            ),
        ),
    ),
}


@pytest.fixture
def clients(served: ServedEmulator, records: Records) -> Iterator[dict[str, genai.Client]]:
    lim = limiter(POLICY)
    made = {
        name: genai.Client(
            api_key=KEY,
            http_options=lim.agent(name, audit=records.log).http_options(
                base_url=served.base_url, api_version="v1beta"
            ),
        )
        for name in ("reader", "writer", "stranger")
    }
    yield made
    for c in made.values():
        c.close()


def _denied(op: Op, client: genai.Client, seen: EmulatorRequests) -> str:
    seen.clear()
    with pytest.raises(errors.ClientError) as info:
        op(client)
    assert info.value.code == 403 and info.value.status == "PERMISSION_DENIED"
    assert seen.lines == [], "a denied call reached the emulator"
    return str(info.value.message)


@pytest.mark.parametrize("area", AREAS)
def test_area_allowed_and_denied_both_ways(
    area: str,
    clients: dict[str, genai.Client],
    requests_seen: EmulatorRequests,
    records: Records,
) -> None:
    read, write = CALLS[area]
    if read is not None:
        read(clients["reader"])  # read grant: a read passes
        read(clients["writer"])  # write includes read
        message = _denied(read, clients["stranger"], requests_seen)
        assert "'stranger'" in message and "no such agent" in message
    if write is not None:
        message = _denied(write, clients["reader"], requests_seen)
        assert "agent 'reader'" in message and f"area {area!r}" in message
        assert "needs 'write'" in message and "holds 'read'" in message
        requests_seen.clear()
        write(clients["writer"])
        assert requests_seen.lines, "an allowed call reached the emulator"
    got = records.flushed()
    assert {r.area for r in got} == {area}
    denied = [r for r in got if r.decision == "denied"]
    assert all(r.status == 403 and r.outcome == "denied" for r in denied)
    assert {r.reason for r in denied} <= {"unknown_agent", "read_only"}
    assert all(r.decision == "allowed" for r in got if r.agent == "writer")


def test_narrowed_to_models_and_methods(
    served: ServedEmulator, requests_seen: EmulatorRequests, records: Records
) -> None:
    policy = {
        "agents": {
            "researcher": {
                "grants": {
                    "content": {"access": "write", "models": ["gemini-2.5-flash*"]},
                    "counting": {"access": "read", "models": ["gemini-2.5-flash*"]},
                    "files": {"access": "write", "deny": ["delete"]},
                }
            }
        }
    }
    lim = limiter(policy)
    options = lim.agent("researcher", audit=records.log).http_options(base_url=served.base_url)
    with genai.Client(api_key=KEY, http_options=options) as client:
        client.models.generate_content(model=FLASH, contents="ok")
        client.models.count_tokens(model=FLASH, contents="ok")
        message = _denied(
            lambda c: c.models.generate_content(model="gemini-2.5-pro", contents="x"),
            client,
            requests_seen,
        )
        assert "'gemini-2.5-pro' matches none of ['gemini-2.5-flash*']" in message
        _denied(
            lambda c: c.models.count_tokens(model="gemini-2.5-pro", contents="x"),
            client,
            requests_seen,
        )
        f = client.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "text/plain"})
        assert f.name is not None
        name = f.name
        message = _denied(lambda c: c.files.delete(name=name), client, requests_seen)
        assert "excludes 'delete'" in message
    reasons = [r.reason for r in records.flushed() if r.decision == "denied"]
    assert reasons == ["model_denied", "model_denied", "method_denied"]
