"""The few real differences of the async and the sync limiter, as hand-written pairs.

``quotaflow/limiter.py`` and ``quotaflow/permit.py`` are written once, async; ``scripts/unasync.py``
generates their sync twins (``quotaflow/sync.py``, ``quotaflow/_sync_permit.py``) by renaming
words: ``await`` goes, ``AsyncOps`` becomes ``SyncOps``, ``async_shield`` becomes
``sync_shield``, and so on. What renaming cannot express lives here, side by side:

==========================  ===============================  ================================
                            async                            sync
==========================  ===============================  ================================
backend calls               :class:`AsyncOps`: awaits an      :class:`SyncOps`: the backend's
                            async or non-blocking backend,    sync face (``backend.sync`` of
                            bounds calls on a stalling        one with an async face), called
                            backend by the request deadline   directly
cancellation                :func:`async_shield`: a shielded  :func:`sync_shield`: nothing to
                            ``anyio.CancelScope``             shield (a null context)
a backend's write left      :func:`async_complete`: awaited,  :func:`sync_complete`: done when
                            shielded                          the call returned
a brief pause               :func:`async_sleep` (anyio)       :func:`sync_sleep` (``time``)
==========================  ===============================  ================================

The waiters (:class:`~quotaflow.scheduler.waiting.AsyncWaiter`,
:class:`~quotaflow.scheduler.waiting.SyncWaiter`)
are the fourth pair.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Awaitable
from typing import Any

import anyio

from quotaflow.backends.base import AsyncBackend, Backend
from quotaflow.clock import Clock
from quotaflow.errors import ConfigError

__all__ = [
    "TIMED_OUT",
    "AsyncOps",
    "SyncOps",
    "async_complete",
    "async_shield",
    "async_sleep",
    "sync_complete",
    "sync_shield",
    "sync_sleep",
]

TIMED_OUT: Any = object()
"""What :meth:`AsyncOps.within` gives when the backend did not answer before the deadline."""


class AsyncOps:
    """Awaitable access to a backend, async or sync (non-blocking).

    Attributes:
        backend: the backend the limiter uses (the one given).
        is_async: whether its methods are coroutine functions.
        ends: ``(settle, release, settle_nowait)``: the calls a permit ends its grant with.
    """

    __slots__ = ("_b", "backend", "ends", "is_async", "may_stall")

    def __init__(self, backend: Backend | AsyncBackend) -> None:
        self.backend: Backend | AsyncBackend = backend
        self._b: Any = backend
        self.is_async = inspect.iscoroutinefunction(backend.submit)
        # a backend across a network (Redis) can stall (a paused server, a dead link): the
        # calls of a request with a deadline are bounded by it
        self.may_stall = bool(getattr(backend, "may_stall", False))
        if not self.is_async and not getattr(backend, "nonblocking", False):
            raise ConfigError(
                f"{type(backend).__name__} has blocking methods: the async Limiter needs an "
                "async backend (or one marked nonblocking=True)"
            )
        quick = getattr(backend, "settle_nowait", None) if self.is_async else None
        self.ends: tuple[Any, Any, Any] = (self._b.settle, self._b.release, quick)

    async def call(self, name: str, *args: Any) -> Any:
        """``backend.<name>(*args)``, awaited if the backend is async."""
        result = getattr(self._b, name)(*args)
        if self.is_async:
            return await result
        return result

    async def within(self, deadline: float | None, clock: Clock, name: str, *args: Any) -> Any:
        """:meth:`call`, given up at ``deadline`` (of ``clock``) if the backend may stall:
        then :data:`TIMED_OUT`."""
        if deadline is None or not self.may_stall:
            return await self.call(name, *args)
        with anyio.move_on_after(max(0.05, deadline - clock.now())):
            return await self.call(name, *args)
        return TIMED_OUT


class SyncOps:
    """Blocking access to a backend's sync face.

    A backend with an async face and a sync twin (``backend.sync``, e.g. Redis) is used
    through the twin; a backend without sync methods is refused.
    """

    __slots__ = ("_b", "backend", "ends", "is_async", "may_stall")

    def __init__(self, backend: Backend | AsyncBackend) -> None:
        b: Any = backend
        sync_view = getattr(b, "sync", None)
        if sync_view is not None and inspect.iscoroutinefunction(getattr(b, "submit", None)):
            b = sync_view  # a backend with an async face and a sync twin (e.g. Redis)
        if not isinstance(b, Backend):
            raise ConfigError(f"{type(b).__name__} has no synchronous methods for SyncLimiter")
        self.backend: Backend = b
        self._b: Any = b
        self.is_async = False
        # a face that can stall and bound its own calls (Redis's: ``within(seconds, name,
        # *args)``): the calls of a request with a deadline are bounded by it
        self.may_stall = bool(getattr(b, "may_stall", False)) and callable(
            getattr(b, "within", None)
        )
        self.ends: tuple[Any, Any, Any] = (b.settle, b.release, None)

    def call(self, name: str, *args: Any) -> Any:
        """``backend.<name>(*args)``."""
        return getattr(self._b, name)(*args)

    def within(self, deadline: float | None, clock: Clock, name: str, *args: Any) -> Any:
        """:meth:`call`, given up at ``deadline`` (of ``clock``) if the backend may stall:
        then :data:`TIMED_OUT` (the backend's ``within`` bounds it)."""
        if deadline is None or not self.may_stall:
            return getattr(self._b, name)(*args)
        return self._b.within(max(0.05, deadline - clock.now()), name, *args)


def async_shield() -> anyio.CancelScope:
    """A scope no cancellation of the caller reaches: what the backend counted is written."""
    return anyio.CancelScope(shield=True)


def sync_shield() -> contextlib.nullcontext[None]:
    """Nothing to shield: a thread is not cancelled mid-call."""
    return contextlib.nullcontext()


async def async_complete(write: Awaitable[Any]) -> None:
    """Await a backend's write (a settle, a release) where no cancellation reaches it."""
    with anyio.CancelScope(shield=True):
        await write


def sync_complete(write: object) -> None:
    """Nothing left: a sync backend's write is done when its call returns."""


async def async_sleep(seconds: float) -> None:
    """Let other tasks run for ``seconds``."""
    await anyio.sleep(seconds)


def sync_sleep(seconds: float) -> None:
    """Block the thread for ``seconds``."""
    time.sleep(seconds)
