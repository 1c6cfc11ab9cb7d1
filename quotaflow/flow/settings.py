"""The options of a call flow (a transport's ``sizing=``, ``max_429_retries=``, ...): their
checks, their documentation, and the constants the flow decides with."""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from quotaflow.errors import (
    ConfigError,
)
from quotaflow.flow.refusal import LOCAL_ERRORS, LocalErrors
from quotaflow.gemini import (
    Call,
)
from quotaflow.limits import RPM, Limit

log = logging.getLogger("quotaflow.transports")

RANDOM = random.Random()  # our own generator: never disturb a user's seeded global one

COUNT_MODEL = "countTokens"
"""The scope countTokens calls are metered under (their own quota, not the model's)."""

HEADER_PREFIX = "x-quotaflow-"
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})
"""Statuses retried (with backoff) for calls that create nothing: the server's or its front
end's transient failures, the ones google-genai's own ``retry_options`` retry besides 429."""

UNSENT_ERRORS = ("ConnectError", "ConnectTimeout", "PoolTimeout")
"""httpx/httpx2 errors raised before any byte of the request left: no connection was had, so
the server cannot have counted the call (its permit is released) and a retry is always safe."""

SENT_ERRORS = ("ReadTimeout", "WriteTimeout", "ReadError", "WriteError", "RemoteProtocolError")
"""httpx/httpx2 errors raised once the request may have reached the server: the call keeps its
request count (its permit is settled as sent); retried like a 503."""

BATCH_EXPIRY = 25 * 3600.0
"""Seconds a batch job holds its enqueued tokens when its end is never seen: the Batch API's
documented 24 h target turnaround (https://ai.google.dev/gemini-api/docs/batch-mode, read
2026-12-04) plus an hour's margin."""

Sizer = Literal["estimate", "count"] | Callable[[Call, Mapping[str, Any]], int]
"""How input tokens are sized before a call: ``"estimate"`` (local, no I/O), ``"count"``
(``countTokens``, cached; falls back to the estimate), or ``fn(call, body) -> int``."""


@dataclass(frozen=True)
class Settings:
    """The options of a transport (see :class:`~quotaflow.transports.QuotaTransport`)."""

    sizing: Sizer | Mapping[str, Sizer] = "estimate"
    count_quota: Sequence[Limit] = (RPM(3000),)
    count_cache: int = 4096
    reserve_output: bool = False
    default_output_tokens: int = 8192
    max_429_retries: int = 3
    max_5xx_retries: int = 3
    retry_writes: bool = False
    backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = 0.1
    batch_expiry: float = BATCH_EXPIRY
    local_errors: LocalErrors = "response"

    def __post_init__(self) -> None:
        if self.local_errors not in LOCAL_ERRORS:
            raise ConfigError(
                f"local_errors={self.local_errors!r}: use 'response' (a Gemini-shaped error "
                "response for each local refusal) or 'raise' (quotaflow's typed errors)"
            )
        for name in ("max_429_retries", "max_5xx_retries", "count_cache"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be >= 0")
        if not self.batch_expiry > 0:
            raise ConfigError(
                f"batch_expiry={self.batch_expiry!r}: give the seconds after which a batch job "
                "whose end is never seen gives its enqueued tokens back (> 0)"
            )
        if not self.backoff >= 0 or not self.max_backoff >= 0 or not self.jitter >= 0:
            raise ConfigError("backoff, max_backoff and jitter must be >= 0 seconds/fractions")
        for s in self._sizers():
            if not callable(s) and s not in ("estimate", "count"):
                raise ConfigError(
                    f"sizing={s!r}: use 'estimate', 'count', or a function (call, body) -> int"
                )

    def _sizers(self) -> list[Sizer]:
        if isinstance(self.sizing, Mapping):
            return list(self.sizing.values())
        return [self.sizing]

    def sizer(self, model: str | None) -> Sizer:
        """The sizer of ``model`` (a mapping may name models and ``"*"`` for the rest)."""
        if isinstance(self.sizing, str):  # the usual case, before the ABC check
            return self.sizing
        if isinstance(self.sizing, Mapping):
            found = self.sizing.get(model or "", self.sizing.get("*", "estimate"))
            return found
        return self.sizing

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter: ``U(0.5, 1.5) * backoff * 2**attempt``."""
        base = min(self.max_backoff, self.backoff * (2.0**attempt))
        return base * (0.5 + RANDOM.random())


DOC_ARGS = """
    Args:
        limiter: the limiter whose quotas pace the calls (a ``Limiter`` for the async
            transports, a ``SyncLimiter`` for the ``Sync*`` ones).
        transport: the inner transport that really sends (default: the package's own).
        policy: a policy stage (grants, budgets, audit): what an agent handle's transports
            carry (``agents.agent(name).transport()``); ``None`` for none.
        sizing: how input tokens are sized before a call: ``"estimate"`` (default: local, no
            I/O), ``"count"`` (``countTokens`` with the caller's key, cached by content hash,
            metered under ``count_quota``; falls back to the estimate), a function
            ``(call, body) -> int``, or a mapping of model to one of those (``"*"``: the rest).
        count_quota: countTokens' own limits (default 3,000 requests per minute).
        count_cache: how many counts to keep (LRU by content hash).
        reserve_output: also reserve ``maxOutputTokens`` as ``output_tokens`` (for quotas that
            define a limit on that metric; Gemini's TPM counts input only). Off by default.
        default_output_tokens: the reservation when a request names no maximum.
        max_429_retries: retries after a per-minute or shared-capacity 429.
        max_5xx_retries: retries after transient failures, one budget for all of them: 408,
            500, 502, 503 and 504 responses, connection errors (``ConnectError``,
            ``ReadError``, ``WriteError``, ``RemoteProtocolError``) and timeouts
            (``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout``), for
            calls that create nothing only. An attempt that never left (``ConnectError``,
            ``ConnectTimeout``, ``PoolTimeout``) gives its request back; the others keep it.
            When they run out the caller gets the last response, or the inner transport's
            last exception, unchanged.
        retry_writes: also retry calls that create resources (uploads, caches, batches, tuned
            models) after those failures.
        backoff: the first backoff in seconds (doubled per retry, with jitter).
        max_backoff: the longest backoff.
        jitter: the fraction of a 429's ``retryDelay`` added at random to its pause.
        batch_expiry: seconds after which a batch job whose end the transports never see gives
            its enqueued tokens back (default 25 h: the Batch API's 24 h target turnaround
            plus an hour).
        local_errors: how a call refused here (a spent quota or budget, a deadline that
            cannot hold, a policy denial, a malformed request) reaches the caller:
            ``"response"`` (default), a Gemini-shaped error response (429, 403 or 400) whose
            ``ErrorInfo`` (domain ``quotaflow``) carries the reason, dimension,
            ``retry_after`` and ``resets_at``, which the SDKs raise as their own API errors;
            ``"raise"``, quotaflow's typed error (``QuotaExhaustedError``,
            ``QuotaTimeoutError``, ``BudgetExhaustedError``, ``PolicyDeniedError``).
"""


class Options:
    """Keyword options shared by every transport class."""

    @staticmethod
    def names() -> list[str]:
        """The options' names."""
        return list(inspect.signature(Options._build).parameters)

    @staticmethod
    def build(**options: Any) -> Settings:
        """The settings of ``options``; an unknown name is a :class:`ConfigError`."""
        unknown = sorted(set(options) - set(Options.names()))
        if unknown:
            raise ConfigError(
                f"{', '.join(unknown)}: not an option of the quota transports; they take "
                f"{', '.join(sorted(Options.names()))}"
            )
        return Options._build(**options)

    @staticmethod
    def _build(
        sizing: Sizer | Mapping[str, Sizer] = "estimate",
        count_quota: Sequence[Limit] = (RPM(3000),),
        count_cache: int = 4096,
        reserve_output: bool = False,
        default_output_tokens: int = 8192,
        max_429_retries: int = 3,
        max_5xx_retries: int = 3,
        retry_writes: bool = False,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        jitter: float = 0.1,
        batch_expiry: float = BATCH_EXPIRY,
        local_errors: LocalErrors = "response",
    ) -> Settings:
        return Settings(
            sizing=sizing,
            count_quota=tuple(count_quota),
            count_cache=count_cache,
            reserve_output=reserve_output,
            default_output_tokens=default_output_tokens,
            max_429_retries=max_429_retries,
            max_5xx_retries=max_5xx_retries,
            retry_writes=retry_writes,
            backoff=backoff,
            max_backoff=max_backoff,
            jitter=jitter,
            batch_expiry=batch_expiry,
            local_errors=local_errors,
        )
