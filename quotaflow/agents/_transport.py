"""The agent transports' drivers: check the policy, take the budget, delegate to a quota
transport, read what a create made, and write the audit record when the response closes.

Every decision is in :class:`~quotaflow.agents._call.AgentCall`; the drivers only do I/O, for
any httpx-compatible package (``httpx`` or ``httpx2``, given as ``_http``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio

from quotaflow import context
from quotaflow._refusal import Refusal, answer
from quotaflow._transport_flow import send_failure
from quotaflow.agents._call import AgentCall, Tap, request_key
from quotaflow.errors import QuotaError
from quotaflow.gemini import parse_error

if TYPE_CHECKING:
    from quotaflow.agents.audit import AuditLog
    from quotaflow.agents.handle import AgentRuntime

__all__ = [
    "AsyncAgentDriver",
    "SyncAgentDriver",
    "async_closing_stream",
    "async_tap",
    "sync_closing_stream",
    "sync_tap",
]

log = logging.getLogger("quotaflow.agents")

_TAP: ContextVar[tuple[Any, Tap] | None] = ContextVar("quotaflow_agents_tap", default=None)
_PREFIX = "x-quotaflow-"


class _Refused(Exception):
    """The quota transport answered a refusal of its own (carried to the failure path, which
    gives the budget back or keeps what an earlier attempt sent)."""

    def __init__(self, refusal: Refusal, response: Any) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal
        self.response = response


def _peek(headers: Any) -> dict[str, str]:
    return {
        k.lower()[len(_PREFIX) :]: v for k, v in headers.items() if k.lower().startswith(_PREFIX)
    }


def _is_upload(method: str, url: Any) -> bool:
    return method.upper() == "POST" and str(url.path).startswith("/upload/")


def _fresh(http: Any, response: Any, raw: bytes) -> tuple[bytes, Any]:
    decoded: bytes = http.Response(
        response.status_code, headers=response.headers, content=raw
    ).read()
    fresh = http.Response(
        response.status_code,
        headers=response.headers,
        stream=http.ByteStream(raw),
        extensions=response.extensions,
    )
    return decoded, fresh


def _note_429(tap: Tap, decoded: bytes) -> None:
    err = parse_error(decoded)
    if err is not None:
        tap.quota_ids.extend(v.quota_id for v in err.violations if v.quota_id)


def _note_failure(tap: Tap, exc: BaseException) -> None:
    # only an error that proves the request never left (no connection was had) leaves the
    # budget's request unspent; a timeout or a cancellation mid-send may have reached the server
    if not (isinstance(exc, Exception) and send_failure(exc) == "unsent"):
        tap.sent = True


def async_tap(base: type, http: Any) -> type:
    """An async transport (subclass of ``base``) under the quota transport that notes each
    attempt's status and a 429's ``quotaId`` for the audit record."""

    class _AsyncTap(base):  # type: ignore[misc]
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            slot = _TAP.get()
            if slot is None or slot[0] is not request:  # e.g. a countTokens sizing call
                return await self._inner.handle_async_request(request)
            try:
                response = await self._inner.handle_async_request(request)
            except BaseException as exc:
                _note_failure(slot[1], exc)
                raise
            slot[1].sent = True
            slot[1].statuses.append(response.status_code)
            if response.status_code == 429:
                try:
                    raw = b"".join([c async for c in response.aiter_raw()])
                finally:
                    await response.aclose()
                decoded, response = _fresh(http, response, raw)
                _note_429(slot[1], decoded)
            return response

        async def aclose(self) -> None:
            await self._inner.aclose()

    return _AsyncTap


def sync_tap(base: type, http: Any) -> type:
    """The sync twin of :func:`async_tap`."""

    class _SyncTap(base):  # type: ignore[misc]
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def handle_request(self, request: Any) -> Any:
            slot = _TAP.get()
            if slot is None or slot[0] is not request:
                return self._inner.handle_request(request)
            try:
                response = self._inner.handle_request(request)
            except BaseException as exc:
                _note_failure(slot[1], exc)
                raise
            slot[1].sent = True
            slot[1].statuses.append(response.status_code)
            if response.status_code == 429:
                try:
                    raw = b"".join(list(response.iter_raw()))
                finally:
                    response.close()
                decoded, response = _fresh(http, response, raw)
                _note_429(slot[1], decoded)
            return response

        def close(self) -> None:
            self._inner.close()

    return _SyncTap


def async_closing_stream(base: type) -> type:
    """An async byte stream (subclass of ``base``) that runs ``on_close`` once at its end."""

    class _AsyncClosing(base):  # type: ignore[misc]
        def __init__(self, inner: Any, on_close: Callable[[], Awaitable[None]]) -> None:
            self._inner = inner
            self._on_close: Callable[[], Awaitable[None]] | None = on_close
            self._it: Any = None

        def __aiter__(self) -> AsyncIterator[bytes]:
            self._it = self._inner.__aiter__()
            return self

        async def __anext__(self) -> bytes:
            try:
                chunk: bytes = await self._it.__anext__()
            except StopAsyncIteration:
                await self._end()
                raise
            return chunk

        async def _end(self) -> None:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                with anyio.CancelScope(shield=True):
                    await on_close()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()  # the quota transport settles first
            finally:
                await self._end()

    return _AsyncClosing


def sync_closing_stream(base: type) -> type:
    """The sync twin of :func:`async_closing_stream`."""

    class _SyncClosing(base):  # type: ignore[misc]
        def __init__(self, inner: Any, on_close: Callable[[], None]) -> None:
            self._inner = inner
            self._on_close: Callable[[], None] | None = on_close
            self._it: Any = None

        def __iter__(self) -> Iterator[bytes]:
            self._it = iter(self._inner)
            return self

        def __next__(self) -> bytes:
            try:
                chunk: bytes = next(self._it)
            except StopIteration:
                self._end()
                raise
            return chunk

        def _end(self) -> None:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._end()

    return _SyncClosing


class _Base:
    """State shared by the async and sync drivers."""

    _http: Any
    _runtime: AgentRuntime
    _agent: str | None
    _audit: AuditLog
    _quota: Any

    def _start(self, request: Any, body: bytes) -> AgentCall:
        return AgentCall(
            self._runtime,
            self._agent,
            request.method,
            str(request.url),
            _peek(request.headers),
            body,
            request_key(request.headers, str(request.url)),
            self._audit.content_hash,
            request.headers,
        )

    def _local(self, call: AgentCall, refusal: Refusal) -> Any:
        """Answer a refusal of the policy or the budget (or raise it: ``local_errors``)."""
        if self._quota._settings.local_errors == "raise":
            call.status = None  # the caller gets the typed error, no response
            self._audit.emit(call.record())
            raise refusal.error
        self._audit.emit(call.record())
        local = answer(refusal, call.call.surface)
        return self._http.Response(
            local.status,
            headers=list(local.headers),
            content=local.body,
            extensions={"quotaflow_agents": call.decision, "quotaflow_refusal": refusal},
        )

    @staticmethod
    def _prepare(call: AgentCall, request: Any) -> None:
        for name in [k for k in request.headers if k.lower().startswith(_PREFIX)]:
            if name.lower() in (_PREFIX + "agent", _PREFIX + "priority"):
                del request.headers[name]
        for k, v in call.headers().items():
            request.headers[k] = v

    def __repr__(self) -> str:
        return f"{type(self).__name__}(agent={self._agent!r}, quota={type(self._quota).__name__})"


class AsyncAgentDriver(_Base):
    """The async driver (anyio: asyncio or trio)."""

    _stream_cls: type

    async def _handle_async(self, request: Any) -> Any:
        upload = _is_upload(request.method, request.url)
        body = b"" if upload else await request.aread()
        call = self._start(request, body)
        answer = call.denied()
        if answer is not None:
            return self._local(call, answer)
        budget: Any = None
        cost = call.budget_cost()
        if cost is not None:
            agent, tokens, amounts = cost
            try:
                budget = await self._runtime.budget.acquire_nowait(agent, tokens, cost=amounts)
            except QuotaError as exc:
                return self._local(call, call.budget_refused(exc))
        self._prepare(call, request)
        token = _TAP.set((request, call.tap))
        try:
            with context.agent(call.agent) if call.agent else contextlib.nullcontext():
                response = await self._quota.handle_async_request(request)
            refusal = response.extensions.get("quotaflow_refusal")
            if refusal is not None:
                raise _Refused(refusal, response)
            call.responded(response.status_code, response.extensions.get("quotaflow"))
            if call.wants_body():
                try:
                    raw = b"".join([c async for c in response.aiter_raw()])
                finally:
                    await response.aclose()
                decoded, response = _fresh(self._http, response, raw)
                call.body(decoded)
        except BaseException as exc:
            if isinstance(exc, _Refused):
                call.refused(exc.refusal)
            else:
                call.failed(exc)
            with anyio.CancelScope(shield=True):
                if budget is not None:
                    if call.tap.sent:  # it may have reached the server: it keeps its request
                        budget.mark_sent()
                        await budget.settle(**call.settle_amounts())
                    else:
                        await budget.release()
            self._audit.emit(call.record())
            if isinstance(exc, _Refused):
                return exc.response
            raise
        finally:
            _TAP.reset(token)

        async def on_close() -> None:
            try:
                if budget is not None:
                    await budget.settle(**call.settle_amounts())
            except Exception as exc:  # the budget's store failed: the call itself succeeded
                log.warning("quotaflow agents: budget not settled (%s)", type(exc).__name__)
            self._audit.emit(call.record())

        if response.is_closed:
            await on_close()
            return response
        response.stream = self._stream_cls(response.stream, on_close)
        return response


class SyncAgentDriver(_Base):
    """The sync driver (the calling thread)."""

    _stream_cls: type

    def _handle(self, request: Any) -> Any:
        upload = _is_upload(request.method, request.url)
        body = b"" if upload else request.read()
        call = self._start(request, body)
        answer = call.denied()
        if answer is not None:
            return self._local(call, answer)
        budget: Any = None
        cost = call.budget_cost()
        if cost is not None:
            agent, tokens, amounts = cost
            try:
                budget = self._runtime.sync_budget.acquire_nowait(agent, tokens, cost=amounts)
            except QuotaError as exc:
                return self._local(call, call.budget_refused(exc))
        self._prepare(call, request)
        token = _TAP.set((request, call.tap))
        try:
            with context.agent(call.agent) if call.agent else contextlib.nullcontext():
                response = self._quota.handle_request(request)
            refusal = response.extensions.get("quotaflow_refusal")
            if refusal is not None:
                raise _Refused(refusal, response)
            call.responded(response.status_code, response.extensions.get("quotaflow"))
            if call.wants_body():
                try:
                    raw = b"".join(list(response.iter_raw()))
                finally:
                    response.close()
                decoded, response = _fresh(self._http, response, raw)
                call.body(decoded)
        except BaseException as exc:
            if isinstance(exc, _Refused):
                call.refused(exc.refusal)
            else:
                call.failed(exc)
            if budget is not None:
                if call.tap.sent:
                    budget.mark_sent()
                    budget.settle(**call.settle_amounts())
                else:
                    budget.release()
            self._audit.emit(call.record())
            if isinstance(exc, _Refused):
                return exc.response
            raise
        finally:
            _TAP.reset(token)

        def on_close() -> None:
            try:
                if budget is not None:
                    budget.settle(**call.settle_amounts())
            except Exception as exc:
                log.warning("quotaflow agents: budget not settled (%s)", type(exc).__name__)
            self._audit.emit(call.record())

        if response.is_closed:
            on_close()
            return response
        response.stream = self._stream_cls(response.stream, on_close)
        return response
