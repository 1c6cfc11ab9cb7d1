"""Gemini wire knowledge, pure and sans-I/O: classify requests, size prompts, read usage,
parse 429 bodies, redact keys.

Nothing here imports httpx or anyio; :mod:`quotaflow.transports` drives it.

Example:
    >>> from quotaflow.gemini import classify
    >>> call = classify("POST", "https://generativelanguage.googleapis.com/v1/models/"
    ...                 "gemini-2.5-flash:streamGenerateContent?alt=sse")
    >>> call.area, call.access, call.streaming
    ('content', 'write', True)
"""

from __future__ import annotations

from quotaflow.gemini._classify import Access, Area, Call, classify, needs_body
from quotaflow.gemini._media import FileMeta, media_tokens
from quotaflow.gemini._redact import (
    REDACTED,
    SECRET_HEADERS,
    redact_headers,
    redact_text,
    redact_url,
)
from quotaflow.gemini._rpc import ApiError, QuotaViolation, parse_duration, parse_error
from quotaflow.gemini._service_tier import SERVED_TIER_HEADER, requested_tier, served_tier
from quotaflow.gemini._sizing import (
    MEDIA_TOKENS,
    CountCache,
    count_tokens_body,
    count_tokens_path,
    estimate_tokens,
    read_count,
)
from quotaflow.gemini._usage import (
    BodyScanner,
    StreamScanner,
    Usage,
    body_usage,
    decoder_for,
    usage_from_json,
)

__all__ = [
    "MEDIA_TOKENS",
    "REDACTED",
    "SECRET_HEADERS",
    "SERVED_TIER_HEADER",
    "Access",
    "ApiError",
    "Area",
    "BodyScanner",
    "Call",
    "CountCache",
    "FileMeta",
    "QuotaViolation",
    "StreamScanner",
    "Usage",
    "body_usage",
    "classify",
    "count_tokens_body",
    "count_tokens_path",
    "decoder_for",
    "estimate_tokens",
    "media_tokens",
    "needs_body",
    "parse_duration",
    "parse_error",
    "read_count",
    "redact_headers",
    "redact_text",
    "redact_url",
    "requested_tier",
    "served_tier",
    "usage_from_json",
]
