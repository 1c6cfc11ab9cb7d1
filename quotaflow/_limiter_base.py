"""The base of :class:`~quotaflow.Limiter` and :class:`~quotaflow.SyncLimiter`: the methods
that read or change the limiter's core without waiting, and the delivery of the backend's
decisions to the calls that wait for them."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from quotaflow._limiter_common import not_copyable
from quotaflow.backends.base import Decision
from quotaflow.clock import Clock
from quotaflow.limits import Limit
from quotaflow.quotas.pricing import SpendBook
from quotaflow.quotas.shares import Share
from quotaflow.scheduler.core import LimiterCore, Subscriptions, poll_flow, shares_figures

__all__ = ["AsyncClosing", "LimiterBase", "SyncClosing"]

_L = TypeVar("_L")

log = logging.getLogger("quotaflow")


async def _poll(limiter: Any, model: str) -> None:
    try:
        await limiter._run(poll_flow(limiter._core, model))
    except Exception as exc:  # the next due read tries again
        log.debug("quotaflow: reading the fleet's figures failed (%s)", type(exc).__name__)


class LimiterBase:
    """What the async and the sync limiter share that needs no I/O (see
    :class:`~quotaflow.Limiter`)."""

    _core: LimiterCore
    backend: Any
    _waiters: dict[str, Any]

    def _listen(self) -> None:
        """Start listening to the backend for the decisions of waiting calls."""
        self._lanes = self._core.lanes  # the fast lanes by model spelling (see _acquire)
        self._shares_figures = shares_figures(self.backend)
        self._early: dict[str, Decision] = {}
        self._early_lock = threading.Lock()
        self._listening = Subscriptions(self.backend, self._deliver)
        # a due read of the fleet's figures taken off an acquire's path (see scope_flow)
        self._later: Callable[[str], bool] | None = None
        self._polls: set[asyncio.Task[None]] = set()

    def _poll_later(self, model: str) -> bool:
        """Read what the fleet learned for ``model`` in a task of its own (asyncio; the async
        limiter on a backend across a network): the acquire that found the read due does not
        wait for that round trip. ``False`` (no asyncio loop): the caller reads it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        task = loop.create_task(_poll(self, model))
        self._polls.add(task)
        task.add_done_callback(self._polls.discard)
        return True

    @property
    def clock(self) -> Clock:
        """The limiter's clock."""
        return self._core.clock

    @property
    def mode(self) -> str:
        """``"enforce"`` (the default) or ``"shadow"``: decide and record, let every call
        through at once (see docs/observe.md)."""
        return getattr(self._core, "mode", "enforce")

    @property
    def project(self) -> str:
        """The Google Cloud project the quotas belong to."""
        return self._core.project

    @property
    def spend(self) -> SpendBook | None:
        """The prices and spend cap the transports meter with (``None``: spend not metered)."""
        return self._core.spend

    def quota(self, model: str) -> tuple[Limit, ...]:
        """The usable limits of ``model`` (headroom applied)."""
        return self._core.book.resolve(model)[1]

    def _deliver(self, decision: Decision) -> None:
        rid = decision.id
        if rid in self._waiters:
            with self._early_lock:  # may run in another thread than the waiting task
                waiter = self._waiters.get(rid)
                if waiter is None:
                    self._early[rid] = decision
                    return
            waiter.deliver(decision)

    def __reduce__(self) -> tuple[object, ...]:
        raise not_copyable(self)

    def add_shares(self, shares: Mapping[str, Share]) -> None:
        """Give agents their :class:`~quotaflow.quotas.shares.Share` of each model's rolling limits,
        joining the ``shares=`` the limiter was made with (the agents layer passes its
        policy's). A share given twice must be the same."""
        self._core.add_shares(shares)

    def close(self) -> None:
        """Stop listening to the backend (a shared backend outlives this limiter)."""
        self._listening.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(project={self.project!r}, backend={self.backend!r}, "
            f"waiting={len(self._waiters)})"
        )


class AsyncClosing:
    """``aclose()`` and ``async with`` of :class:`~quotaflow.Limiter` (:class:`SyncClosing`
    is the sync twin)."""

    _owned: Any  # a backend the limiter opened from a URL, ``None`` once closed
    _listening: Subscriptions

    async def aclose(self) -> None:
        """Stop listening to the backend, and close a backend this limiter opened from a URL
        (``backend="redis://..."``): its deferred settles are sent, its background thread
        stops and its connections close. A backend object passed in stays open (it is the
        caller's, and may be shared). Idempotent."""
        self._listening.close()
        owned, self._owned = self._owned, None
        if owned is not None and hasattr(owned, "aclose"):
            await owned.aclose()

    async def __aenter__(self: _L) -> _L:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncClosing:
    """``close()`` and ``with`` of :class:`~quotaflow.SyncLimiter`."""

    _owned: Any
    _listening: Subscriptions

    def close(self) -> None:
        """Stop listening to the backend, and close a backend this limiter opened from a URL
        (``backend="redis://..."``): settles still queued are sent, its background thread
        stops and its connections close. A backend object passed in stays open (it is the
        caller's, and may be shared). Idempotent."""
        self._listening.close()
        owned, self._owned = self._owned, None
        if owned is not None and hasattr(owned, "close"):
            owned.close()

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
