"""The driver of :func:`~quotaflow.flow.call_flow` for the async transports (on
asyncio or trio), for any httpx-compatible package (``httpx`` or its fork ``httpx2``, given as
``_http``). It only carries out effects; every decision is in the flow.

This file is the source of the sync driver, which ``scripts/unasync.py`` generates from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio

from quotaflow.errors import ConfigError
from quotaflow.flow import (
    COUNT_MODEL,
    Acquire,
    AcquireBoth,
    Count,
    Effect,
    Exhaust,
    Hold,
    Learn,
    Lookup,
    Outcome,
    Pause,
    Read,
    Release,
    Send,
    Settings,
    Settle,
    Sleep,
    Watch,
    final_amounts,
)
from quotaflow.flow.held import held_for
from quotaflow.flow.policy import CallPolicy
from quotaflow.gemini import Usage
from quotaflow.limiter import Limiter
from quotaflow.observe import metrics
from quotaflow.observe import shadow as _shadow
from quotaflow.transports.base import (
    LIMITER_HELP,
    DriverBase,
    Scan,
    log,
    read_usage,
    release_async,
    settle_async,
    take_directives,
)
from quotaflow.transports.both import acquire_both_async

__all__ = ["AsyncDriver", "async_stream_class"]


def async_stream_class(base: type) -> type:
    """A byte stream (subclass of ``base``) that settles the call when its last chunk has
    passed or it is closed."""

    class _AsyncSettlingStream(base):  # type: ignore[misc]
        def __init__(self, inner: Any, scan: Scan, on_end: Callable[[Scan], Any]) -> None:
            self._inner = inner
            self._scan = scan
            self._on_end = on_end
            self._it: Any = None

        def __aiter__(self) -> AsyncIterator[bytes]:
            # an iterator object, not a generator: an early close leaves nothing to finalize
            self._it = self._inner.__aiter__()
            return self

        async def __anext__(self) -> bytes:
            try:
                chunk: bytes = await self._it.__anext__()
            except StopAsyncIteration:
                if self._scan.end():  # the last chunk has passed: settle now
                    await self._on_end(self._scan)
                raise
            self._scan.feed(chunk)
            return chunk

        async def aclose(self) -> None:
            try:
                if self._scan.end():
                    await self._on_end(self._scan)
            finally:
                await self._inner.aclose()

    return _AsyncSettlingStream


async def _watched(scan: Scan) -> None:
    """The end of a watched stream: nothing to settle (the call's own stream settles it)."""


class AsyncDriver(DriverBase):
    """Runs the flow of each request, carrying out its effects."""

    _limiter: Limiter
    _count: Limiter
    _stream_cls: type

    def _init(
        self, limiter: Limiter, inner: Any, settings: Settings, policy: CallPolicy | None
    ) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigError(
                f"{type(self).__name__} needs a {Limiter.__name__}, got "
                f"{type(limiter).__name__}: {LIMITER_HELP}"
            )
        self._setup(inner, settings, policy)
        self._limiter = limiter
        self._budget = policy.budget_limiter if policy is not None else None
        self._held = held_for(limiter)
        self._count = Limiter(
            tier=None,
            quotas={COUNT_MODEL: settings.count_quota},
            backend=limiter.backend,
            clock=limiter.clock,
            project=limiter.project,
            mode=limiter.mode,
        )

    async def _handle_async(self, request: Any) -> Any:
        pairs = take_directives(request.headers)
        url = str(request.url)  # read once: the passthrough check and the flow share it
        streamed = self._passthrough(request, url)
        content = b"" if streamed else await request.aread()
        flow = self._flow(request, url, content, pairs, streamed)
        step = flow.send
        result: Any = None
        while True:
            try:
                effect = step(result)
            except StopIteration as stop:
                outcome: Outcome = stop.value
                break
            step = flow.send
            try:
                if effect.__class__ is Send:  # the one effect of every call: no call for it
                    result = await self._inner.handle_async_request(request)
                else:
                    result = await self._effect(effect, request)
            except BaseException as exc:  # handed to the flow, which settles and re-raises
                step, result = flow.throw, exc
        return await self._finish(outcome)

    def _effect(self, effect: Effect, request: Any) -> Any:
        """Carries out ``effect``: the common ones hand back the limiter's call as it is (the
        async driver awaits it with no coroutine of its own between)."""
        if isinstance(effect, Acquire):
            return self._take(effect)
        if isinstance(effect, AcquireBoth):
            at_once = self._pick(effect.first.limiter)._ops.may_stall
            return acquire_both_async(self._take, effect.first, effect.second, at_once)
        if isinstance(effect, Settle):
            return settle_async(effect.permit, effect.amounts)
        if isinstance(effect, Release):
            return release_async(effect.permit)
        return self._do(effect, request)

    async def _do(self, effect: Effect, request: Any) -> Any:
        if isinstance(effect, Send):
            return await self._inner.handle_async_request(request)
        if isinstance(effect, Hold):
            found = self._batch_limiter(Limiter, effect.model)
            if found is None:
                return None
            lim, scope = found
            return await lim._acquire(
                scope,
                0,
                {"requests": 0, "batch_tokens": effect.tokens},
                effect.priority,
                None,
                effect.deadline,
                False,
                effect.agent,
            )
        if isinstance(effect, Read):
            return await self._read(effect.response)
        if isinstance(effect, Watch):
            return await self._watch(effect)
        if isinstance(effect, (Count, Lookup)):
            derived = (
                self._count_request(request, effect)
                if isinstance(effect, Count)
                else self._lookup_request(request, effect)
            )
            try:
                resp = await self._inner.handle_async_request(derived)
                return resp.status_code, (await self._read(resp))[0]
            except Exception:
                return None
        if isinstance(effect, Sleep):
            await anyio.sleep(effect.seconds)
            return None
        if isinstance(effect, Pause):
            if metrics.ON:
                metrics.paused(effect.model, effect.dimension)
            return await self._limiter.pause(effect.model, effect.dimension, effect.until)
        if isinstance(effect, Exhaust):
            return await self._limiter.exhaust(effect.model, effect.dimension)
        if isinstance(effect, Learn):
            return await self._limiter.learn(
                effect.model, effect.dimension, effect.amount, quota_id=effect.quota_id
            )
        return await self._effect(effect, request)  # Acquire, Settle, Release

    def _take(self, effect: Acquire) -> Any:
        """The limiter's acquire for ``effect`` (the async driver awaits what it returns)."""
        lim = self._pick(effect.limiter)
        if lim.mode == "shadow":
            return _shadow.acquire_async(lim, effect)
        return lim._acquire(
            effect.model,
            effect.tokens,
            effect.cost,
            effect.priority,
            None,
            None if effect.nowait else effect.deadline,
            effect.nowait,
            effect.agent,
        )

    async def _read(self, response: Any) -> tuple[bytes, Any]:
        if response.is_stream_consumed:  # already read by the inner transport
            return response.content, response
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return self._fresh(response, raw)

    async def _watch(self, effect: Watch) -> Any:
        response = effect.response
        ctype = str(response.headers.get("content-type", "")).lower()
        if "event-stream" not in ctype:  # a whole answer: one event
            decoded, response = await self._read(response)
            effect.on_event(decoded)
            return response
        if response.is_stream_consumed:  # already read by the inner transport
            scan = Scan(response, True, decoded=True, watch=effect.on_event)
            scan.feed(response.content)
            scan.end()
            return response
        scan = Scan(response, True, watch=effect.on_event)
        response.stream = self._stream_cls(response.stream, scan, _watched)
        return response

    async def _finish(self, outcome: Outcome) -> Any:
        info, ticket = outcome.info, outcome.ticket
        if outcome.refusal is not None:
            response = self._answer(outcome)
            self._info(response, info)
            return response
        response, permit = outcome.response, outcome.permit
        self._info(response, info)
        if permit is None:
            if ticket is not None:
                ticket.finish(info)
            return response
        if response.is_closed:  # an inner transport that returned a read response
            await self._settle(outcome, read_usage(response, info.call.streaming))
            return response

        async def settle(scan: Scan) -> None:
            await self._settle(outcome, scan.scanner.usage())

        scan = Scan(response, info.call.streaming)
        response.stream = self._stream_cls(response.stream, scan, settle)
        return response

    async def _settle(self, outcome: Outcome, usage: Usage | None) -> None:
        """Settle the call's permits from the usage its response reported, and finish its
        ticket."""
        info, permit, budget, ticket = outcome.info, outcome.permit, outcome.budget, outcome.ticket
        info.usage = usage
        info.settled = True
        if metrics.ON and usage is not None and info.call.model:
            metrics.settled(info.call.model, info.estimated, usage.input_tokens)
        reserve = self._settings.reserve_output
        amounts: Mapping[str, int] = final_amounts(info, reserve, self._limiter.spend)
        try:
            await permit.settle(**amounts)
            if budget is not None and ticket is not None:
                try:
                    await budget.settle(**ticket.budget_amounts(info))
                except Exception as exc:  # the budget's store failed; the call succeeded
                    log.warning("quotaflow: a budget was not settled (%s)", type(exc).__name__)
        finally:
            if ticket is not None:
                ticket.finish(info)

    async def _aclose(self) -> None:
        await self._inner.aclose()
