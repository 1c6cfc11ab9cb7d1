"""Error bodies: ``google.rpc.Status`` with ``QuotaFailure`` and ``RetryInfo``. Pure.

A 429 from Gemini carries no ``Retry-After`` header; the wait is ``RetryInfo.retryDelay`` (a
protobuf Duration such as ``"26s"`` or ``"29.085631241s"``) and what tripped is in
``QuotaFailure.violations[]`` (``quotaId`` names the window: ``...PerMinute...`` or
``...PerDay...``). The OpenAI-compatible surface wraps the same object in a JSON list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ApiError", "QuotaViolation", "parse_duration", "parse_error"]

MAX_QUOTA_VALUE = 1_000_000_000
"""The largest ``quotaValue`` taken as a figure (larger ones are ignored)."""
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_RETRY_IN = re.compile(r"[Pp]lease retry in ([0-9]+(?:\.[0-9]+)?)(ms|s)\b")
_DURATION = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]*)?)\s*s\s*$")


def parse_duration(value: Any) -> float | None:
    """Seconds from a protobuf Duration in JSON (``"26s"``, ``"0.5s"``) or as an object.

    Example:
        >>> parse_duration("29.085631241s")
        29.085631241
    """
    if isinstance(value, str):
        m = _DURATION.match(value)
        return max(0.0, float(m.group(1))) if m else None
    if isinstance(value, Mapping):
        try:
            seconds = float(value.get("seconds", 0) or 0)
            nanos = float(value.get("nanos", 0) or 0)
        except (TypeError, ValueError):
            return None
        return max(0.0, seconds + nanos / 1e9)
    return None


@dataclass(frozen=True)
class QuotaViolation:
    """One ``QuotaFailure`` violation.

    Attributes:
        quota_id: e.g. ``GenerateRequestsPerMinutePerProjectPerModel-FreeTier``.
        quota_metric: e.g.
            ``generativelanguage.googleapis.com/generate_content_free_tier_requests``.
        quota_value: the limit the server applied (``quotaValue``), if sent.
        dimensions: ``quotaDimensions`` (``{"location": "global", "model": "..."}``).
    """

    quota_id: str = ""
    quota_metric: str = ""
    quota_value: int | None = None
    dimensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def period(self) -> Literal["minute", "day"] | None:
        """The window that tripped, from ``quotaId``: ``minute``, ``day`` or unknown."""
        if "PerMinute" in self.quota_id:
            return "minute"
        if "PerDay" in self.quota_id:
            return "day"
        return None

    @property
    def metric(self) -> Literal["requests", "input_tokens"] | None:
        """What is counted: ``requests`` or ``input_tokens`` (from the id or the metric)."""
        text = f"{self.quota_id} {self.quota_metric}".lower()
        if "token" in text:
            return "input_tokens"
        if "request" in text:
            return "requests"
        return None

    @property
    def dimension(self) -> str | None:
        """Gemini's dimension name: ``rpm``, ``tpm``, ``rpd`` or ``tpd`` (``None``: unknown)."""
        period, metric = self.period, self.metric
        if period is None or metric is None:
            return None
        return ("r" if metric == "requests" else "t") + ("pm" if period == "minute" else "pd")

    @property
    def model(self) -> str | None:
        """The model in ``quotaDimensions``, if named."""
        return self.dimensions.get("model")


@dataclass(frozen=True)
class ApiError:
    """A parsed ``google.rpc.Status`` error body.

    Attributes:
        code: the HTTP-like code in the body (429, 500, ...).
        status: ``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, ...
        message: the human message.
        violations: the ``QuotaFailure`` violations (several may come in one body).
        retry_delay: seconds from ``RetryInfo.retryDelay`` (or, without it, from the
            message's "Please retry in Xs"), if given.
    """

    code: int | None = None
    status: str = ""
    message: str = ""
    violations: tuple[QuotaViolation, ...] = ()
    retry_delay: float | None = None

    @property
    def per_day(self) -> tuple[QuotaViolation, ...]:
        """The violations of a day quota."""
        return tuple(v for v in self.violations if v.period == "day")

    @property
    def per_minute(self) -> tuple[QuotaViolation, ...]:
        """The violations of a per-minute quota."""
        return tuple(v for v in self.violations if v.period == "minute")


def _violation(raw: Mapping[str, Any]) -> QuotaViolation:
    value = raw.get("quotaValue")
    amount: int | None = None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            amount = int(value)
        except ValueError:
            amount = None
        # a limit is 0 (the model is not on this tier) up to a sane size; anything else is not
        # a figure to learn
        if amount is not None and not 0 <= amount <= MAX_QUOTA_VALUE:
            amount = None
    dims = raw.get("quotaDimensions")
    return QuotaViolation(
        quota_id=str(raw.get("quotaId", "")),
        quota_metric=str(raw.get("quotaMetric", "")),
        quota_value=amount,
        dimensions={str(k): str(v) for k, v in dims.items()} if isinstance(dims, dict) else {},
    )


def parse_error(body: bytes | str | Any) -> ApiError | None:
    """Parse an error body (bytes, text or already-parsed JSON); ``None`` if it is not one.

    Example:
        >>> err = parse_error(b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",'
        ...     b' "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",'
        ...     b' "retryDelay": "1.5s"}]}}')
        >>> err.retry_delay
        1.5
    """
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    if isinstance(body, list):  # the OpenAI-compatible surface: [{"error": {...}}]
        body = body[0] if body and isinstance(body[0], dict) else {}
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if not isinstance(err, dict):
        return None
    code = err.get("code")
    message = err.get("message")
    violations: list[QuotaViolation] = []
    delay: float | None = None
    details = err.get("details")
    for d in details if isinstance(details, list) else ():
        if not isinstance(d, dict):
            continue
        kind = d.get("@type")
        if kind == _QUOTA_FAILURE:
            for v in d.get("violations") or ():
                if isinstance(v, dict):
                    violations.append(_violation(v))
        elif kind == _RETRY_INFO:
            delay = parse_duration(d.get("retryDelay"))
    text = message if isinstance(message, str) else ""
    if delay is None:
        m = _RETRY_IN.search(text)
        if m:
            delay = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    return ApiError(
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        status=str(err.get("status", "") or ""),
        message=text,
        violations=tuple(violations),
        retry_delay=delay,
    )
