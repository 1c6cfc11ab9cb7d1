"""The Interactions API's routes, classified by what each one does."""

from __future__ import annotations

import pytest

from quotaflow.gemini import classify, needs_body, usage_from_json

BASE = "https://generativelanguage.googleapis.com"


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_create_generates_on_the_body_model(version: str) -> None:
    url = f"{BASE}/{version}/interactions"
    assert needs_body("POST", url)
    call = classify("POST", url, {"model": "models/gemini-3-flash-preview", "input": "hi"})
    assert (call.action, call.area, call.access) == ("interactions.create", "content", "write")
    assert (call.model, call.requests, call.input_tokens, call.metered) == (
        "gemini-3-flash-preview",
        1,
        True,
        True,
    )
    assert not call.streaming and call.idempotent
    streamed = classify("POST", url, {"model": "m", "stream": True, "background": True})
    assert streamed.streaming and not streamed.idempotent  # a background one is a resource


@pytest.mark.parametrize(
    ("method", "path", "action", "access"),
    [
        ("GET", "/v1beta/interactions/abc?stream=false", "interactions.get", "read"),
        ("GET", "/v1beta/interactions", "interactions.list", "read"),
        ("POST", "/v1beta/interactions/abc/cancel", "interactions.cancel", "write"),
        ("POST", "/v1beta/interactions/abc:cancel", "interactions.cancel", "write"),
        ("DELETE", "/v1beta/interactions/abc", "interactions.delete", "write"),
    ],
)
def test_other_methods_spend_no_model_quota(
    method: str, path: str, action: str, access: str
) -> None:
    call = classify(method, BASE + path)
    assert (call.action, call.area, call.access, call.metered) == (action, "content", access, False)


def test_an_agent_interaction_names_no_model() -> None:
    call = classify("POST", "/v1beta/interactions", {"agent": "deep-research", "input": "x"})
    assert call.model is None and not call.metered


def test_usage_of_an_interaction_and_of_its_stream_events() -> None:
    usage = {"total_input_tokens": 11, "total_output_tokens": 4, "total_tokens": 15}
    assert usage_from_json({"id": "a", "usage": usage}).input_tokens == 11  # type: ignore[union-attr]
    done = {"event_type": "interaction.completed", "interaction": {"id": "a", "usage": usage}}
    assert usage_from_json(done).output_tokens == 4  # type: ignore[union-attr]
    delta = {"event_type": "step.delta", "metadata": {"total_usage": usage}}
    assert usage_from_json(delta).total_tokens == 15  # type: ignore[union-attr]
    # the OpenAI form still reads as before
    assert usage_from_json({"usage": {"prompt_tokens": 3, "total_tokens": 5}}).input_tokens == 3  # type: ignore[union-attr]
