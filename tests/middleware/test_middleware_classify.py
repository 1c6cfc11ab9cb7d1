"""Every Gemini endpoint is classified: area, access, model, cost."""

from __future__ import annotations

import pytest

from quotaflow.gemini import Call, classify, needs_body

BASE = "https://generativelanguage.googleapis.com"

# method, path, body, area, access, model, requests, input tokens, creates
CASES: list[tuple[str, str, object, str, str, str | None, int, bool, bool]] = [
    (
        "POST",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        None,
        "content",
        "write",
        "gemini-2.5-flash",
        1,
        True,
        False,
    ),
    (
        "POST",
        "/v1/models/gemini-2.5-flash:generateContent",
        None,
        "content",
        "write",
        "gemini-2.5-flash",
        1,
        True,
        False,
    ),
    (
        "POST",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        None,
        "content",
        "write",
        "gemini-2.5-flash",
        1,
        True,
        False,
    ),
    ("GET", "/v1beta/models", None, "content", "read", None, 0, False, False),
    (
        "GET",
        "/v1beta/models/gemini-2.5-flash",
        None,
        "content",
        "read",
        "gemini-2.5-flash",
        0,
        False,
        False,
    ),
    (
        "POST",
        "/v1beta/models/gemini-embedding-001:embedContent",
        None,
        "embeddings",
        "write",
        "gemini-embedding-001",
        1,
        True,
        False,
    ),
    (
        "POST",
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
        {"requests": [{}, {}, {}, {}]},
        "embeddings",
        "write",
        "gemini-embedding-001",
        4,
        True,
        False,
    ),
    (
        "POST",
        "/v1beta/models/gemini-2.5-flash:countTokens",
        None,
        "counting",
        "read",
        "gemini-2.5-flash",
        0,
        False,
        False,
    ),
    ("POST", "/upload/v1beta/files", None, "files", "write", None, 0, False, True),
    ("GET", "/v1beta/files", None, "files", "read", None, 0, False, False),
    ("GET", "/v1beta/files/abc", None, "files", "read", None, 0, False, False),
    ("DELETE", "/v1beta/files/abc", None, "files", "write", None, 0, False, False),
    ("GET", "/v1beta/files/abc:download", None, "files", "read", None, 0, False, False),
    ("POST", "/v1beta/files:register", None, "files", "write", None, 0, False, True),
    ("POST", "/v1beta/cachedContents", None, "caching", "write", None, 0, False, True),
    ("GET", "/v1beta/cachedContents", None, "caching", "read", None, 0, False, False),
    ("GET", "/v1beta/cachedContents/c1", None, "caching", "read", None, 0, False, False),
    ("PATCH", "/v1beta/cachedContents/c1", None, "caching", "write", None, 0, False, False),
    ("DELETE", "/v1beta/cachedContents/c1", None, "caching", "write", None, 0, False, False),
    (
        "POST",
        "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
        None,
        "batch",
        "write",
        "gemini-2.5-flash",
        0,
        False,
        True,
    ),
    (
        "POST",
        "/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent",
        None,
        "batch",
        "write",
        "gemini-embedding-001",
        0,
        False,
        True,
    ),
    ("GET", "/v1beta/batches", None, "batch", "read", None, 0, False, False),
    ("GET", "/v1beta/batches/b1", None, "batch", "read", None, 0, False, False),
    ("POST", "/v1beta/batches/b1:cancel", None, "batch", "write", None, 0, False, False),
    ("DELETE", "/v1beta/batches/b1", None, "batch", "write", None, 0, False, False),
    ("POST", "/v1beta/tunedModels", None, "tuning", "write", None, 0, False, True),
    ("GET", "/v1beta/tunedModels", None, "tuning", "read", None, 0, False, False),
    ("GET", "/v1beta/tunedModels/t1", None, "tuning", "read", None, 0, False, False),
    ("DELETE", "/v1beta/tunedModels/t1", None, "tuning", "write", None, 0, False, False),
    (
        "POST",
        "/v1beta/tunedModels/t1:generateContent",
        None,
        "tuning",
        "write",
        "tunedModels/t1",
        1,
        True,
        False,
    ),
    (
        "POST",
        "/v1beta/openai/chat/completions",
        {"model": "gemini-2.5-flash"},
        "content",
        "write",
        "gemini-2.5-flash",
        1,
        True,
        False,
    ),
    (
        "POST",
        "/v1beta/openai/embeddings",
        {"model": "models/gemini-embedding-001", "input": ["a", "b", "c"]},
        "embeddings",
        "write",
        "gemini-embedding-001",
        3,
        True,
        False,
    ),
    ("GET", "/v1beta/openai/models", None, "content", "read", None, 0, False, False),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "area", "access", "model", "requests", "tokens", "creates"),
    CASES,
)
def test_every_endpoint(
    method: str,
    path: str,
    body: object,
    area: str,
    access: str,
    model: str | None,
    requests: int,
    tokens: bool,
    creates: bool,
) -> None:
    call = classify(method, BASE + path, body if isinstance(body, dict) else None)
    assert (call.area, call.access, call.model) == (area, access, model)
    assert (call.requests, call.input_tokens, call.creates) == (requests, tokens, creates)
    assert call.idempotent is not creates
    assert "?" not in call.path


def test_streaming_and_counting_flags() -> None:
    stream = classify("POST", BASE + "/v1/models/m:streamGenerateContent?alt=sse")
    assert stream.streaming and stream.metered and not stream.counting
    chat = classify("POST", BASE + "/v1beta/openai/chat/completions", {"model": "m", "stream": 1})
    assert chat.streaming and chat.surface == "openai"
    count = classify("POST", BASE + "/v1beta/models/m:countTokens")
    assert count.counting and not count.metered


def test_model_prefix_and_proxy_prefix() -> None:
    call = classify("POST", "http://proxy/gemini/v1beta/models/gemini-2.5-flash:generateContent")
    assert call.model == "gemini-2.5-flash" and call.version == "v1beta"


def test_unknown_route_is_other_and_unmetered() -> None:
    call = classify("GET", "http://x/healthz")
    assert isinstance(call, Call) and call.area == "other" and not call.metered


def test_needs_body() -> None:
    assert needs_body("POST", BASE + "/v1beta/models/m:batchEmbedContents")
    assert needs_body("POST", BASE + "/v1beta/openai/chat/completions")
    assert not needs_body("POST", BASE + "/v1beta/models/m:generateContent")
