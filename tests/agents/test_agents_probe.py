"""Ways past an agent's policy that stay closed, each through google-genai and the agent
transports against the emulator over loopback: a batch's input file naming another agent's
cache, a batch job spending none of the agent's budget, a file URI naming two files."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from agents_helpers import FLASH, KEY, EmulatorRequests
from google import genai
from google.genai import errors, types

from quotaflow import RPD, RPM, TPM, Limiter
from quotaflow.agents import Agents, AuditLog, CallbackSink, Policy
from quotaflow.agents.audit import AuditRecord
from quotaflow.emulator import ServedEmulator

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")

OWN = {"access": "write", "own": True}


class Clients:
    def __init__(self, served: ServedEmulator, policy: dict[str, Any]) -> None:
        q = [RPM(600, 1.0), TPM(1_000_000, 1.0), RPD(100_000)]
        self.agents = Agents(Limiter(None, quotas={FLASH: q}), Policy.from_dict(policy))
        self.records: list[AuditRecord] = []
        self.log = AuditLog([CallbackSink(self.records.append)])
        self.served = served
        self.made: list[genai.Client] = []

    def __call__(self, agent: str) -> genai.Client:
        handle = self.agents.agent(agent, audit=self.log)
        options = handle.http_options(base_url=self.served.base_url, api_version="v1beta")
        client = genai.Client(api_key=KEY, http_options=options)
        self.made.append(client)
        return client

    def close(self) -> None:
        for c in self.made:
            c.close()
        self.log.close()


@pytest.fixture
def clients(served: ServedEmulator) -> Iterator[Any]:
    made: list[Clients] = []

    def make(policy: dict[str, Any]) -> Clients:
        made.append(Clients(served, policy))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _jsonl(*requests: dict[str, Any]) -> bytes:
    return b"".join(
        json.dumps({"key": f"k{i}", "request": r}).encode() + b"\n" for i, r in enumerate(requests)
    )


HI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def test_a_batch_input_file_cannot_use_another_agents_cache(
    clients: Any, requests_seen: EmulatorRequests
) -> None:
    # mallory holds no caching grant: naming alice's cache in a request is refused, inline or
    # in the input file of a batch (whose lines are not read here)
    policy = {
        "agents": {
            "alice": {"grants": {"caching": OWN, "content": "write"}},
            "mallory": {"grants": {"files": OWN, "content": "write", "batch": OWN}},
            "trusted": {
                "grants": {"files": "write", "caching": "read", "tuning": "read", "batch": "write"}
            },
        }
    }
    make = clients(policy)
    alice, mallory, trusted = make("alice"), make("mallory"), make("trusted")
    cache = alice.caches.create(
        model=FLASH, config=types.CreateCachedContentConfig(contents=["alice's " * 20], ttl="600s")
    )
    assert cache.name
    line = _jsonl({**HI, "cachedContent": cache.name})
    f = mallory.files.upload(file=io.BytesIO(line), config={"mime_type": "application/jsonl"})
    assert f.name
    requests_seen.lines.clear()
    inline: Any = [{**HI, "config": {"cached_content": cache.name}}]
    with pytest.raises(errors.ClientError, match="PERMISSION_DENIED"):
        mallory.batches.create(model=FLASH, src=inline)
    with pytest.raises(errors.ClientError, match="PERMISSION_DENIED") as info:
        mallory.batches.create(model=FLASH, src=f.name)
    assert "input file" in str(info.value)
    assert not any("batchGenerateContent" in x for x in requests_seen.lines), requests_seen.lines
    # an agent that may use every resource such a request can name runs batches from files
    job = trusted.batches.create(model=FLASH, src=f.name)
    assert job.name and any("batchGenerateContent -> 200" in x for x in requests_seen.lines)


def test_a_batch_job_spends_the_agents_budget(
    clients: Any, requests_seen: EmulatorRequests
) -> None:
    policy = {
        "agents": {
            "a": {
                "grants": {"batch": "write", "content": "write"},
                "budget": {"requests_per_day": 10},
            }
        }
    }
    a = clients(policy)("a")
    four: Any = [HI] * 4
    assert a.batches.create(model=FLASH, src=four).name
    assert a.batches.create(model=FLASH, src=four).name
    with pytest.raises(errors.ClientError, match="RESOURCE_EXHAUSTED") as info:
        a.batches.create(model=FLASH, src=four)  # 12 requests of a budget of 10
    assert "requests_per_day" in str(info.value)
    assert sum("batchGenerateContent -> 200" in x for x in requests_seen.lines) == 2
    a.models.generate_content(model=FLASH, contents="hi")
    a.models.generate_content(model=FLASH, contents="hi")
    with pytest.raises(errors.ClientError, match="RESOURCE_EXHAUSTED"):
        a.models.generate_content(model=FLASH, contents="hi")


def test_every_file_a_file_uri_names_is_checked(
    clients: Any, requests_seen: EmulatorRequests, served: ServedEmulator
) -> None:
    # the server reads the first "files/<id>" of the URI, wherever it stands; the policy
    # checks every one
    policy = {"agents": {n: {"grants": {"files": OWN, "content": "write"}} for n in ("a", "m")}}
    make = clients(policy)
    alice, mallory = make("a"), make("m")
    theirs = alice.files.upload(file=io.BytesIO(b"theirs"), config={"mime_type": "text/plain"})
    mine = mallory.files.upload(file=io.BytesIO(b"mine"), config={"mime_type": "text/plain"})
    assert theirs.name and mine.name
    base = f"{served.base_url}/v1beta"
    uris = [
        f"{base}/x{theirs.name}/{mine.name}",
        f"{base}/{mine.name}/../{theirs.name}",
        f"{theirs.name}.txt",
    ]
    requests_seen.lines.clear()
    for uri in uris:
        part = types.Part(file_data=types.FileData(file_uri=uri, mime_type="text/plain"))
        with pytest.raises(errors.ClientError, match="PERMISSION_DENIED") as info:
            mallory.models.generate_content(model=FLASH, contents=[part, "hi"])
        assert "quotaflow policy" in str(info.value), uri
    assert not any("generateContent" in x for x in requests_seen.lines), requests_seen.lines
    part = types.Part(
        file_data=types.FileData(file_uri=f"{base}/{mine.name}", mime_type="text/plain")
    )
    assert mallory.models.generate_content(model=FLASH, contents=[part, "hi"]).text
