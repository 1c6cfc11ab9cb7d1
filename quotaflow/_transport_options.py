"""The options every quota transport takes (``sizing=``, ``max_429_retries=``, ...), in one
place: their names, their checks and their documentation."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from quotaflow._refusal import LocalErrors
from quotaflow._transport_flow import BATCH_EXPIRY, Settings, Sizer
from quotaflow.errors import ConfigError
from quotaflow.limits import RPM, Limit

__all__ = ["DOC_ARGS", "Options"]

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
