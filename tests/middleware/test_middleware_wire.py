"""Pure wire parsing: usage (JSON and SSE), 429 bodies, sizing, redaction."""

from __future__ import annotations

import gzip
import json

import pytest

from quotaflow.gemini import (
    BodyScanner,
    CountCache,
    StreamScanner,
    classify,
    count_tokens_body,
    count_tokens_path,
    decoder_for,
    estimate_tokens,
    parse_duration,
    parse_error,
    read_count,
    redact_headers,
    redact_text,
    redact_url,
    usage_from_json,
)

# --- 429 bodies, verbatim from gemini-facts §2 ------------------------------------------------

MID_2025 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_input_token_count",
                        "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                        "quotaValue": "250000",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more", "url": "https://ai.google.dev/"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"},
        ],
    }
}

SEVERAL_2026 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota ... \nPlease retry in 29.085631241s.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                    },
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                    },
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_input_token_count",
                        "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                    },
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47s"},
        ],
    }
}


def test_quota_failure_mid_2025() -> None:
    err = parse_error(json.dumps(MID_2025).encode())
    assert err is not None and err.code == 429 and err.status == "RESOURCE_EXHAUSTED"
    assert err.retry_delay == 26.0
    (v,) = err.violations
    assert v.dimension == "tpm" and v.period == "minute" and v.quota_value == 250_000
    assert v.model == "gemini-2.5-flash"
    assert err.per_minute == (v,) and err.per_day == ()


def test_several_violations_and_help_first() -> None:
    err = parse_error(SEVERAL_2026)
    assert err is not None
    assert [v.dimension for v in err.violations] == ["rpd", "rpm", "tpm"]
    assert all(v.quota_value is None for v in err.violations)  # limit 0: no quotaValue
    assert err.retry_delay == 47.0  # RetryInfo wins over the message
    assert len(err.per_day) == 1 and len(err.per_minute) == 2


def test_retry_delay_from_message_when_no_retry_info() -> None:
    body = {"error": {"code": 429, "message": "Please retry in 1.250s.", "details": []}}
    err = parse_error(body)
    assert err is not None and err.retry_delay == 1.25 and err.violations == ()


def test_openai_surface_list_body() -> None:
    raw = b'[{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",'
    raw += b' "status": "RESOURCE_EXHAUSTED"}}]'
    err = parse_error(raw)
    assert err is not None and err.code == 429 and err.violations == ()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("26s", 26.0),
        ("0.5s", 0.5),
        ("29.085631241s", 29.085631241),
        ("1.s", 1.0),
        ({"seconds": 2, "nanos": 500_000_000}, 2.5),
        ("soon", None),
        (None, None),
    ],
)
def test_durations(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


def test_not_an_error_body() -> None:
    assert parse_error(b"<html>") is None
    assert parse_error({"candidates": []}) is None


# --- usage ---------------------------------------------------------------------------------------


def _sse(*chunks: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


STREAM = _sse(
    {"candidates": [], "usageMetadata": {"promptTokenCount": 11}},
    {"candidates": [], "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 100}},
    {
        "candidates": [],
        "usageMetadata": {
            "promptTokenCount": 11,
            "candidatesTokenCount": 227,
            "totalTokenCount": 238,
            "thoughtsTokenCount": 5,
        },
    },
)


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_sse_usage_any_split(size: int) -> None:
    s = StreamScanner()
    for i in range(0, len(STREAM), size):
        s.feed(STREAM[i : i + size])
    s.finish()
    u = s.usage()
    assert u is not None
    assert (u.input_tokens, u.output_tokens, u.total_tokens, u.thoughts_tokens) == (11, 227, 238, 5)


def test_sse_early_close_keeps_what_is_known() -> None:
    s = StreamScanner()
    s.feed(STREAM[: len(STREAM) // 2])
    u = s.usage()
    assert u is not None and u.input_tokens == 11


def test_sse_openai_done_and_last_event_without_blank_line() -> None:
    s = StreamScanner()
    s.feed(b'data: {"choices": [], "usage": null}\n\n')
    s.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3,')
    s.feed(b' "total_tokens": 10}}\n\ndata: [DONE]')
    s.finish()
    u = s.usage()
    assert u is not None and (u.input_tokens, u.output_tokens) == (7, 3)


def test_sse_skips_raw_error_lines() -> None:
    s = StreamScanner()
    s.feed(b'{"error": {"code": 429, "usage": 1}}\n\n')
    assert s.usage() is None


def test_json_bodies() -> None:
    b = BodyScanner()
    b.feed(b'{"candidates": [], "usageMetadata": {"promptTokenCount": 3, ')
    b.feed(b'"cachedContentTokenCount": 1}}')
    u = b.usage()
    assert u is not None and u.input_tokens == 3 and u.cached_tokens == 1
    assert usage_from_json([{"usageMetadata": {"promptTokenCount": 1}}, {"x": 1}]) is not None
    assert usage_from_json({"embedding": {"values": []}}) is None
    small = BodyScanner(limit=4)
    small.feed(b'{"usageMetadata": {}}')
    assert small.usage() is None


def test_gzip_decoder() -> None:
    data = gzip.compress(STREAM)
    decode = decoder_for("gzip")
    assert decode is not None
    s = StreamScanner()
    for i in range(0, len(data), 5):
        s.feed(decode(data[i : i + 5]))
    assert s.usage() is not None and s.usage().input_tokens == 11  # type: ignore[union-attr]
    assert decoder_for("br") is None and decoder_for("")(b"x") == b"x"  # type: ignore[misc]


# --- sizing --------------------------------------------------------------------------------------

GEN = classify("POST", "https://h/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")


def test_estimate_counts_system_tools_and_media() -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "a" * 400}, {"inlineData": {}}]}],
        "systemInstruction": {"parts": [{"text": "b" * 40}]},
        "tools": [{"functionDeclarations": [{"name": "f"}]}],
    }
    n = estimate_tokens(GEN, body)
    tools = len('[{"functionDeclarations":[{"name":"f"}]}]')
    assert n == 100 + 258 + 10 + -(-tools // 4)


def test_estimate_embeddings_and_openai() -> None:
    batch = classify("POST", "https://h/v1beta/models/e:batchEmbedContents")
    body = {"requests": [{"content": {"parts": [{"text": "abcd" * 5}]}}] * 3}
    assert estimate_tokens(batch, body) == 15
    chat = classify("POST", "https://h/v1beta/openai/chat/completions", {"model": "m"})
    assert estimate_tokens(chat, {"messages": [{"role": "user", "content": "abcdefgh"}]}) == 2


def test_count_tokens_request_wraps_generate_request() -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}], "systemInstruction": {"parts": []}}
    out = json.loads(count_tokens_body(GEN, body))
    assert out["generateContentRequest"]["model"] == "models/gemini-2.5-flash"
    assert out["generateContentRequest"]["systemInstruction"] == {"parts": []}
    assert count_tokens_path(GEN) == "/v1beta/models/gemini-2.5-flash:countTokens"
    assert read_count(b'{"totalTokens": 31}') == 31
    assert read_count(b"{}") == 0
    assert read_count(b'{"error": {}}') is None and read_count(b"nope") is None


def test_count_cache_is_bounded_lru() -> None:
    cache = CountCache(2)
    keys = [cache.key("m", bytes([i])) for i in range(3)]
    cache.put(keys[0], 1)
    cache.put(keys[1], 2)
    assert cache.get(keys[0]) == 1  # 0 is now the most recent
    cache.put(keys[2], 3)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) == 1 and len(cache) == 2


# --- redaction -----------------------------------------------------------------------------------

KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv"


def test_redaction() -> None:
    assert KEY not in redact_url(f"https://h/v1beta/models?key={KEY}&pageSize=2")
    assert redact_url("https://h/x?pageSize=2") == "https://h/x?pageSize=2"
    hidden = redact_headers({"x-goog-api-key": KEY, "Authorization": "Bearer t", "accept": "*"})
    assert hidden == {"x-goog-api-key": "***", "Authorization": "***", "accept": "*"}
    text = f"x-goog-api-key: {KEY} url ?key={KEY} Authorization: Bearer sk-123 bare {KEY}"
    out = redact_text(text)
    assert KEY not in out and "sk-123" not in out
