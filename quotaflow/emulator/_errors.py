"""Gemini error bodies, verbatim where known (gemini-facts §2). Pure, no I/O.

Handlers raise :class:`ErrorReply`; the app turns it into a JSON response (on the
OpenAI-compatible surface, a JSON list holding the one error object).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._quota import Violation

__all__ = [
    "ErrorReply",
    "api_key_invalid",
    "deadline_exceeded",
    "failed_precondition",
    "format_seconds",
    "internal",
    "invalid_argument",
    "not_found",
    "permission_denied",
    "resource_exhausted",
    "unauthenticated",
    "unavailable",
]

JSON = dict[str, Any]

_RATE_LIMITS_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. "
    f"For more information on this error, head to: {_RATE_LIMITS_URL}. "
    "To monitor your current usage, head to: https://ai.dev/rate-limit. "
)


class ErrorReply(Exception):
    """An error response the emulator sends; raised by handlers, caught by the app.

    Attributes:
        code: HTTP status code.
        body: The JSON body, ``{"error": {...}}``.
    """

    def __init__(self, code: int, body: JSON) -> None:
        super().__init__(body["error"].get("message", ""))
        self.code = code
        self.body = body


def _error(code: int, status: str, message: str, details: list[JSON] | None = None) -> ErrorReply:
    err: JSON = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    return ErrorReply(code, {"error": err})


def api_key_invalid() -> ErrorReply:
    """400 for a wrong or missing API key, as Gemini sends it."""
    return _error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": "API key not valid. Please pass a valid API key.",
            },
        ],
    )


def invalid_argument(message: str) -> ErrorReply:
    """400 INVALID_ARGUMENT with ``message``."""
    return _error(400, "INVALID_ARGUMENT", message)


def failed_precondition(message: str) -> ErrorReply:
    """400 FAILED_PRECONDITION with ``message``."""
    return _error(400, "FAILED_PRECONDITION", message)


def permission_denied(message: str) -> ErrorReply:
    """403 PERMISSION_DENIED with ``message``."""
    return _error(403, "PERMISSION_DENIED", message)


_BAD_TOKEN = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_KEY_REFUSED = (
    "API keys are not supported by this API. Expected OAuth2 access token or other "
    "authentication credentials that assert a principal. See "
    "https://cloud.google.com/docs/authentication"
)


def unauthenticated(reason: str) -> ErrorReply:
    """401 UNAUTHENTICATED as Google words it: ``ACCESS_TOKEN_EXPIRED`` or
    ``ACCESS_TOKEN_TYPE_UNSUPPORTED`` (a bearer token it does not know), ``CREDENTIALS_MISSING``
    (an API key where a principal is needed)."""
    message = _KEY_REFUSED if reason == "CREDENTIALS_MISSING" else _BAD_TOKEN
    return _error(
        401,
        "UNAUTHENTICATED",
        message,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ],
    )


def not_found(message: str) -> ErrorReply:
    """404 NOT_FOUND with ``message``."""
    return _error(404, "NOT_FOUND", message)


def internal() -> ErrorReply:
    """500 INTERNAL (2025 message text)."""
    return _error(
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    )


def unavailable() -> ErrorReply:
    """503 UNAVAILABLE (2026 message text)."""
    return _error(
        503,
        "UNAVAILABLE",
        "This model is currently experiencing high demand. Spikes in demand are usually "
        "temporary. Please try again later.",
    )


def deadline_exceeded() -> ErrorReply:
    """504 DEADLINE_EXCEEDED; the message text is UNCONFIRMED (taken from the docs)."""
    return _error(
        504,
        "DEADLINE_EXCEEDED",
        "The service is unable to finish processing within the deadline.",
    )


def server_error(code: int) -> ErrorReply:
    """The injected 5xx error for ``code`` (500, 503 or 504)."""
    return {500: internal, 503: unavailable, 504: deadline_exceeded}[code]()


def format_seconds(seconds: float, fmt: str) -> str:
    """Format a protobuf Duration string: ``"27s"`` (whole, rounded up) or ``"26.5s"``.

    Args:
        seconds: The delay.
        fmt: ``whole`` or ``fractional`` (microseconds, trailing zeros stripped; Gemini sends up
            to 9 digits, but epoch floats carry only about 7 significant fractional ones).
    """
    seconds = max(0.0, seconds)
    if fmt == "whole":
        return f"{math.ceil(round(seconds, 6))}s"
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{text}s"


def resource_exhausted(
    violations: Sequence[Violation],
    model: str,
    retry_after: float,
    fmt: str,
    detail: str = "full",
) -> ErrorReply:
    """429 RESOURCE_EXHAUSTED in the 2026 form (Help, QuotaFailure, RetryInfo).

    Args:
        violations: One entry per violated dimension.
        model: Model id for ``quotaDimensions.model`` and the message.
        retry_after: Seconds until the request would be admitted.
        fmt: ``whole`` or ``fractional`` for ``RetryInfo.retryDelay``.
        detail: ``full`` (as above), ``no_value`` (``QuotaFailure`` without ``quotaValue``,
            the message without the limit) or ``bare`` (only ``Help``: no ``QuotaFailure``, no
            ``RetryInfo``), as some of Google's 429s are.
    """
    if detail == "bare":
        help_only: list[JSON] = [
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {"description": "Learn more about Gemini API quotas", "url": _RATE_LIMITS_URL}
                ],
            }
        ]
        return _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", help_only)
    lines = "".join(
        f"* Quota exceeded for metric: {v.quota_metric}"
        + (f", limit: {v.limit}" if detail == "full" else "")
        + f", model: {model}\n"
        for v in violations
    )
    precise = format_seconds(retry_after, "fractional")
    message = f"{_QUOTA_MESSAGE}\n{lines}Please retry in {precise}."
    failures: list[JSON] = [
        {
            "quotaMetric": v.quota_metric,
            "quotaId": v.quota_id,
            "quotaDimensions": {"location": "global", "model": model},
            **({"quotaValue": str(v.limit)} if detail == "full" else {}),
        }
        for v in violations
    ]
    details: list[JSON] = [
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {"description": "Learn more about Gemini API quotas", "url": _RATE_LIMITS_URL}
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": failures},
        {
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format_seconds(retry_after, fmt),
        },
    ]
    return _error(429, "RESOURCE_EXHAUSTED", message, details)
