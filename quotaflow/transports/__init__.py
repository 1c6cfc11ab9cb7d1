"""httpx transports that pace, size, settle and retry every Gemini call.

Hand one object to your client and every request to the Gemini API goes through the limiter:

* :class:`QuotaTransport` (``httpx.AsyncBaseTransport``) and :class:`SyncQuotaTransport`
  (``httpx.BaseTransport``) for httpx, the OpenAI SDK and google-genai's httpx backend;
* :class:`Httpx2QuotaTransport` and :class:`SyncHttpx2QuotaTransport`, the same for ``httpx2``
  (google-genai 3.x's default backend);
* :func:`genai_http_options`: ready ``HttpOptions`` for google-genai, in one line.

Example:
    >>> import httpx, quotaflow
    >>> from quotaflow.transports import QuotaTransport
    >>> limiter = quotaflow.Limiter(tier="tier1")
    >>> client = httpx.AsyncClient(transport=QuotaTransport(limiter))
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

from quotaflow.flow import CallInfo, Options, Sizer
from quotaflow.flow.held import BatchHold, held_for
from quotaflow.flow.policy import CallPolicy
from quotaflow.limiter import Limiter
from quotaflow.sync import SyncLimiter
from quotaflow.transports.genai_sdk import genai_http_package, make_http_options, split_options
from quotaflow.transports.httpx_async import QuotaTransport
from quotaflow.transports.httpx_sync import SyncQuotaTransport
from quotaflow.transports.openai_sdk import GEMINI_OPENAI_URL, openai_client, openai_http_client

if TYPE_CHECKING:
    from google.genai import types as genai_types

    from quotaflow.transports.httpx2_async import Httpx2QuotaTransport
    from quotaflow.transports.httpx2_sync import SyncHttpx2QuotaTransport

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


def __getattr__(name: str) -> Any:
    modules = {
        "Httpx2QuotaTransport": "quotaflow.transports.httpx2_async",
        "SyncHttpx2QuotaTransport": "quotaflow.transports.httpx2_sync",
    }
    if name in modules:
        try:
            module = importlib.import_module(modules[name])
        except ImportError as exc:
            raise ImportError(
                f"{name} needs the httpx2 package (google-genai 3.x installs it): "
                "pip install httpx2"
            ) from exc
        return getattr(module, name)
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
    policy: CallPolicy | None = None,
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
        policy: the policy stage both transports carry (an agent handle's
            ``http_options()`` passes its agent's).
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
    sdk = split_options(options, Options.names())
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
        from quotaflow.transports.httpx2_async import Httpx2QuotaTransport
        from quotaflow.transports.httpx2_sync import SyncHttpx2QuotaTransport

        async_t: Any = Httpx2QuotaTransport(limiter, policy=policy, **options)
        sync_t: Any = SyncHttpx2QuotaTransport(sync, policy=policy, **options)
    else:
        async_t = QuotaTransport(limiter, policy=policy, **options)
        sync_t = SyncQuotaTransport(sync, policy=policy, **options)
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
