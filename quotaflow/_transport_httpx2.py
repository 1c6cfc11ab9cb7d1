"""The quota transports for ``httpx2``, the fork of httpx that google-genai 3.x uses by
default. Its classes are not httpx's, so a transport must subclass its own bases; the logic is
the same drivers as :mod:`quotaflow.transport`."""

from __future__ import annotations

from typing import Any

import httpx2

from quotaflow._call_policy import CallPolicy
from quotaflow._transport_io import (
    AsyncDriver,
    SyncDriver,
    async_stream_class,
    sync_stream_class,
)
from quotaflow.limiter import Limiter
from quotaflow.sync import SyncLimiter

__all__ = ["Httpx2QuotaTransport", "SyncHttpx2QuotaTransport"]


class Httpx2QuotaTransport(AsyncDriver, httpx2.AsyncBaseTransport):
    """:class:`~quotaflow.transport.QuotaTransport` for ``httpx2`` clients (same options)."""

    _http = httpx2
    _stream_cls = async_stream_class(httpx2.AsyncByteStream)

    def __init__(
        self,
        limiter: Limiter,
        transport: httpx2.AsyncBaseTransport | None = None,
        *,
        policy: CallPolicy | None = None,
        **options: Any,
    ) -> None:
        from quotaflow.transport import _Options

        self._init_async(
            limiter, transport or httpx2.AsyncHTTPTransport(), _Options.build(**options), policy
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Admit, send, feed back and retry one request."""
        response: httpx2.Response = await self._handle_async(request)
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._aclose()


class SyncHttpx2QuotaTransport(SyncDriver, httpx2.BaseTransport):
    """:class:`~quotaflow.transport.SyncQuotaTransport` for ``httpx2`` clients."""

    _http = httpx2
    _stream_cls = sync_stream_class(httpx2.SyncByteStream)

    def __init__(
        self,
        limiter: SyncLimiter,
        transport: httpx2.BaseTransport | None = None,
        *,
        policy: CallPolicy | None = None,
        **options: Any,
    ) -> None:
        from quotaflow.transport import _Options

        self._init_sync(
            limiter, transport or httpx2.HTTPTransport(), _Options.build(**options), policy
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Admit, send, feed back and retry one request."""
        response: httpx2.Response = self._handle(request)
        return response

    def close(self) -> None:
        """Close the inner transport."""
        self._inner.close()
