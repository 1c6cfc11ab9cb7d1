"""The gateway holds interactions to their creators under ``own``: google-genai's
``client.interactions`` through the gateway, each agent with its token; what is refused never
reaches the upstream (the emulator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import FLASH, Running, running
from google import genai
from google.genai import types

# google-genai raises the Interactions API's errors from this module (not from genai.errors)
from google.genai._interactions_errors import APIStatusError

from quotaflow.emulator import ServedEmulator

OWN = {"access": "write", "own": True}
POLICY: dict[str, Any] = {
    "agents": {"alice": {"grants": {"content": OWN}}, "mallory": {"grants": {"content": OWN}}}
}


def client(run: Running, agent: str) -> genai.Client:
    return genai.Client(
        api_key=run.tokens[agent], http_options=types.HttpOptions(base_url=run.base_url)
    )


def received(emulator: ServedEmulator) -> int:
    return int(emulator.emulator.stats()["models"].get(FLASH, {}).get("received", 0))


def test_only_the_creator_reads_cancels_deletes_or_continues_an_interaction(
    emulator: ServedEmulator, tmp_path: Path
) -> None:
    with running(emulator.base_url, tmp_path, ("alice", "mallory"), policy=POLICY) as run:
        alice, mallory = client(run, "alice"), client(run, "mallory")
        made: Any = alice.interactions.create(model=FLASH, input="alice's plan " * 4)
        stream: Any = iter(alice.interactions.create(model=FLASH, input="streamed", stream=True))
        first: Any = next(stream)
        ids = [made.id, first.interaction.id]
        sent, generated = len(run.seen.requests), received(emulator)
        for ident in ids:
            for call in (
                mallory.interactions.get,
                mallory.interactions.cancel,
                mallory.interactions.delete,
            ):
                with pytest.raises(APIStatusError, match="PERMISSION_DENIED") as info:
                    call(ident)
                assert info.value.status_code == 403
                assert f"interactions/{ident} was created by agent 'alice'" in str(info.value)
        with pytest.raises(APIStatusError, match="was not created by this agent"):
            mallory.interactions.create(
                model=FLASH, input="and before?", previous_interaction_id=made.id
            )
        assert len(run.seen.requests) == sent  # none of it reached the upstream
        assert received(emulator) == generated
        # the creator may, mid-stream too
        assert alice.interactions.cancel(first.interaction.id).id == first.interaction.id
        assert list(stream)[-1].event_type == "interaction.completed"
        follow: Any = alice.interactions.create(
            model=FLASH, input="go on", previous_interaction_id=made.id
        )
        assert alice.interactions.get(made.id).id == made.id
        alice.interactions.delete(made.id)
        alice.interactions.delete(follow.id)
        assert received(emulator) == generated + 1
        assert len(run.seen.requests) == sent + 5
    records = [json.loads(line) for line in run.audit_path.read_text().splitlines()]
    denied = [r for r in records if r["reason"] == "not_owner"]
    assert len(denied) == 7 and {r["agent"] for r in denied} == {"mallory"}
