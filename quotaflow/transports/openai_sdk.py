"""The OpenAI SDK on Gemini's OpenAI-compatible endpoint, through the quota transports.

:func:`openai_http_client` gives the ``http_client`` the SDK takes (of the HTTP package the
installed SDK is built on: ``httpx2`` for openai 3.x, ``httpx`` before); :func:`openai_client`
the whole client. The SDK's own retries are set off (``max_retries=0``): it would resend on a
429 without pausing the violated dimension and its retries would multiply the transport's. A
``max_retries=N`` given here is folded into quotaflow's (the transport retries 429s and 5xx up to
``N`` times each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quotaflow.errors import ConfigError

if TYPE_CHECKING:
    from quotaflow.limiter import Limiter
    from quotaflow.sync import SyncLimiter

__all__ = ["GEMINI_OPENAI_URL", "openai_client", "openai_http_client"]

GEMINI_OPENAI_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"
"""Gemini's OpenAI-compatible endpoint."""


def _sdk_flavor() -> str:
    """``httpx2`` or ``httpx``: the package the installed OpenAI SDK sends with."""
    try:
        import openai
    except ImportError as exc:
        raise ConfigError(
            "the OpenAI helpers need the OpenAI SDK: pip install 'quotaflow[openai]'"
        ) from exc
    bases = [c.__module__.split(".")[0] for c in openai.DefaultHttpxClient.__mro__]
    return "httpx2" if "httpx2" in bases else "httpx"


def _fold(max_retries: int | None, options: dict[str, Any]) -> dict[str, Any]:
    if max_retries is None:
        return options
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"max_retries={max_retries!r}: give a whole number >= 0")
    return {"max_429_retries": max_retries, "max_5xx_retries": max_retries, **options}


def openai_http_client(
    limiter: Limiter | SyncLimiter, *, max_retries: int | None = None, **options: Any
) -> Any:
    """The ``http_client`` for ``openai.AsyncOpenAI`` (given a :class:`~quotaflow.Limiter`) or
    ``openai.OpenAI`` (given a :class:`~quotaflow.SyncLimiter`), its calls admitted by
    ``limiter``. Pass ``max_retries=0`` to the SDK with it (:func:`openai_client` does).

    Args:
        limiter: async limiter for the async client, sync limiter for the sync one.
        max_retries: fold the SDK's retries into quotaflow's (429s and 5xx, each up to this
            many times); ``None`` keeps the transport's defaults.
        **options: transport options (``sizing=``, ``reserve_output=``, ...).
    """
    from quotaflow.limiter import Limiter
    from quotaflow.sync import SyncLimiter

    opts = _fold(max_retries, dict(options))
    flavor = _sdk_flavor()
    if isinstance(limiter, Limiter):
        if flavor == "httpx2":
            import httpx2

            from quotaflow.transports.httpx2_async import Httpx2QuotaTransport

            return httpx2.AsyncClient(transport=Httpx2QuotaTransport(limiter, **opts))
        import httpx

        from quotaflow.transports import QuotaTransport

        return httpx.AsyncClient(transport=QuotaTransport(limiter, **opts))
    if isinstance(limiter, SyncLimiter):
        if flavor == "httpx2":
            import httpx2

            from quotaflow.transports.httpx2_sync import SyncHttpx2QuotaTransport

            return httpx2.Client(transport=SyncHttpx2QuotaTransport(limiter, **opts))
        import httpx

        from quotaflow.transports import SyncQuotaTransport

        return httpx.Client(transport=SyncQuotaTransport(limiter, **opts))
    raise ConfigError(
        f"limiter={limiter!r}: give a quotaflow.Limiter (AsyncOpenAI) or SyncLimiter (OpenAI)"
    )


def openai_client(
    limiter: Limiter | SyncLimiter,
    *,
    api_key: str | None = None,
    base_url: str = GEMINI_OPENAI_URL,
    max_retries: int | None = None,
    transport_options: dict[str, Any] | None = None,
    **client_options: Any,
) -> Any:
    """An ``openai.AsyncOpenAI`` (for a :class:`~quotaflow.Limiter`) or ``openai.OpenAI``
    (for a :class:`~quotaflow.SyncLimiter`) on Gemini's OpenAI-compatible endpoint, every
    call admitted by ``limiter``, the SDK's own retries off.

    Args:
        limiter: the limiter; its kind picks the client's.
        api_key: the Gemini API key (default: the SDK's ``OPENAI_API_KEY``).
        base_url: the endpoint (default :data:`GEMINI_OPENAI_URL`; the emulator's is
            ``<base_url>/v1beta/openai/``).
        max_retries: folded into quotaflow's retries (see :func:`openai_http_client`).
        transport_options: the transport's options (``sizing=``, ...).
        **client_options: passed to the SDK client (``timeout=``, ``default_headers=``, ...).

    Example:
        >>> client = openai_client(quotaflow.Limiter(tier="tier1"), api_key=KEY)
        >>> await client.chat.completions.create(model="gemini-2.5-flash", messages=[...])
    """
    import openai

    from quotaflow.limiter import Limiter

    if "http_client" in client_options:
        raise ConfigError("http_client=: openai_client makes its own; use openai_http_client")
    http = openai_http_client(limiter, max_retries=max_retries, **(transport_options or {}))
    cls = openai.AsyncOpenAI if isinstance(limiter, Limiter) else openai.OpenAI
    return cls(
        api_key=api_key, base_url=base_url, http_client=http, max_retries=0, **client_options
    )
