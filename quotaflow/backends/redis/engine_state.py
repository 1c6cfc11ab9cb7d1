"""The state of one Redis backend, shared by its engine's flows, its faces and its link thread,
and what changes it without a script call: clocks, the delivery of decisions to listeners, the
tracking of tickets and leases, the outbox, and the deferred settles (queued for the scope's
next call, see :data:`SETTLE_DELAY`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.backends.memory import MemoryBackend
from quotaflow.backends.redis import script as rs
from quotaflow.backends.redis.effects import Unavailable
from quotaflow.backends.redis.ledger import Ledger
from quotaflow.errors import BackendError, ConfigError
from quotaflow.limits import Limit

__all__ = ["SETTLE_DELAY", "EngineState", "Policy"]

log = logging.getLogger("quotaflow.redis")

Policy = Literal["wait", "raise", "local"]


SETTLE_DELAY = 0.002
"""Seconds a deferred settle may wait for a script call to ride on before it is sent alone."""


STALL = 0.05
"""Seconds a call abandoned (its deadline, a cancellation) had waited for a reply for Redis to
be taken as stalled (:meth:`EngineState.gave_up`); Redis answers in well under this."""


def _shift(d: Decision, shift: float) -> Decision:
    return d if d.at is None or shift == 0.0 else replace(d, at=d.at + shift)


class EngineState:
    """Shared state of one backend: scopes, listeners, this process's tickets and leases, the
    outbox and the deferred settles."""

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
        self.pending: dict[str, list[rs.Settle]] = {}  # scope -> deferred settles
        self.pending_since: dict[str, float] = {}  # scope -> monotonic time of the oldest
        self.calm: dict[str, bool] = {}  # scope -> the line was empty at the last reply
        self.up = True
        self.failure = ""  # why Redis was last unreachable
        self.skew = 0.0  # limiter clock - monotonic clock
        self.roff = 0.0  # Redis time - limiter clock
        self.wake = threading.Event()  # pokes the link thread
        self.subscribed = threading.Event()
        self.ledger = Ledger()  # lease costs and recent spends, written back after a loss
        self.contact: dict[str, float] = {}  # scope -> monotonic time of the last reply
        self.restores = 0  # how many times this process wrote back into a new state
        # requests given up while Redis stalled (id -> monotonic time): a grant of one that
        # arrives later is released at once
        self.abandoned: dict[str, float] = {}
        self.stalled: dict[str, float] = {}  # scope -> monotonic time a call was given up

    # --- clocks and delivery ------------------------------------------------------------------
    def lnow(self) -> float:
        """The limiter clock, as last seen by this backend."""
        return time.monotonic() + self.skew

    def went_down(self, exc: BaseException) -> None:
        """Redis failed; log the transition once and wake the link thread."""
        with self.lock:
            was, self.up = self.up, False
            self.failure = re.sub(r"//[^/@\s]*@", "//***@", str(exc))  # never a password
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
        if d.outcome == "granted" and d.id in self.abandoned:
            del self.abandoned[d.id]
            self.leases[d.id] = scope
            self.outbox.append(("release", scope, (d.id,)))
            return
        if d.outcome == "granted":
            t = self.tickets.pop(d.id, None)
            self.leases[d.id] = scope
            if t is not None:
                self.ledger.granted(d.id, t[1].cost)
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

    def local_scope(self, scope: str, now: float) -> None:
        if scope not in self.local_scopes:
            scaled = [lim.scaled(self.local_fraction) for lim in self.limits_of(scope)]
            self.local.configure(scope, scaled, now)
            self.local.subscribe(scope, lambda d: self.deliver_local(scope, d))
            self.local_scopes.add(scope)

    def _unavailable(self, exc: Unavailable) -> BackendError:
        why = f" ({self.failure})" if self.failure else ""
        return BackendError(
            f"Redis is unreachable{why} and on_error='raise'; the backend reconnects by "
            "itself: retry later, or choose on_error='wait' or 'local'"
        )

    # --- the outbox and the deferred settles --------------------------------------------------
    def gave_up(self, scope: str, t0: float) -> None:
        """A call of ``scope`` made at ``t0`` (monotonic) was abandoned: if it waited longer
        than :data:`STALL`, Redis is taken as stalled for the scope until it answers again."""
        t = time.monotonic()
        if t - t0 >= STALL:
            self.stalled[scope] = t

    def stalled_now(self, scope: str) -> bool:
        """A call of ``scope`` was given up unanswered and no reply for it came since: a cancel,
        settle or release is set aside at once instead of waiting for Redis."""
        at = self.stalled.get(scope)
        return at is not None and at > self.contact.get(scope, 0.0)

    def _applied(self, scope: str, settles: Sequence[rs.Settle]) -> None:
        """Settles the script applied: the leases end, their spends go into the ledger."""
        limits = self.limits.get(scope, ())
        with self.lock:
            for lease_id, actual, at in settles:
                self.leases.pop(lease_id, None)
                self.ledger.settled(scope, limits, lease_id, actual, at)

    def later(self, op: str, scope: str, args: tuple[Any, ...]) -> None:
        """A cancel, settle (``flush``) or release that did not get through in time: the link
        thread replays it (each is idempotent), and it stays this process's until then."""
        with self.lock:
            self.outbox.append((op, scope, args))
            if op == "cancel":
                t = time.monotonic()
                self.abandoned[args[0]] = t
                if len(self.abandoned) > 256:  # a ticket of its own expires within a TTL
                    horizon = t - 4 * self.codec.ttl
                    for rid in [r for r, at in self.abandoned.items() if at < horizon]:
                        del self.abandoned[rid]
        self.wake.set()

    def _requeue(self, scope: str, taken: Sequence[rs.Settle]) -> None:
        """Deferred settles whose call failed: into the outbox, replayed when Redis is back."""
        if taken:
            with self.lock:
                self.outbox.extend(("flush", scope, s) for s in taken)

    def _putback(self, scope: str, taken: Sequence[rs.Settle], since: float) -> None:
        """Deferred settles whose call was abandoned go back to the front of the queue (sent
        again: a settle of a lease already settled is ignored)."""
        if taken:
            with self.lock:
                lst = self.pending.setdefault(scope, [])
                lst[:0] = taken
                self.pending_since.setdefault(scope, since)

    def defer(self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float) -> bool:
        """Queue a settle for the scope's next call, if nobody waits; False: send it now."""
        if self.exact or not self.up or not self.calm.get(scope) or lease_id in self.local_ids:
            return False
        entry = (lease_id, actual, at)
        with self.lock:
            lst = self.pending.get(scope)
            if lst is None:
                self.pending[scope] = [entry]
                self.pending_since[scope] = time.monotonic()
            else:
                lst.append(entry)
        return True

    def due(self, age: float) -> tuple[list[str], float | None]:
        """Scopes with a deferred settle older than ``age``, and when the next one will be."""
        t = time.monotonic()
        out: list[str] = []
        nxt: float | None = None
        with self.lock:
            for scope, since in self.pending_since.items():
                if t - since >= age * 0.9:
                    out.append(scope)
                elif nxt is None or since + age < nxt:
                    nxt = since + age
        return out, nxt
