"""Calls refused here, before they are sent: one rule for every kind, and its Gemini-shaped
answer. Pure: bodies are bytes, the drivers wrap them in their package's ``Response``.

Every refusal is an error response shaped like Gemini's (``{"error": {code, message, status,
details}}``; a list of one on the OpenAI-compatible surface), whose
``google.rpc.ErrorInfo`` detail (domain ``quotaflow``) carries quotaflow's reason, the
dimension, ``retry_after`` and ``resets_at`` (strings, empty when unknown):

========================  ======  ======================  ==============================
refusal                   status  status text             ``ErrorInfo.reason``
========================  ======  ======================  ==============================
a calendar quota spent    429     ``RESOURCE_EXHAUSTED``  ``QUOTAFLOW_QUOTA_EXHAUSTED``
the deadline cannot hold  429     ``RESOURCE_EXHAUSTED``  ``QUOTAFLOW_DEADLINE_EXCEEDED``
an agent's budget spent   429     ``RESOURCE_EXHAUSTED``  ``QUOTAFLOW_BUDGET_EXHAUSTED``
the policy denies         403     ``PERMISSION_DENIED``   ``QUOTAFLOW_POLICY_DENIED``
a malformed request       400     ``INVALID_ARGUMENT``    ``QUOTAFLOW_INVALID_REQUEST``
larger than a limit       400     ``INVALID_ARGUMENT``    ``QUOTAFLOW_CANNOT_FIT``
========================  ======  ======================  ==============================

A transport made with ``local_errors="raise"`` raises :attr:`Refusal.error` (quotaflow's typed
error) instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from quotaflow.errors import (
    CannotFitError,
    MalformedRequestError,
    QuotaError,
    QuotaExhaustedError,
    QuotaTimeoutError,
)
from quotaflow.gemini import Call, redact_url

__all__ = ["LOCAL_ERRORS", "LocalAnswer", "LocalErrors", "Refusal", "answer", "quota_refusal"]

LocalErrors = Literal["response", "raise"]
LOCAL_ERRORS: tuple[str, ...] = ("response", "raise")

_STATUS_TEXT = {429: "RESOURCE_EXHAUSTED", 403: "PERMISSION_DENIED", 400: "INVALID_ARGUMENT"}


@dataclass(frozen=True)
class LocalAnswer:
    """A response made here: status, headers and a JSON body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Refusal:
    """One call refused before it was sent.

    Attributes:
        status: the HTTP status of the answer (429, 403 or 400).
        code: the ``ErrorInfo.reason`` (``QUOTAFLOW_...``).
        reason: quotaflow's reason (``quota_exhausted``, ``deadline``, ``budget``, a policy
            reason such as ``no_grant``, ``malformed``, ``cannot_fit``).
        message: what happened and what to do.
        error: the typed error ``local_errors="raise"`` raises.
        dimension: the limit that refused (``rpd``, ``tpm``, ...), if any.
        retry_after: seconds until the call could fit, if known.
        resets_at: when capacity returns (the limiter clock's epoch seconds), if known.
        metadata: more ``ErrorInfo`` metadata (agent, method, ...).
        quota: ``(quotaMetric, quotaId, quotaDimensions)`` of a ``QuotaFailure`` detail.
    """

    status: int
    code: str
    reason: str
    message: str
    error: Exception
    dimension: str = ""
    retry_after: float | None = None
    resets_at: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    quota: tuple[str, str, tuple[tuple[str, str], ...]] | None = field(default=None)


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return repr(round(float(value), 3))


def answer(refusal: Refusal, surface: str) -> LocalAnswer:
    """The Gemini-shaped error response of ``refusal`` (``surface``: the call's, see
    :attr:`quotaflow.gemini.Call.surface`)."""
    meta: dict[str, str] = {
        "reason": refusal.reason,
        "dimension": refusal.dimension,
        "retry_after": _num(refusal.retry_after),
        "resets_at": _num(refusal.resets_at),
    }
    meta.update(refusal.metadata)
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": refusal.code,
            "domain": "quotaflow",
            "metadata": meta,
        }
    ]
    if refusal.quota is not None:
        metric, quota_id, dims = refusal.quota
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {"quotaMetric": metric, "quotaId": quota_id, "quotaDimensions": dict(dims)}
                ],
            }
        )
    headers = [
        ("content-type", "application/json; charset=UTF-8"),
        # the OpenAI SDK retries 429s by itself unless told: the transport already waited as
        # long as the call allowed
        ("x-should-retry", "false"),
    ]
    if refusal.retry_after is not None and math.isfinite(refusal.retry_after):
        wait = max(0, math.ceil(refusal.retry_after))
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{wait}s"}
        )
        headers.append(("retry-after", str(wait)))
    error = {
        "code": refusal.status,
        "message": refusal.message,
        "status": _STATUS_TEXT[refusal.status],
        "details": details,
    }
    payload: Any = {"error": error}
    if surface == "openai":  # the OpenAI surface wraps the error object in a list
        payload = [payload]
    return LocalAnswer(refusal.status, tuple(headers), json.dumps(payload).encode())


def quota_refusal(exc: QuotaError, model: str = "") -> Refusal:
    """The refusal of a limiter's ``exc`` (a spent quota, a deadline that cannot hold, a
    request larger than a limit)."""
    if isinstance(exc, CannotFitError):
        status, code, reason = 400, "QUOTAFLOW_CANNOT_FIT", "cannot_fit"
    elif isinstance(exc, QuotaTimeoutError):
        status, code, reason = 429, "QUOTAFLOW_DEADLINE_EXCEEDED", "deadline"
    elif isinstance(exc, QuotaExhaustedError):
        status, code, reason = 429, "QUOTAFLOW_QUOTA_EXHAUSTED", "quota_exhausted"
    else:  # WouldBlockError and any other refusal of the limiter
        status, code, reason = 429, "QUOTAFLOW_QUOTA_EXHAUSTED", "quota"
    name = exc.model or model
    dim = exc.dimension or ""
    return Refusal(
        status=status,
        code=code,
        reason=reason,
        message=str(exc),
        error=exc,
        dimension=dim,
        retry_after=exc.retry_after,
        resets_at=exc.resets_at,
        metadata=(("model", name),) if name else (),
    )


def malformed_refusal(call: Call) -> Refusal:
    """The refusal of a malformed request (:attr:`~quotaflow.gemini.Call.problem`): a 400
    ``INVALID_ARGUMENT``; such a request is never sent, since the server might route it where
    no quota of this process meters it."""
    problem = call.problem or "malformed"
    message = (
        f"quotaflow: {call.method} {redact_url(call.path)} is malformed ({problem}); send the "
        "request in its plain form (no dot segments, escaped slashes or method overrides)"
    )
    return Refusal(
        status=400,
        code="QUOTAFLOW_INVALID_REQUEST",
        reason="malformed",
        message=message,
        error=MalformedRequestError(message, problem=problem),
        metadata=(("method", call.action),),
    )
