"""What the async and the sync face of the Redis backend share: the operations as flows.

Each operation is written once, as a generator that yields effects (:class:`Exec`: run the
scope script; :class:`Sleep`: back off) and receives their results; the async face runs it on
``redis.asyncio``, the sync face and the link thread on the sync client. No redis import here.

Time: the script's clock is Redis ``TIME``. Drivers pass ``now`` from the limiter clock and
expect absolute times of that clock in decisions, so a reply's times are moved by
``local - redis`` measured around the call (``at = local_now + (redis_at - redis_now)``).
``exact=True`` (tests only) instead sends the driver's ``now`` as the script's clock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from quotaflow.backends import _redis_script as rs
from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.backends.memory import MemoryBackend
from quotaflow.buckets import Level
from quotaflow.errors import BackendError, ConfigError
from quotaflow.limits import Limit

__all__ = ["Engine", "Exec", "Policy", "Sleep", "Transient", "Unavailable"]

log = logging.getLogger("quotaflow.redis")

Policy = Literal["wait", "raise", "local"]


@dataclass(frozen=True)
class Exec:
    """Effect: run the scope script with these keys and arguments."""

    keys: list[str]
    argv: list[str]


@dataclass(frozen=True)
class Sleep:
    """Effect: back off for ``seconds``."""

    seconds: float


class Transient(Exception):
    """Thrown into a flow by a driver when Redis is unreachable (wraps the redis-py error)."""


class Unavailable(Exception):
    """Raised inside the engine when Redis is down and the flow may not wait."""


Flow = Generator[Exec | Sleep, Any, Any]


def _shift(d: Decision, shift: float) -> Decision:
    return d if d.at is None or shift == 0.0 else replace(d, at=d.at + shift)


class Engine:
    """Shared state of one backend: scopes, listeners, this process's tickets and leases."""

    def __init__(
        self,
        *,
        namespace: str,
        on_error: Policy,
        local_fraction: float,
        lease_ttl: float,
        aging: float | None,
        backfill_depth: int,
        exact: bool = False,
    ) -> None:
        self.codec = rs.Codec(namespace, uuid.uuid4().hex, lease_ttl)
        self.on_error = on_error
        self.local_fraction = local_fraction
        self.aging = aging
        self.depth = backfill_depth
        self.exact = exact
        self.lock = threading.RLock()
        self.limits: dict[str, tuple[Limit, ...]] = {}
        self.listeners: dict[str, list[Listener]] = {}
        self.tickets: dict[str, tuple[str, Request, float | None]] = {}  # id -> scope, req, at
        self.leases: dict[str, str] = {}  # id -> scope
        self.local = MemoryBackend(aging=aging, backfill_depth=backfill_depth)
        self.local_ids: set[str] = set()
        self.local_scopes: set[str] = set()
        self.outbox: deque[tuple[str, str, tuple[Any, ...]]] = deque()
        self.up = True
        self.skew = 0.0  # limiter clock - monotonic clock
        self.roff = 0.0  # Redis time - limiter clock
        self.wake = threading.Event()  # pokes the link thread
        self.subscribed = threading.Event()

    # --- clocks and delivery ------------------------------------------------------------------
    def lnow(self) -> float:
        """The limiter clock, as last seen by this backend."""
        return time.monotonic() + self.skew

    def went_down(self, exc: BaseException) -> None:
        """Redis failed; log the transition once and wake the link thread."""
        with self.lock:
            was, self.up = self.up, False
        if was:
            log.warning("Redis unreachable (%s); on_error=%r", exc, self.on_error)
            self.wake.set()

    def came_up(self) -> None:
        """Redis answered; log the transition once."""
        if not self.up:
            with self.lock:
                was, self.up = self.up, True
            if not was:
                log.warning("Redis reachable again")
                self.wake.set()

    def deliver(self, scope: str, decisions: Sequence[Decision], shift: float) -> None:
        """Track and hand decisions (Redis times) about this process's tickets to listeners."""
        if not decisions:
            return
        out = []
        with self.lock:
            for d in decisions:
                self._track(scope, d)
                out.append(_shift(d, shift))
            listeners = list(self.listeners.get(scope, ()))
        for d in out:
            for listener in listeners:
                listener(d)

    def _track(self, scope: str, d: Decision) -> None:
        if d.outcome == "granted":
            self.tickets.pop(d.id, None)
            self.leases[d.id] = scope
        elif d.outcome == "refused":
            self.tickets.pop(d.id, None)
        else:
            t = self.tickets.get(d.id)
            if t is not None:
                self.tickets[d.id] = (t[0], t[1], d.at)

    def deliver_local(self, scope: str, d: Decision) -> None:
        with self.lock:
            if d.outcome != "waiting":
                self.tickets.pop(d.id, None)
            listeners = list(self.listeners.get(scope, ()))
        for listener in listeners:
            listener(d)

    # --- the script call ------------------------------------------------------------------------
    def limits_of(self, scope: str) -> tuple[Limit, ...]:
        """The limits this process configured for ``scope``."""
        try:
            return self.limits[scope]
        except KeyError:
            raise ConfigError(
                f"scope {scope!r} is not configured: call configure() first"
            ) from None

    def op(
        self, op: str, scope: str, build: Callable[[float], list[str]], now: float, wait: bool
    ) -> Generator[Exec | Sleep, Any, tuple[rs.Reply, float]]:
        """Run ``op``; returns the reply and the shift from Redis to limiter times."""
        limits = self.limits_of(scope)
        t0 = time.monotonic()
        if not self.exact:
            self.skew = now - t0
        if not self.up and not (wait and self.on_error == "wait"):
            raise Unavailable
        attempt = 0
        stale = True  # a first failure may be a pooled connection the server closed: retry once
        while True:
            cur = now + (time.monotonic() - t0)
            argv = self.codec.argv(
                op, scope, build(cur), limits, now if self.exact else None, cur + self.roff
            )
            try:
                raw = yield Exec(self.codec.keys(scope), argv)
            except Transient as exc:
                if stale:
                    stale = False
                    continue
                self.went_down(exc.__cause__ or exc)
                if not (wait and self.on_error == "wait"):
                    raise Unavailable from exc
                yield Sleep(min(1.0, 0.02 * 2**attempt))
                attempt += 1
                continue
            self.came_up()
            reply = rs.decode_reply(raw)
            end = now + (time.monotonic() - t0)
            shift = 0.0 if self.exact else end - reply.now
            if not self.exact:
                self.roff = reply.now - end
            if reply.status == "noconf":
                yield from self.op("configure", scope, self._configure_args(scope), now, wait)
                continue
            if reply.status == "cal" and attempt < 5:
                attempt += 1
                continue
            if reply.status != "ok":
                raise (KeyError if reply.status == "nolimit" else BackendError)(reply.status)
            return reply, shift

    def _configure_args(self, scope: str) -> Callable[[float], list[str]]:
        limits = self.limits_of(scope)
        return lambda cur: rs.configure_args(limits, self.aging, self.depth)

    def local_scope(self, scope: str, now: float) -> None:
        if scope not in self.local_scopes:
            scaled = [lim.scaled(self.local_fraction) for lim in self.limits_of(scope)]
            self.local.configure(scope, scaled, now)
            self.local.subscribe(scope, lambda d: self.deliver_local(scope, d))
            self.local_scopes.add(scope)

    def _unavailable(self, exc: Unavailable) -> BackendError:
        return BackendError(
            "Redis is unreachable and on_error='raise'; the backend reconnects by itself"
        )

    # --- operations -------------------------------------------------------------------------------
    def configure(self, scope: str, limits: Sequence[Limit], now: float) -> Flow:
        """Create or update the scope (idempotent, any process)."""
        with self.lock:
            self.limits[scope] = tuple(limits)
            if scope in self.local_scopes:
                scaled = [lim.scaled(self.local_fraction) for lim in limits]
                self.local.configure(scope, scaled, now)
        try:
            reply, shift = yield from self.op(
                "configure", scope, self._configure_args(scope), now, True
            )
        except Unavailable as exc:
            if self.on_error == "raise":
                raise self._unavailable(exc) from exc
            return None
        self.deliver(scope, reply.decisions, shift)
        return None

    def submit(self, scope: str, request: Request, now: float, wait: bool = True) -> Flow:
        """Grant, queue or refuse ``request`` (one round trip when uncontended)."""
        exact = self.exact
        try:
            reply, shift = yield from self.op(
                "submit", scope, lambda cur: rs.submit_args(request, cur, exact), now, wait
            )
        except Unavailable as exc:
            if self.on_error != "local":
                raise self._unavailable(exc) from exc
            self.local_scope(scope, now)
            with self.lock:
                self.local_ids.add(request.id)
            return self.local.submit(scope, request, now)
        mine = rs.decode_decision(reply.result)
        with self.lock:
            if mine.outcome == "granted":
                self.leases[request.id] = scope
            elif mine.outcome == "waiting" and request.id not in self.leases:
                self.tickets[request.id] = (scope, request, mine.at)
        self.deliver(scope, reply.decisions, shift)
        return _shift(mine, shift)

    def dispatch(self, scope: str, now: float) -> Flow:
        """Serve the line (the head's timer fired)."""
        if scope in self.local_scopes:
            self.local.dispatch(scope, now)
        try:
            reply, shift = yield from self.op("dispatch", scope, lambda cur: [], now, True)
        except Unavailable as exc:
            if self.on_error == "raise":
                raise self._unavailable(exc) from exc
            return None
        self.deliver(scope, reply.decisions, shift)
        return None

    def cancel(self, scope: str, request_id: str, now: float) -> Flow:
        """Leave the line; returns a grant that won the race."""
        if request_id in self.local_ids:
            won = self.local.cancel(scope, request_id, now)
            if won is None:
                self.local_ids.discard(request_id)
            return won
        with self.lock:
            self.tickets.pop(request_id, None)
        return (yield from self.remote("cancel", scope, (request_id,), now))

    def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> Flow:
        """Anchor a lease at ``at`` and apply the real usage (at most one round trip)."""
        if lease_id in self.local_ids:
            self.local_ids.discard(lease_id)
            self.local.settle(scope, lease_id, actual, at, now)
            return None
        return (yield from self.remote("settle", scope, (lease_id, actual, at), now))

    def release(self, scope: str, lease_id: str, now: float) -> Flow:
        """Return everything a lease holds."""
        if lease_id in self.local_ids:
            self.local_ids.discard(lease_id)
            self.local.release(scope, lease_id, now)
            return None
        return (yield from self.remote("release", scope, (lease_id,), now))

    def remote(self, op: str, scope: str, args: tuple[Any, ...], now: float) -> Flow:
        """cancel/settle/release in Redis; if it is down, kept in the outbox and replayed."""
        rid = args[0]
        exact = self.exact

        def build(cur: float) -> list[str]:
            if op == "settle":
                return rs.settle_args(rid, args[1], args[2] - now + cur, cur, exact)
            return [rid]

        try:
            reply, shift = yield from self.op(op, scope, build, now, False)
        except Unavailable:
            with self.lock:
                self.outbox.append((op, scope, args))
            return None
        won = None
        with self.lock:
            if op != "cancel":
                self.leases.pop(rid, None)
            elif reply.result:
                self.leases[rid] = scope
                won = _shift(rs.decode_decision(reply.result), shift)
        self.deliver(scope, reply.decisions, shift)
        return won

    def pause(self, scope: str, limit: str, until: float, now: float) -> Flow:
        """Admit nothing on ``limit`` before ``until``, in every process."""
        if scope in self.local_scopes:
            self.local.pause(scope, limit, until, now)
        exact = self.exact
        try:
            reply, shift = yield from self.op(
                "pause", scope, lambda cur: [limit, rs.time_arg(until, cur, exact)], now, True
            )
        except Unavailable as exc:
            if self.on_error == "raise":
                raise self._unavailable(exc) from exc
            return None
        self.deliver(scope, reply.decisions, shift)
        return None

    def exhaust(self, scope: str, limit: str, now: float) -> Flow:
        """Mark a calendar limit spent until its reset, in every process."""
        local = self.local.exhaust(scope, limit, now) if scope in self.local_scopes else None
        try:
            reply, shift = yield from self.op("exhaust", scope, lambda cur: [limit], now, True)
        except Unavailable as exc:
            if self.on_error == "raise":
                raise self._unavailable(exc) from exc
            return local
        self.deliver(scope, reply.decisions, shift)
        resets = rs._num(reply.result)
        return None if resets is None else resets + shift

    def status(self, scope: str, now: float) -> Flow:
        """Each limit's level (times of the limiter clock)."""
        try:
            reply, shift = yield from self.op("status", scope, lambda cur: [], now, True)
        except Unavailable as exc:
            if self.on_error != "local":
                raise self._unavailable(exc) from exc
            self.local_scope(scope, now)
            return self.local.status(scope, now)
        self.deliver(scope, reply.decisions, shift)
        rows = rs.decode_levels(reply.result)
        out: dict[str, Level] = {k: rs.shift_level(v, shift) for k, v in rows.items()}
        return out

    def waiting(self, scope: str) -> Flow:
        """Waiters in the scope's line, fleet-wide."""
        try:
            reply, shift = yield from self.op("waiting", scope, lambda cur: [], self.lnow(), True)
        except Unavailable as exc:
            if self.on_error != "local":
                raise self._unavailable(exc) from exc
            return self.local.waiting(scope)
        self.deliver(scope, reply.decisions, shift)
        return int(reply.result) + (self.local.waiting(scope) if scope in self.local_scopes else 0)
