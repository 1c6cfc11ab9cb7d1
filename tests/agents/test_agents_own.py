"""The ``own`` scope: an agent may change or delete only what it created (recorded in memory
from the create responses), through google-genai against the emulator."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from agents_helpers import FLASH, KEY, EmulatorRequests, Records, limiter
from google import genai
from google.genai import errors, types

from quotaflow.emulator import ServedEmulator

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")

OWN = {"access": "write", "own": True}
POLICY = {
    "agents": {
        name: {"grants": {"files": OWN, "caching": OWN, "batch": OWN, "tuning": OWN}}
        for name in ("alice", "bob")
    }
}


@pytest.fixture
def pair(served: ServedEmulator, records: Records) -> Iterator[tuple[genai.Client, genai.Client]]:
    lim = limiter(POLICY)

    def client(name: str) -> genai.Client:
        handle = lim.agent(name, audit=records.log)
        return genai.Client(
            api_key=KEY,
            http_options=handle.http_options(base_url=served.base_url, api_version="v1beta"),
        )

    alice, bob = client("alice"), client("bob")
    yield alice, bob
    alice.close()
    bob.close()


def _forbidden(seen: EmulatorRequests) -> pytest.RaisesExc[errors.ClientError]:
    seen.clear()
    return pytest.raises(errors.ClientError, match="PERMISSION_DENIED")


def test_only_the_creator_may_delete_or_update(
    pair: tuple[genai.Client, genai.Client], requests_seen: EmulatorRequests, records: Records
) -> None:
    alice, bob = pair
    f = alice.files.upload(file=io.BytesIO(b"mine"), config={"mime_type": "text/plain"})
    cache = alice.caches.create(
        model=FLASH, config=types.CreateCachedContentConfig(contents=["w " * 10], ttl="60s")
    )
    job = alice.batches.create(
        model=FLASH,
        src=[{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}],  # type: ignore[arg-type]
    )
    tuned = alice.tunings.tune(
        base_model=f"models/{FLASH}",
        training_dataset=types.TuningDataset(
            examples=[types.TuningExample(text_input="a", output="b")]
        ),
    )
    assert f.name and cache.name and job.name and tuned.name
    # bob may read them all, but change none
    assert [x.name for x in bob.files.list()] == [f.name]
    with _forbidden(requests_seen) as info:
        bob.files.delete(name=f.name)
    assert "created by agent 'alice', not by this agent" in str(info.value)
    with _forbidden(requests_seen):
        bob.caches.update(name=cache.name, config={"ttl": "600s"})
    with _forbidden(requests_seen):
        bob.caches.delete(name=cache.name)
    with _forbidden(requests_seen):
        bob.batches.cancel(name=job.name)
    with _forbidden(requests_seen):
        bob.batches.delete(name=job.name)
    with _forbidden(requests_seen):
        bob.models.delete(model=tuned.name)
    assert requests_seen.lines == []
    # alice may
    alice.caches.update(name=cache.name, config={"ttl": "600s"})
    alice.files.delete(name=f.name)
    alice.caches.delete(name=cache.name)
    alice.batches.delete(name=job.name)
    alice.models.delete(model=tuned.name)
    got = records.flushed()
    assert sum(r.reason == "not_owner" for r in got) == 6
    created = {r.resource for r in got if r.agent == "alice" and r.method in ("upload", "create")}
    assert {f.name, cache.name} <= created


def test_resources_of_unknown_creators_are_nobodys(
    served: ServedEmulator, pair: tuple[genai.Client, genai.Client], requests_seen: EmulatorRequests
) -> None:
    """A cache made outside quotaflow has no known owner: an ``own`` grant cannot delete it."""
    body = {"model": f"models/{FLASH}", "contents": [{"parts": [{"text": "x " * 5}]}]}
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as raw:
        name = raw.post("/v1beta/cachedContents", json=body).json()["name"]
    alice, _ = pair
    with _forbidden(requests_seen) as info:
        alice.caches.delete(name=name)
    assert "created by no agent known to quotaflow" in str(info.value)
    assert [c.name for c in alice.caches.list()] == [name]
