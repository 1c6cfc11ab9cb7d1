"""Waking a waiter: the one place that sleeps. Async (anyio) and sync (threading) twins.

A waiter sleeps until a decision about it is delivered (from any thread) or until a time of the
limiter's clock. With a :class:`~quotaflow.clock.ManualClock`, "until a time" means until the
test moves the clock past it; otherwise the real event loop (or ``threading.Event``) times out.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import anyio
import anyio.lowlevel

from quotaflow.backends.base import Decision
from quotaflow.clock import Clock, ManualClock

__all__ = ["AsyncWaiter", "SyncWaiter"]


def _threadsafe(token: anyio.lowlevel.EventLoopToken, fn: Callable[[], None]) -> None:
    native = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        native.call_soon_threadsafe(fn)
    else:  # trio's TrioToken
        native.run_sync_soon(fn)  # type: ignore[attr-defined]


class AsyncWaiter:
    """Sleeps in an anyio task; decisions may be delivered from any thread."""

    __slots__ = ("_event", "_lock", "_thread", "_token", "pending")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event: anyio.Event | None = None
        self._token = anyio.lowlevel.current_token()
        self._thread = threading.get_ident()
        self.pending: Decision | None = None

    def _wake(self) -> None:
        ev = self._event
        if ev is None:
            return
        if threading.get_ident() == self._thread:
            ev.set()
        else:
            _threadsafe(self._token, ev.set)

    def deliver(self, decision: Decision) -> None:
        """Hand a decision to the waiter (any thread)."""
        with self._lock:
            if self.pending is None or self.pending.outcome == "waiting":
                self.pending = decision
        self._wake()

    def take(self) -> Decision | None:
        """The delivered decision, if any; clears it."""
        with self._lock:
            d, self.pending = self.pending, None
            return d

    async def wait(self, clock: Clock, until: float | None) -> None:
        """Sleep until a decision arrives or the clock reaches ``until``."""
        with self._lock:
            if self.pending is not None:
                return
            self._event = event = anyio.Event()
        if until is None:
            await event.wait()
            return
        if isinstance(clock, ManualClock):

            def due() -> None:
                if clock.now() >= until:
                    self._wake()

            clock.subscribe(due)
            try:
                due()
                await event.wait()
            finally:
                clock.unsubscribe(due)
            return
        with anyio.move_on_after(max(0.0, until - clock.now())):
            await event.wait()


class SyncWaiter:
    """Blocks a thread; decisions may be delivered from any thread."""

    __slots__ = ("_event", "_lock", "pending")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self.pending: Decision | None = None

    def deliver(self, decision: Decision) -> None:
        """Hand a decision to the waiter (any thread)."""
        with self._lock:
            if self.pending is None or self.pending.outcome == "waiting":
                self.pending = decision
        self._event.set()

    def take(self) -> Decision | None:
        """The delivered decision, if any; clears it."""
        with self._lock:
            d, self.pending = self.pending, None
            self._event.clear()
            return d

    def wait(self, clock: Clock, until: float | None) -> None:
        """Block until a decision arrives or the clock reaches ``until``."""
        with self._lock:
            if self.pending is not None:
                return
            self._event.clear()
        if until is None:
            self._event.wait()
            return
        if isinstance(clock, ManualClock):

            def due() -> None:
                if clock.now() >= until:
                    self._event.set()

            clock.subscribe(due)
            try:
                due()
                self._event.wait()
            finally:
                clock.unsubscribe(due)
            return
        self._event.wait(max(0.0, until - clock.now()))
