"""httpx transports that pace, size, settle and retry every Gemini call.

Hand one object to your client and every request to the Gemini API goes through the limiter:

* :class:`QuotaTransport` (``httpx.AsyncBaseTransport``) and :class:`SyncQuotaTransport`
  (``httpx.BaseTransport``) for httpx, the OpenAI SDK and google-genai's httpx backend;
* :class:`Httpx2QuotaTransport` and :class:`SyncHttpx2QuotaTransport`, the same for ``httpx2``
  (google-genai 3.x's default backend);
* :func:`genai_http_options`: ready ``HttpOptions`` for google-genai, in one line.

Example:
    >>> import httpx, quotaflow
    >>> from quotaflow.transport import QuotaTransport
    >>> limiter = quotaflow.Limiter(tier="tier1")
    >>> client = httpx.AsyncClient(transport=QuotaTransport(limiter))
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx

from quotaflow import metrics
from quotaflow._call_policy import CallPolicy
from quotaflow._genai_http import genai_http_package, make_http_options, split_options
from quotaflow._held import BatchHold, held_for
from quotaflow._openai_sdk import GEMINI_OPENAI_URL, openai_client, openai_http_client
from quotaflow._refusal import LocalErrors
from quotaflow._transport_flow import BATCH_EXPIRY, CallInfo, Settings, Sizer
from quotaflow._transport_io import (
    AsyncDriver,
    SyncDriver,
    async_stream_class,
    sync_stream_class,
)
from quotaflow.errors import ConfigError
from quotaflow.limiter import Limiter
from quotaflow.limits import RPM, Limit
from quotaflow.sync import SyncLimiter

if TYPE_CHECKING:
    from google.genai import types as genai_types

    from quotaflow._transport_httpx2 import Httpx2QuotaTransport, SyncHttpx2QuotaTransport

__all__ = [
    "GEMINI_OPENAI_URL",
    "BatchHold",
    "CallInfo",
    "Httpx2QuotaTransport",
    "QuotaTransport",
    "Sizer",
    "SyncHttpx2QuotaTransport",
    "SyncQuotaTransport",
    "batch_holds",
    "genai_http_options",
    "openai_client",
    "openai_http_client",
]

_DOC_ARGS = """
    Args:
        limiter: the limiter whose quotas pace the calls.
        transport: the inner transport that really sends (default: the package's own).
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


class _Options:
    """Keyword options shared by every transport class."""

    @staticmethod
    def names() -> list[str]:
        """The options' names."""
        return list(inspect.signature(_Options._build).parameters)

    @staticmethod
    def build(**options: Any) -> Settings:
        """The settings of ``options``; an unknown name is a :class:`ConfigError`."""
        unknown = sorted(set(options) - set(_Options.names()))
        if unknown:
            raise ConfigError(
                f"{', '.join(unknown)}: not an option of the quota transports; they take "
                f"{', '.join(sorted(_Options.names()))}"
            )
        return _Options._build(**options)

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


class QuotaTransport(AsyncDriver, httpx.AsyncBaseTransport):
    """An async httpx transport that admits every Gemini call within its model's quota.

    Metered calls (generate, stream, embed; countTokens under its own quota) wait for
    capacity, are sized before and settled after (from ``usageMetadata``, also in SSE streams,
    without buffering), and 429s, 5xx, 408s, dropped connections and timeouts are fed back
    and retried within bounds. Everything else passes straight through, classified.
    ``x-quotaflow-priority``, ``x-quotaflow-timeout`` and ``x-quotaflow-agent`` request headers
    set per-call options and are removed before the request leaves;
    ``quotaflow.priority()/deadline()/agent()`` do the same for a block.
    """

    _http = httpx
    _stream_cls = async_stream_class(httpx.AsyncByteStream)

    def __init__(
        self,
        limiter: Limiter,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        policy: CallPolicy | None = None,
        **options: Any,
    ) -> None:
        self._init_async(
            limiter, transport or httpx.AsyncHTTPTransport(), _Options.build(**options), policy
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Admit, send, feed back and retry one request."""
        if metrics.SPANS:
            with metrics.span(request.method, request.url):
                return cast(httpx.Response, await self._handle_async(request))
        return cast(httpx.Response, await self._handle_async(request))

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._aclose()


class SyncQuotaTransport(SyncDriver, httpx.BaseTransport):
    """The sync twin of :class:`QuotaTransport`, on a :class:`~quotaflow.SyncLimiter`."""

    _http = httpx
    _stream_cls = sync_stream_class(httpx.SyncByteStream)

    def __init__(
        self,
        limiter: SyncLimiter,
        transport: httpx.BaseTransport | None = None,
        *,
        policy: CallPolicy | None = None,
        **options: Any,
    ) -> None:
        self._init_sync(
            limiter, transport or httpx.HTTPTransport(), _Options.build(**options), policy
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Admit, send, feed back and retry one request."""
        if metrics.SPANS:
            with metrics.span(request.method, request.url):
                return cast(httpx.Response, self._handle(request))
        return cast(httpx.Response, self._handle(request))

    def close(self) -> None:
        """Close the inner transport."""
        self._inner.close()


QuotaTransport.__doc__ = (QuotaTransport.__doc__ or "") + _DOC_ARGS
SyncQuotaTransport.__doc__ = (SyncQuotaTransport.__doc__ or "") + _DOC_ARGS


def __getattr__(name: str) -> Any:
    if name in ("Httpx2QuotaTransport", "SyncHttpx2QuotaTransport"):
        try:
            from quotaflow import _transport_httpx2
        except ImportError as exc:
            raise ImportError(
                f"{name} needs the httpx2 package (google-genai 3.x installs it): "
                "pip install httpx2"
            ) from exc
        return getattr(_transport_httpx2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def genai_http_options(
    limiter: Limiter,
    *,
    sync_limiter: SyncLimiter | None = None,
    backend: Literal["auto", "httpx", "httpx2"] = "auto",
    base_url: str | None = None,
    api_version: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: int | None = None,
    **options: Any,
) -> genai_types.HttpOptions:
    """Ready ``HttpOptions`` for google-genai: both clients (``client.models`` and
    ``client.aio.models``) go through quota transports on ``limiter``.

    The async transport goes in ``async_client_args``, which also keeps ``client.aio`` off
    aiohttp when aiohttp is installed (the SDK sends through aiohttp only when no transport is
    given). The SDK's own ``retry_options`` stay off: it ignores ``retryDelay`` and its retries
    would stack on the transport's.

    Args:
        limiter: the async limiter; the sync client uses ``sync_limiter`` or
            ``SyncLimiter.sharing(limiter)`` (same backend, tables and clock).
        backend: the HTTP package; ``auto`` picks the SDK's own choice (``httpx2`` for
            google-genai 3.x unless ``GOOGLE_GENAI_HTTP_CLIENT=httpx``).
        base_url, api_version, headers, timeout: passed to ``HttpOptions`` (``timeout`` in
            milliseconds, as the SDK counts it).
        **options: transport options (``sizing=``, ``max_429_retries=``, ``local_errors=``,
            ...), and any other ``HttpOptions`` field, merged (``client_args`` and
            ``async_client_args`` get the transport added, ``extra_body`` passes as it is).

    Raises:
        ConfigError: ``GOOGLE_GENAI_HTTP_CLIENT`` makes the SDK use the other HTTP package
            than ``backend`` (its client could not drive these transports); an
            ``HttpOptions`` field that cannot be merged (``retry_options``: use
            ``max_429_retries=``/``max_5xx_retries=``; a client of your own; a ``transport``
            in ``client_args``); an option nobody takes.

    Example:
        >>> from google import genai
        >>> client = genai.Client(api_key="...", http_options=genai_http_options(limiter))
    """
    sdk = split_options(options, _Options.names())
    for name, value in (
        ("base_url", base_url),
        ("api_version", api_version),
        ("headers", headers),
        ("timeout", timeout),
    ):
        if value is not None:
            sdk[name] = value
    sync = sync_limiter if sync_limiter is not None else SyncLimiter.sharing(limiter)
    flavor = genai_http_package() if backend == "auto" else backend
    if flavor == "httpx2":
        from quotaflow._transport_httpx2 import Httpx2QuotaTransport, SyncHttpx2QuotaTransport

        async_t: Any = Httpx2QuotaTransport(limiter, **options)
        sync_t: Any = SyncHttpx2QuotaTransport(sync, **options)
    else:
        async_t = QuotaTransport(limiter, **options)
        sync_t = SyncQuotaTransport(sync, **options)
    return cast("genai_types.HttpOptions", make_http_options(async_t, sync_t, sdk, flavor))


def batch_holds(limiter: Limiter | SyncLimiter) -> dict[str, BatchHold]:
    """The batch jobs whose enqueued tokens the transports of ``limiter`` hold, by job name
    (``batches/abc``): each one's model, tokens and expiry. A job leaves this when a
    ``GET``, list, cancel or delete of it through a transport shows its end, or at its expiry.

    Example:
        >>> batch_holds(Limiter(tier=None, quotas={}))
        {}
    """
    return held_for(limiter).holds()
