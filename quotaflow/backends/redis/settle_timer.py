"""The async face's deferred settles on their way out (see :meth:`RedisBackend.settle`).

A settle deferred on an event loop rides on the scope's next script call; one that finds no
call within :data:`~quotaflow.backends.redis.engine_state.SETTLE_DELAY` is sent by this loop's
timer, in a call of its own (the lean call on asyncio, the general flow if that fails). What is
still queued goes out at ``aclose()``/``close()``, or at exit for a program that ends without
them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from quotaflow.backends.redis.effects import EngineFlow
from quotaflow.backends.redis.engine import Engine
from quotaflow.backends.redis.engine_lean import Started
from quotaflow.backends.redis.engine_state import SETTLE_DELAY
from quotaflow.backends.redis.lean import _Lean, _on_asyncio, call_packed, call_packed_many
from quotaflow.errors import BackendError

__all__ = ["SettleTimer"]

_TICK = 0.001
"""The shortest re-arm of the flush timer: uvloop keeps time in whole milliseconds and runs a
timer of under half of one at once, so a shorter one (the rest of a settle's delay, when the
timer fired a little early) would run the timer again and again until the settle is due."""


def _flush_at_exit(ref: weakref.ReferenceType[SettleTimer]) -> None:
    timer = ref()
    if timer is not None:
        timer.send_all()


class SettleTimer:
    """One backend's flush timer per event loop, the flushes it started, and its exit hook.

    ``arun`` runs a flow on the running loop, ``lean`` gives that loop's lean-call state,
    ``run`` runs a flow with the sync client (the backend's own drivers)."""

    def __init__(
        self,
        engine: Engine,
        arun: Callable[[EngineFlow], Awaitable[Any]],
        lean: Callable[[], _Lean],
        run: Callable[[EngineFlow], Any],
    ) -> None:
        self._engine = engine
        self._arun = arun
        self._lean = lean
        self._run = run
        self._timers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = {}
        self._flushing: set[asyncio.Task[Any]] = set()
        # a program that ends without close(): its deferred settles still go out at exit
        self._at_exit = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def arm(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Start ``loop``'s flush timer, unless it runs already."""
        entry = self._timers.get(id(loop))
        if entry is None or entry[0] is not loop:
            self._timers[id(loop)] = (loop, loop.call_later(delay, self._fire, loop))

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The flush timer: send deferred settles that found no call to ride on."""
        entry = self._timers.get(id(loop))
        if entry is not None and entry[0] is loop:
            del self._timers[id(loop)]
        scopes, nxt = self._engine.due(SETTLE_DELAY)
        # several scopes (a call's model and spend): their settles in one write
        flushes = [self.flush_all(scopes)] if len(scopes) > 1 else map(self.flush, scopes)
        for flush in flushes:
            task = loop.create_task(flush)
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        if nxt is not None:
            self.arm(loop, max(_TICK, nxt - time.monotonic()))

    async def flush(self, scope: str) -> None:
        """Send the scope's deferred settles: the lean call on asyncio (queued with the loop's
        other calls), the general flow if it fails or elsewhere."""
        e = self._engine
        now = e.lnow()
        first = None
        if _on_asyncio():
            lean = self._lean()
            if lean.pool is not None:
                first = e.start_flush(scope, now)
        if first is not None:
            try:
                first.raw = await call_packed(lean, first.packed)
            except Exception:  # NOSCRIPT, a dropped connection...: the flow sends them
                e.unstart(scope, first)
                first = None
                now = e.lnow()
            except BaseException:  # cancelled: whether it ran is unknown; they stay queued
                e.unstart(scope, first)
                raise
        with contextlib.suppress(BackendError):  # kept in the outbox; the link replays it
            await self._arun(e.flush(scope, now, first=first))

    async def flush_all(self, scopes: list[str]) -> None:
        """Send the deferred settles of ``scopes``: in one write by the lean call on asyncio,
        each reply taken by its scope's flow; the general flow for a scope whose call fails
        (or elsewhere)."""
        e = self._engine
        lean = self._lean() if _on_asyncio() else None
        if lean is None or lean.pool is None:
            for scope in scopes:
                await self.flush(scope)
            return
        now = e.lnow()
        firsts: list[tuple[str, Started | None]] = [(s, e.start_flush(s, now)) for s in scopes]
        sent = [(scope, one) for scope, one in firsts if one is not None]
        replies: list[Any]
        try:
            replies = await call_packed_many(lean, [one.packed for _, one in sent])
        except Exception as exc:  # a dropped connection...: the flows send them
            replies = [exc] * len(sent)
        except BaseException:  # cancelled: whether they ran is unknown; they stay queued
            for scope, one in sent:
                e.unstart(scope, one)
            raise
        got = {scope: reply for (scope, _), reply in zip(sent, replies, strict=True)}
        for scope, started in firsts:
            at = now
            first: Started | None = started
            if started is not None:
                reply = got[scope]
                if isinstance(reply, Exception):
                    e.unstart(scope, started)
                    at, first = e.lnow(), None
                else:
                    started.raw = reply
            with contextlib.suppress(BackendError):  # kept in the outbox; the link replays it
                await self._arun(e.flush(scope, at, first=first))

    async def drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop ``loop``'s timer, wait for its flushes, and send every deferred settle now."""
        timer = self._timers.pop(id(loop), None)
        if timer is not None:
            timer[1].cancel()
        for task in [t for t in self._flushing if t.get_loop() is loop]:
            with contextlib.suppress(Exception):
                await task
        for scope in list(self._engine.pending):
            await self.flush(scope)

    def send_all(self) -> None:
        """Send every deferred settle now, with the sync client."""
        for scope in list(self._engine.pending):
            with contextlib.suppress(Exception):
                self._run(self._engine.flush(scope, self._engine.lnow()))

    def close(self) -> None:
        """Send every deferred settle now; the exit hook is no longer needed."""
        atexit.unregister(self._at_exit)
        self.send_all()
