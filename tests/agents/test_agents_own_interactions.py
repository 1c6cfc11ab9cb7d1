"""The ``own`` scope over the Interactions API: an interaction an agent creates (a streamed one
from its first event) is its own; under ``content = {access = "write", own = true}`` only its
creator may read, cancel, delete or continue it. Through google-genai's ``client.interactions``
and plain httpx on the agent transports, against the emulator over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agents_helpers import FLASH, KEY, EmulatorRequests, Records, limiter
from google import genai

# google-genai raises the Interactions API's errors from this module (not from genai.errors)
from google.genai._interactions_errors import APIStatusError

from quotaflow.agents import Agents
from quotaflow.emulator import ServedEmulator

OWN = {"access": "write", "own": True}
POLICY = {
    "agents": {
        "alice": {"grants": {"content": OWN}},
        "mallory": {"grants": {"content": OWN}},
        "carol": {"grants": {"content": "write"}},  # no own: any interaction is hers to use
    }
}


@pytest.fixture
def agents() -> Agents:
    return limiter(POLICY)


@pytest.fixture
def clients(
    served: ServedEmulator, records: Records, agents: Agents
) -> Iterator[dict[str, genai.Client]]:
    made: Any = {
        name: genai.Client(
            api_key=KEY,
            http_options=agents.agent(name, audit=records.log).http_options(
                base_url=served.base_url, api_version="v1beta"
            ),
        )
        for name in POLICY["agents"]
    }
    yield made
    for c in made.values():
        c.close()


def _received(served: ServedEmulator) -> int:
    return int(served.emulator.stats()["models"].get(FLASH, {}).get("received", 0))


def _forbidden(seen: EmulatorRequests) -> pytest.RaisesExc[APIStatusError]:
    seen.clear()
    return pytest.raises(APIStatusError, match="PERMISSION_DENIED")


def test_only_the_creator_may_read_cancel_or_delete_an_interaction(
    clients: dict[str, genai.Client],
    served: ServedEmulator,
    requests_seen: EmulatorRequests,
    records: Records,
) -> None:
    alice, mallory, carol = clients["alice"], clients["mallory"], clients["carol"]
    made: Any = alice.interactions.create(model=FLASH, input="alice's notes " * 5)
    streamed: Any = list(alice.interactions.create(model=FLASH, input="alice streams", stream=True))
    assert streamed[0].event_type == "interaction.created"
    for ident in (made.id, streamed[0].interaction.id):
        assert ident
        with _forbidden(requests_seen) as info:
            mallory.interactions.get(ident)
        assert info.value.status_code == 403
        assert f"interactions/{ident} was created by agent 'alice', not by this agent" in str(
            info.value
        )
        with _forbidden(requests_seen):
            mallory.interactions.cancel(ident)
        with _forbidden(requests_seen):
            mallory.interactions.delete(ident)
        assert requests_seen.lines == []  # answered here: nothing reached the emulator
    # the grant without own reads it; the owner reads, cancels and deletes it
    assert carol.interactions.get(made.id).id == made.id
    assert alice.interactions.get(made.id).status == "completed"
    assert alice.interactions.cancel(made.id).id == made.id
    alice.interactions.delete(made.id)
    with pytest.raises(APIStatusError) as gone:
        carol.interactions.get(made.id)
    assert gone.value.status_code == 404  # the emulator's answer: deleted upstream
    got = records.flushed()
    denied = [r for r in got if r.reason == "not_owner"]
    assert len(denied) == 6 and {r.agent for r in denied} == {"mallory"}
    assert {r.method for r in denied} == {
        "interactions.get",
        "interactions.cancel",
        "interactions.delete",
    }
    assert {r.resource for r in got if r.method == "interactions.create"} == {
        f"interactions/{made.id}",
        f"interactions/{streamed[0].interaction.id}",
    }


def test_a_streamed_interaction_is_its_creators_from_the_first_event(
    clients: dict[str, genai.Client], requests_seen: EmulatorRequests
) -> None:
    alice, mallory = clients["alice"], clients["mallory"]
    stream: Any = iter(
        alice.interactions.create(model=FLASH, input="long answer " * 20, stream=True)
    )
    first: Any = next(stream)  # the rest of the stream is still unread
    ident = first.interaction.id
    with _forbidden(requests_seen):
        mallory.interactions.cancel(ident)
    assert requests_seen.lines == []
    assert alice.interactions.cancel(ident).id == ident  # reaches the emulator
    assert any(f"/interactions/{ident}/cancel -> 200" in line for line in requests_seen.lines)
    events: Any = list(stream)
    assert events[-1].event_type == "interaction.completed"


def test_continuing_another_agents_interaction_is_refused(
    clients: dict[str, genai.Client], served: ServedEmulator, requests_seen: EmulatorRequests
) -> None:
    alice, mallory, carol = clients["alice"], clients["mallory"], clients["carol"]
    first: Any = alice.interactions.create(model=FLASH, input="the secret plan")
    before = _received(served)
    with _forbidden(requests_seen) as info:
        mallory.interactions.create(
            model=FLASH, input="and what came before?", previous_interaction_id=first.id
        )
    assert f"interactions/{first.id} in its body" in str(info.value)
    assert "was not created by this agent" in str(info.value)
    with _forbidden(requests_seen):
        list(
            mallory.interactions.create(
                model=FLASH, input="stream it", previous_interaction_id=first.id, stream=True
            )
        )
    assert _received(served) == before and requests_seen.lines == []
    follow: Any = alice.interactions.create(
        model=FLASH, input="go on", previous_interaction_id=first.id
    )
    carol.interactions.create(model=FLASH, input="go on", previous_interaction_id=first.id)
    assert _received(served) == before + 2
    # the continuation is a new interaction of its own creator's
    with _forbidden(requests_seen):
        mallory.interactions.delete(follow.id)
    alice.interactions.delete(follow.id)


def _transport_client(agents: Agents, name: str, served: ServedEmulator, records: Records) -> Any:
    return httpx.AsyncClient(
        base_url=served.base_url,
        headers={"x-goog-api-key": KEY},
        transport=agents.agent(name, audit=records.log).transport(),
    )


async def _stream_ids(http: httpx.AsyncClient, body: dict[str, Any], agents: Agents) -> list[str]:
    """The interaction ids in the events of a streamed create, read as they come; each is
    already recorded under its creator when the caller reads it."""
    ids: list[str] = []
    async with http.stream("POST", "/v1beta/interactions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "interaction" in event:
                    ids.append(event["interaction"]["id"])
                    assert agents.ownership.owner(f"interactions/{ids[-1]}") == "alice"
    return ids


@pytest.mark.anyio
async def test_every_spelling_of_an_interaction_is_held_to_its_owner(
    served: ServedEmulator, agents: Agents, records: Records, requests_seen: EmulatorRequests
) -> None:
    """On the async transport (asyncio and trio): a streamed create is owned; an encoded id,
    the ``:cancel`` spelling, a method the API does not have and every spelling of
    ``previous_interaction_id`` are checked."""
    async with (
        _transport_client(agents, "alice", served, records) as alice,
        _transport_client(agents, "mallory", served, records) as mallory,
    ):
        ids = await _stream_ids(alice, {"model": FLASH, "input": "alice's"}, agents)
        ident = ids[0]
        encoded = "".join(f"%{ord(c):02X}" for c in ident)
        requests_seen.clear()
        attempts = [
            mallory.get(f"/v1beta/interactions/{encoded}"),
            mallory.post(f"/v1beta/interactions/{ident}:cancel"),
            mallory.post(f"/v1beta/interactions/{ident}/cancel"),
            mallory.delete(f"/v1beta/interactions/{ident}"),
            mallory.patch(f"/v1beta/interactions/{ident}", json={"store": False}),  # no such
        ]
        for key in ("previous_interaction_id", "previousInteractionId", "Previous_Interaction_ID"):
            body = {"model": FLASH, "input": "more", key: ident}
            attempts.append(mallory.post("/v1beta/interactions", json=body))
        answers = [await a for a in attempts]
        assert [r.status_code for r in answers] == [403] * len(answers)
        for r in answers:
            error = r.json()["error"]
            assert error["status"] == "PERMISSION_DENIED"
            assert error["details"][0]["metadata"]["reason"] == "not_owner"
        assert requests_seen.lines == []
        ok = await alice.post(f"/v1beta/interactions/{ident}:cancel")
        assert ok.status_code == 200
        assert (await alice.delete(f"/v1beta/interactions/{ident}")).status_code == 200
    assert agents.ownership.owner(f"interactions/{ident}") is None  # deleted: forgotten


def test_an_interaction_made_outside_quotaflow_is_nobodys(
    served: ServedEmulator, clients: dict[str, genai.Client], requests_seen: EmulatorRequests
) -> None:
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as raw:
        ident = raw.post("/v1beta/interactions", json={"model": FLASH, "input": "x"}).json()["id"]
    with _forbidden(requests_seen) as info:
        clients["alice"].interactions.get(ident)
    assert "created by no agent known to quotaflow" in str(info.value)
    assert clients["carol"].interactions.get(ident).id == ident
