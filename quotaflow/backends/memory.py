"""The in-memory backend: the embedded default, shared by every limiter of one process.

Thread-safe (one lock, held for microseconds, never across I/O or a wait), so the async and the
sync limiter can share one object. Listeners are called after the lock is released.
"""

from __future__ import annotations

import logging
import queue
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.errors import ConfigError
from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import Level
from quotaflow.scheduler.lane import FastLane
from quotaflow.scheduler.scope import ScopeState

__all__ = ["MemoryBackend", "Mutex"]

log = logging.getLogger("quotaflow")


class Mutex:
    """A mutex made of a one-token queue: ``take()`` blocks until the token is free.

    ``with mutex:`` as with ``threading.Lock``. Work that must not wait for it (a finalizer,
    see :meth:`MemoryBackend.drop`) goes into :attr:`deferred`; whoever gives the mutex back
    (:meth:`unlock`, which ``with`` calls) then calls :attr:`drain` if anything is there. The
    fast lane (:mod:`quotaflow.scheduler.gate`), when it is not atomic, calls :attr:`take` and
    :meth:`unlock` directly: ``take`` is ``SimpleQueue.get``, a C call that parses no keyword
    arguments and reads no clock (``Lock.acquire`` reads the monotonic clock even when
    uncontended). Not reentrant; only its holder gives it back.
    """

    __slots__ = ("_get", "deferred", "drain", "give", "take")

    def __init__(self) -> None:
        token: queue.SimpleQueue[None] = queue.SimpleQueue()
        token.put(None)
        self.take = token.get
        self.give = token.put_nowait
        self._get = token.get_nowait
        # work left for the holder: appended by anyone, taken by ``drain`` (deque: atomic)
        self.deferred: deque[Any] = deque()
        self.drain: Callable[[], None] | None = None  # called after giving back, if deferred

    def try_take(self) -> bool:
        """Take the mutex if it is free now; never waits."""
        try:
            self._get()
        except queue.Empty:
            return False
        return True

    def __enter__(self) -> None:
        self.take()

    def unlock(self) -> None:
        """Give the mutex back, then do what was deferred while it was held."""
        self.give(None)
        if self.deferred and self.drain is not None:
            self.drain()

    def __exit__(self, *exc: object) -> None:
        self.unlock()


class MemoryBackend:
    """Buckets, lines and leases in this process's memory.

    Args:
        aging: seconds of waiting worth one priority level (anti-starvation); ``None`` for
            strict priority.
        backfill_depth: how many waiters behind the head may be considered for backfilling
            on each dispatch (bounds the work per grant).

    Example:
        >>> from quotaflow import Limiter, MemoryBackend
        >>> shared = MemoryBackend()
        >>> limiter = Limiter(tier="tier1", backend=shared)
    """

    nonblocking = True  # every operation returns without I/O

    def __init__(self, *, aging: float | None = 60.0, backfill_depth: int = 32) -> None:
        if aging is not None and not aging > 0:
            raise ConfigError(f"MemoryBackend(aging={aging!r}): aging must be > 0 or None")
        if backfill_depth < 0:
            raise ConfigError(f"MemoryBackend(backfill_depth={backfill_depth}): must be >= 0")
        self._aging = aging
        self._depth = backfill_depth
        self.lock = Mutex()  # guards everything; the fast lane is used under it
        self.lock.drain = self._drain  # dropped leases queued while it was held
        self._scopes: dict[str, ScopeState] = {}
        self._listeners: dict[str, list[Listener]] = defaultdict(list)
        self._figures: dict[str, dict[str, str]] = {}

    def _scope(self, scope: str) -> ScopeState:
        try:
            return self._scopes[scope]
        except KeyError:
            raise ConfigError(
                f"scope {scope!r} is not configured: call configure() first"
            ) from None

    def _notify(self, scope: str, decisions: list[Decision]) -> None:
        if not decisions:
            return
        listeners = list(self._listeners.get(scope, ()))
        for d in decisions:
            for listener in listeners:
                listener(d)

    def configure(self, scope: str, limits: Sequence[Limit], now: float) -> None:
        """Create the scope's buckets, or update their limits in place."""
        with self.lock:
            st = self._scopes.get(scope)
            if st is None:
                st = self._scopes[scope] = ScopeState(
                    limits, now, aging=self._aging, backfill_depth=self._depth
                )
                st.lane_open(now)
                return
            st.lane_close(now)
            st.configure(limits, now)
            out = st.dispatch(now)
            st.lane_open(now)
        self._notify(scope, out)

    def lane(self, scope: str) -> FastLane:
        """The scope's fast lane (see :mod:`quotaflow.scheduler.lane`); use it under
        :attr:`lock`."""
        return self._scope(scope).lane

    def submit(self, scope: str, request: Request, now: float) -> Decision:
        """Grant, queue or refuse ``request``."""
        with self.lock:
            st = self._scope(scope)
            st.lane_close(now)
            mine, others = st.submit(request, now)
            st.lane_open(now)
        self._notify(scope, others)
        return mine

    def dispatch(self, scope: str, now: float) -> None:
        """Serve the line (a timer fired)."""
        with self.lock:
            st = self._scope(scope)
            st.lane_close(now)
            out = st.dispatch(now, timer=True)
            st.lane_open(now)
        self._notify(scope, out)

    def cancel(self, scope: str, request_id: str, now: float) -> Decision | None:
        """Leave the line; returns a grant that won the race."""
        with self.lock:
            st = self._scope(scope)
            st.lane_close(now)
            mine, out = st.cancel(request_id, now)
            st.lane_open(now)
        self._notify(scope, out)
        return mine

    def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> None:
        """Anchor and reconcile a lease that reached the server."""
        with self.lock:
            out = self._settle(scope, lease_id, actual, at, now)
        self._notify(scope, out)

    def _settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> list[Decision]:
        st = self._scope(scope)
        lane = st.lane
        lease = lane.lease_of(lease_id) if lane.open else 0
        if lease:
            amounts = lane.by_metric(actual)
            if amounts is not None and lane.settle(lease, *amounts, at, now):
                return []
        st.lane_close(now)
        out = st.settle(lease_id, actual, at, now)
        st.lane_open(now)
        return out

    def settle_tokens(
        self, scope: str, lease_id: str, input_tokens: int | None, at: float, now: float
    ) -> None:
        """:meth:`settle` with the real input tokens only (``None``: as granted): the lane's
        quick way; the same result."""
        with self.lock:
            st = self._scope(scope)
            if st.lane.settle(st.lane.lease_of(lease_id), None, input_tokens, at, now):
                return
            st.lane_close(now)
            actual = None
            if input_tokens is not None:
                actual = {
                    name: input_tokens
                    for name, lim in st.limits.items()
                    if lim.metric == "input_tokens"
                }
            out = st.settle(lease_id, actual, at, now)
            st.lane_open(now)
        self._notify(scope, out)

    def release(self, scope: str, lease_id: str, now: float) -> None:
        """Return a lease that never reached the server."""
        with self.lock:
            out = self._release(scope, lease_id, now)
        self._notify(scope, out)

    def _release(self, scope: str, lease_id: str, now: float) -> list[Decision]:
        st = self._scope(scope)
        if st.lane.release(st.lane.lease_of(lease_id)):
            return []
        st.lane_close(now)
        out = st.release(lease_id, now)
        st.lane_open(now)
        return out

    def drop(self, scope: str, lease_id: str, at: float | None, now: float) -> None:
        """End a lease whose permit was garbage-collected unended: release it (``at`` is
        ``None``: never sent) or settle it as granted, anchored at ``at``.

        For the permits' finalizer, so it never waits and never raises. The cyclic GC runs at
        any allocation, so a finalizer may run while this backend's mutex is held, even by its
        own thread (the mutex is not reentrant). The lease is queued; if the mutex is free it
        is ended now, otherwise its holder ends it when it gives the mutex back.
        """
        self.lock.deferred.append((scope, lease_id, at, now))
        self._drain()

    def _drain(self) -> None:
        """End the queued dropped leases, in one locked section per batch, if the mutex is free
        (its holder calls this again when it gives it back). Never nested, never waits, never
        raises: it runs in whichever call gives the mutex back, which must not fail for it."""
        lock = self.lock
        while lock.deferred:
            if not lock.try_take():
                return  # held: its holder drains when it gives it back
            ended: list[tuple[str, list[Decision]]] = []
            failed: list[tuple[str, str]] = []
            try:
                while True:
                    try:
                        scope, lease_id, at, now = lock.deferred.popleft()
                    except IndexError:
                        break
                    try:
                        if at is None:
                            ended.append((scope, self._release(scope, lease_id, now)))
                        else:
                            ended.append((scope, self._settle(scope, lease_id, None, at, now)))
                    except Exception:  # a finalizer's work: reported below, never raised
                        failed.append((scope, lease_id))
            finally:
                lock.give(None)
            for scope, lease_id in failed:  # after giving the mutex back: a handler may call us
                log.warning("a dropped permit's lease %s of %s could not be ended", lease_id, scope)
            for scope, out in ended:
                try:
                    self._notify(scope, out)
                except Exception:  # a listener's failure is its own, not the caller's
                    log.warning("a listener of %s failed on a dropped lease", scope, exc_info=True)

    def pause(self, scope: str, limit: str, until: float, now: float) -> None:
        """Hold a limit until ``until``."""
        with self.lock:
            st = self._scope(scope)
            st.lane_close(now)
            out = st.pause(limit, until, now)
            st.lane_open(now)
        self._notify(scope, out)

    def exhaust(self, scope: str, limit: str, now: float) -> float | None:
        """Mark a calendar limit spent until its reset."""
        with self.lock:
            st = self._scope(scope)
            st.lane_close(now)
            resets, out = st.exhaust(limit, now)
            st.lane_open(now)
        self._notify(scope, out)
        return resets

    def status(self, scope: str, now: float) -> dict[str, Level]:
        """Each limit's level."""
        with self.lock:
            st = self._scope(scope)
            st.lane_close(now)
            levels = st.status(now)
            st.lane_open(now)
            return levels

    def waiting(self, scope: str) -> int:
        """Waiters in the scope's line."""
        with self.lock:
            st = self._scopes.get(scope)
            return len(st.queue) if st else 0

    def line(self, scope: str) -> list[tuple[int, str]]:
        """The scope's waiters in service order: each one's priority and the agents its cost
        names (comma-separated; ``quotaflow.observe.status`` counts them)."""
        with self.lock:
            st = self._scopes.get(scope)
            if st is None:
                return []
            return [
                (w.priority, ",".join(k.partition("@")[2] for k in w.cost if "@" in k))
                for w in st.queue.in_order(len(st.queue))
            ]

    def learned(self, scope: str) -> dict[str, str]:
        """The figures limiters on this backend learned for ``scope`` (JSON by dimension)."""
        return dict(self._figures.get(scope, {}))

    def learn(self, scope: str, dimension: str, figure: str, ttl: float) -> None:
        """Keep a learned figure for every limiter on this backend (``ttl`` is not needed:
        the backend lives only as long as the process)."""
        self._figures.setdefault(scope, {})[dimension] = figure

    def subscribe(self, scope: str, listener: Listener) -> None:
        """Deliver decisions about the scope's waiters to ``listener``."""
        with self.lock:
            self._listeners[scope].append(listener)

    def unsubscribe(self, scope: str, listener: Listener) -> None:
        """Stop delivering to ``listener``."""
        with self.lock:
            lst = self._listeners.get(scope)
            if lst and listener in lst:
                lst.remove(listener)

    def __repr__(self) -> str:
        return f"MemoryBackend(scopes={len(self._scopes)}, aging={self._aging})"
