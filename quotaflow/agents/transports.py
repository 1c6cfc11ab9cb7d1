"""httpx transports that hold each call to its agent's grants, budget and share.

An agent transport checks the policy first (a call outside the grants gets a local 403
``PERMISSION_DENIED`` and never leaves the process), takes the agent's budget (a spent one: a
local 429), then hands the request to a :class:`~quotaflow.transport.QuotaTransport` with the
agent and its priority set, and writes one audit record per call when the response closes.

Make them from an agent handle (``limiter.agent("researcher").transport()``); the classes:

* :class:`AgentTransport` / :class:`SyncAgentTransport` for ``httpx``;
* :class:`Httpx2AgentTransport` / :class:`SyncHttpx2AgentTransport` for ``httpx2`` (google-genai
  3.x's default backend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import httpx

from quotaflow.agents._transport import (
    AsyncAgentDriver,
    SyncAgentDriver,
    async_closing_stream,
    async_tap,
    sync_closing_stream,
    sync_tap,
)
from quotaflow.transport import QuotaTransport, SyncQuotaTransport

if TYPE_CHECKING:
    from quotaflow.agents.handle import AgentHandle

__all__ = [
    "AgentTransport",
    "Httpx2AgentTransport",
    "SyncAgentTransport",
    "SyncHttpx2AgentTransport",
]

_AsyncTap = async_tap(httpx.AsyncBaseTransport, httpx)
_SyncTap = sync_tap(httpx.BaseTransport, httpx)


class AgentTransport(AsyncAgentDriver, httpx.AsyncBaseTransport):
    """An async httpx transport for one agent (or, from a handle without a name, for the agent
    each call names with ``quotaflow.agent()`` or the ``x-quotaflow-agent`` header).

    Args:
        handle: the agent handle (``limiter.agent(name)``).
        transport: the inner transport that really sends (default: httpx's own).
        **options: quota transport options (``sizing=``, ``max_429_retries=``, ...).
    """

    _http = httpx
    _stream_cls = async_closing_stream(httpx.AsyncByteStream)

    def __init__(
        self,
        handle: AgentHandle,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        self._runtime, self._agent, self._audit = handle.runtime, handle.name, handle.audit
        inner = _AsyncTap(transport or httpx.AsyncHTTPTransport())
        self._quota = QuotaTransport(handle.runtime.limiter, inner, **options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Check, budget, send through the quota transport, audit."""
        return cast(httpx.Response, await self._handle_async(request))

    async def aclose(self) -> None:
        """Close the quota transport and the inner transport."""
        await self._quota.aclose()


class SyncAgentTransport(SyncAgentDriver, httpx.BaseTransport):
    """The sync twin of :class:`AgentTransport` (its limiter: ``SyncLimiter.sharing``)."""

    _http = httpx
    _stream_cls = sync_closing_stream(httpx.SyncByteStream)

    def __init__(
        self,
        handle: AgentHandle,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        self._runtime, self._agent, self._audit = handle.runtime, handle.name, handle.audit
        inner = _SyncTap(transport or httpx.HTTPTransport())
        self._quota = SyncQuotaTransport(handle.runtime.sync_limiter, inner, **options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Check, budget, send through the quota transport, audit."""
        return cast(httpx.Response, self._handle(request))

    def close(self) -> None:
        """Close the quota transport and the inner transport."""
        self._quota.close()


def __getattr__(name: str) -> Any:
    if name in ("Httpx2AgentTransport", "SyncHttpx2AgentTransport"):
        try:
            from quotaflow.agents import _httpx2
        except ImportError as exc:
            raise ImportError(
                f"{name} needs the httpx2 package (google-genai 3.x installs it): "
                "pip install httpx2"
            ) from exc
        return getattr(_httpx2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from quotaflow.agents._httpx2 import Httpx2AgentTransport, SyncHttpx2AgentTransport
