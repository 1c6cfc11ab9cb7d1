"""A quota transport shell: the class an httpx-compatible client takes; the logic is the
driver's. This file (``httpx.AsyncClient``) is the source of the other three shells
(``httpx.Client``, ``httpx2.AsyncClient``, ``httpx2.Client``), which ``scripts/unasync.py``
generates from it."""

from __future__ import annotations

from typing import Any

import httpx

from quotaflow.flow import DOC_ARGS, Options
from quotaflow.flow.policy import CallPolicy
from quotaflow.limiter import Limiter
from quotaflow.observe import metrics
from quotaflow.transports.driver_async import AsyncDriver, async_stream_class

__all__ = ["QuotaTransport"]


class QuotaTransport(AsyncDriver, httpx.AsyncBaseTransport):
    """A transport for ``httpx.AsyncClient`` that admits every Gemini call within its model's
    quota.

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
        inner = transport or httpx.AsyncHTTPTransport()
        self._init(limiter, inner, Options.build(**options), policy)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Admit, send, feed back and retry one request."""
        if metrics.SPANS:
            with metrics.span(request.method, request.url):
                response: httpx.Response = await self._handle_async(request)
                return response
        response = await self._handle_async(request)
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._aclose()


QuotaTransport.__doc__ = (QuotaTransport.__doc__ or "") + DOC_ARGS
