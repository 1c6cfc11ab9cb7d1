"""The agent transports for ``httpx2`` (google-genai 3.x's default HTTP package)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx2

from quotaflow._transport_httpx2 import Httpx2QuotaTransport, SyncHttpx2QuotaTransport
from quotaflow.agents._transport import (
    AsyncAgentDriver,
    SyncAgentDriver,
    async_closing_stream,
    async_tap,
    sync_closing_stream,
    sync_tap,
)

if TYPE_CHECKING:
    from quotaflow.agents.handle import AgentHandle

__all__ = ["Httpx2AgentTransport", "SyncHttpx2AgentTransport"]

_AsyncTap = async_tap(httpx2.AsyncBaseTransport, httpx2)
_SyncTap = sync_tap(httpx2.BaseTransport, httpx2)


class Httpx2AgentTransport(AsyncAgentDriver, httpx2.AsyncBaseTransport):
    """:class:`~quotaflow.agents.transports.AgentTransport` for ``httpx2`` clients."""

    _http = httpx2
    _stream_cls = async_closing_stream(httpx2.AsyncByteStream)

    def __init__(
        self,
        handle: AgentHandle,
        transport: httpx2.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        self._runtime, self._agent, self._audit = handle.runtime, handle.name, handle.audit
        inner = _AsyncTap(transport or httpx2.AsyncHTTPTransport())
        self._quota = Httpx2QuotaTransport(handle.runtime.limiter, inner, **options)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Check, budget, send through the quota transport, audit."""
        response: httpx2.Response = await self._handle_async(request)
        return response

    async def aclose(self) -> None:
        """Close the quota transport and the inner transport."""
        await self._quota.aclose()


class SyncHttpx2AgentTransport(SyncAgentDriver, httpx2.BaseTransport):
    """:class:`~quotaflow.agents.transports.SyncAgentTransport` for ``httpx2`` clients."""

    _http = httpx2
    _stream_cls = sync_closing_stream(httpx2.SyncByteStream)

    def __init__(
        self,
        handle: AgentHandle,
        transport: httpx2.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        self._runtime, self._agent, self._audit = handle.runtime, handle.name, handle.audit
        inner = _SyncTap(transport or httpx2.HTTPTransport())
        self._quota = SyncHttpx2QuotaTransport(handle.runtime.sync_limiter, inner, **options)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Check, budget, send through the quota transport, audit."""
        response: httpx2.Response = self._handle(request)
        return response

    def close(self) -> None:
        """Close the quota transport and the inner transport."""
        self._quota.close()
