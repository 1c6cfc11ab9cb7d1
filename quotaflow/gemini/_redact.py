"""Keep API keys out of logs, exceptions and reprs. Pure.

Gemini accepts the key as the ``x-goog-api-key`` header, a ``key=`` query parameter (a system
parameter: ``$key`` too, and any percent-encoding or case of the name), or an OAuth
``Authorization: Bearer`` token; the OpenAI surface sends it as a bearer token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from quotaflow.gemini._canonical import SECRET_PARAMS, param_name

__all__ = ["REDACTED", "SECRET_HEADERS", "redact_headers", "redact_text", "redact_url"]

REDACTED = "***"

SECRET_HEADERS = frozenset(
    {"x-goog-api-key", "authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}
)
"""Header names (lower case) whose values are never shown."""

# a query parameter: its name in any spelling (``%24key``, ``%6Bey``, ``KEY``) and its value
_QUERY_PAIR = re.compile(r"([?&;])([^=&#\s?;]+)=([^&#\s;]*)")


def _hide_secret(m: re.Match[str]) -> str:
    if param_name(m.group(2)) in SECRET_PARAMS:
        return f"{m.group(1)}{m.group(2)}={REDACTED}"
    return m.group(0)


def _hide_query(text: str) -> str:
    return _QUERY_PAIR.sub(_hide_secret, text) if "=" in text else text


_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_-]{35}")
_HEADER_LINE = re.compile(
    r"(?i)\b(x-goog-api-key|api-key|x-api-key)(['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"
)


def redact_url(url: object) -> str:
    """The URL with the values of ``key=`` (and similar) query parameters hidden, the name
    matched decoded and case-folded, as the server reads it (``?%24key=``, ``?%6Bey=``,
    ``?KEY=``).

    Example:
        >>> redact_url("https://h/v1beta/models?key=AIzaSecret&pageSize=5")
        'https://h/v1beta/models?key=***&pageSize=5'
    """
    return _hide_query(str(url))


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """A copy of the headers with secret values hidden."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in items}


def redact_text(text: str) -> str:
    """Hide anything that looks like a key in free text (URLs, bearer tokens, Google keys).

    Example:
        >>> redact_text("GET /v1/models?key=abc with Authorization: Bearer tok123")
        'GET /v1/models?key=*** with Authorization: Bearer ***'
    """
    text = _hide_query(text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _HEADER_LINE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _GOOGLE_KEY.sub(REDACTED, text)
