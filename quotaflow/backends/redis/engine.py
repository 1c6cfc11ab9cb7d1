"""What the async and the sync face of the Redis backend share: the operations as flows.

Each operation is written once, as a generator that yields effects (:class:`Exec`: run the
scope script; :class:`Backoff`: back off) and receives their results; the async face runs it on
``redis.asyncio``, the sync face and the link thread on the sync client. No redis import here.

The engine is built in layers: :mod:`~quotaflow.backends.redis.engine_state` (the state and
what changes it without a script call), :mod:`~quotaflow.backends.redis.engine_call` (the
script call: clocks, settles riding along, retries, a lost state written back),
:mod:`~quotaflow.backends.redis.engine_lean` (the lean calls' part), and this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from quotaflow.backends.base import Decision, Request
from quotaflow.backends.redis import replies as rp
from quotaflow.backends.redis import script as rs
from quotaflow.backends.redis.effects import Backoff, EngineFlow, Exec, Transient, Unavailable
from quotaflow.backends.redis.engine_call import ScriptCall
from quotaflow.backends.redis.engine_lean import LeanCalls, Started
from quotaflow.backends.redis.engine_state import SETTLE_DELAY, Policy, _shift
from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import Level

__all__ = [
    "SETTLE_DELAY",
    "Backoff",
    "Engine",
    "EngineFlow",
    "Exec",
    "Policy",
    "Started",
    "Transient",
    "Unavailable",
]

# one atomic write of a learned figure and its key's TTL; a figure the server named is never
# replaced by an adaptive guess (figures are JSON with sorted keys and no spaces)
_LEARN_SCRIPT = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and string.find(held, '"kind":"learned"', 1, true)
   and string.find(ARGV[2], '"kind":"adaptive"', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class Engine(LeanCalls, ScriptCall):
    """One backend's operations as flows, over its state (see :class:`EngineState`)."""

    def flush(self, scope: str, now: float, first: Started | None = None) -> EngineFlow:
        """Send the scope's deferred settles (a call of their own); ``first``: that call,
        made already (see :meth:`start_flush`)."""
        if first is None and scope not in self.pending:
            return None
        with contextlib.suppress(Unavailable):  # op() moved them to the outbox
            yield from self.op("flush", scope, lambda cur: [], now, False, first=first)
        return None

    # --- operations -------------------------------------------------------------------------------
    def configure(self, scope: str, limits: Sequence[Limit], now: float) -> EngineFlow:
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

    def submit(
        self,
        scope: str,
        request: Request,
        now: float,
        wait: bool = True,
        first: Started | None = None,
    ) -> EngineFlow:
        """Grant, queue or refuse ``request`` (one round trip when uncontended)."""
        exact = self.exact
        try:
            reply, shift = yield from self.op(
                "submit",
                scope,
                lambda cur: rs.submit_args(request, cur, exact),
                now,
                wait,
                first=first,
                cost=rs.cost_arg(request.cost),
            )
        except Unavailable as exc:
            if self.on_error != "local":
                raise self._unavailable(exc) from exc
            self.local_scope(scope, now)
            with self.lock:
                self.local_ids.add(request.id)
            return self.local.submit(scope, request, now)
        if reply.result == "G":  # the fast path: granted, nothing else happened
            with self.lock:
                self.tickets.pop(request.id, None)  # a re-submitted ticket is done
                self.leases[request.id] = scope
                self.ledger.granted(request.id, request.cost)
            return Decision(request.id, "granted", reply.now + shift)
        mine = rp.decode_decision(reply.result)
        with self.lock:
            if mine.outcome == "granted":
                self.tickets.pop(request.id, None)
                self.leases[request.id] = scope
                self.ledger.granted(request.id, request.cost)
            elif mine.outcome == "refused":
                self.tickets.pop(request.id, None)
            elif request.id not in self.leases:
                self.tickets[request.id] = (scope, request, mine.at)
        self.deliver(scope, reply.decisions, shift)
        return _shift(mine, shift)

    def dispatch(self, scope: str, now: float) -> EngineFlow:
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

    def cancel(self, scope: str, request_id: str, now: float) -> EngineFlow:
        """Leave the line; returns a grant that won the race."""
        if request_id in self.local_ids:
            won = self.local.cancel(scope, request_id, now)
            if won is None:
                self.local_ids.discard(request_id)
            return won
        with self.lock:
            t = self.tickets.pop(request_id, None)
            if t is not None:  # a grant that won the race holds this cost
                self.ledger.granted(request_id, t[1].cost)
        won = yield from self.remote("cancel", scope, (request_id,), now)
        if won is None:
            with self.lock:
                self.ledger.dropped(request_id)
        return won

    def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> EngineFlow:
        """Anchor a lease at ``at`` and apply the real usage (at most one round trip)."""
        if lease_id in self.local_ids:
            self.local_ids.discard(lease_id)
            self.local.settle(scope, lease_id, actual, at, now)
            return None
        return (yield from self.remote("flush", scope, (lease_id, actual, at), now))

    def release(self, scope: str, lease_id: str, now: float) -> EngineFlow:
        """Return everything a lease holds."""
        if lease_id in self.local_ids:
            self.local_ids.discard(lease_id)
            self.local.release(scope, lease_id, now)
            return None
        return (yield from self.remote("release", scope, (lease_id,), now))

    def remote(self, op: str, scope: str, args: tuple[Any, ...], now: float) -> EngineFlow:
        """cancel/flush (a settle)/release in Redis; if it is down, kept in the outbox and
        replayed."""
        rid = args[0]
        settles: tuple[rs.Settle, ...] = ()
        if op == "flush":
            settles = ((rid, args[1], args[2]),)
            argv: list[str] = []
        else:
            argv = [rid]
        try:
            reply, shift = yield from self.op(op, scope, lambda cur: argv, now, False, settles)
        except Unavailable:
            with self.lock:
                self.outbox.append((op, scope, args))
            return None
        won = None
        with self.lock:
            if op == "release":
                self.leases.pop(rid, None)
                self.ledger.dropped(rid)
            elif op == "cancel" and reply.result:
                self.leases[rid] = scope
                won = _shift(rp.decode_decision(reply.result), shift)
        self.deliver(scope, reply.decisions, shift)
        return won

    def pause(self, scope: str, limit: str, until: float, now: float) -> EngineFlow:
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

    def exhaust(self, scope: str, limit: str, now: float) -> EngineFlow:
        """Mark a calendar limit spent until its reset, in every process."""
        local = self.local.exhaust(scope, limit, now) if scope in self.local_scopes else None
        try:
            reply, shift = yield from self.op("exhaust", scope, lambda cur: [limit], now, True)
        except Unavailable as exc:
            if self.on_error == "raise":
                raise self._unavailable(exc) from exc
            return local
        self.deliver(scope, reply.decisions, shift)
        resets = rp._num(reply.result)
        return None if resets is None else resets + shift

    def _figures_key(self, scope: str) -> str:
        return self.codec.keys(scope)[0][:-1] + "F"  # the scope's hash tag, its own key

    def learned(self, scope: str) -> EngineFlow:
        """The figures the fleet learned for ``scope`` (JSON by dimension); none if Redis
        is out of reach (each process still keeps what it learned)."""
        try:
            raw = yield Exec([], [], ("HGETALL", self._figures_key(scope)))
        except Transient:
            return {}
        if isinstance(raw, dict):
            pairs = list(raw.items())
        else:
            items = list(raw or ())
            pairs = list(zip(items[::2], items[1::2], strict=False))
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in pairs
        }

    def learn(self, scope: str, dimension: str, figure: str, ttl: float) -> EngineFlow:
        """Share a learned figure with the fleet for ``ttl`` seconds (best effort)."""
        key = self._figures_key(scope)
        ms = str(max(1, int(ttl * 1000)))
        try:
            yield Exec([], [], ("EVAL", _LEARN_SCRIPT, "1", key, dimension, figure, ms))
        except Transient:
            return None
        return None

    def status(self, scope: str, now: float) -> EngineFlow:
        """Each limit's level (times of the limiter clock)."""
        try:
            reply, shift = yield from self.op("status", scope, lambda cur: [], now, True)
        except Unavailable as exc:
            if self.on_error != "local":
                raise self._unavailable(exc) from exc
            self.local_scope(scope, now)
            return self.local.status(scope, now)
        self.deliver(scope, reply.decisions, shift)
        rows = rp.decode_levels(reply.result)
        out: dict[str, Level] = {k: rp.shift_level(v, shift) for k, v in rows.items()}
        return out

    def waiting(self, scope: str) -> EngineFlow:
        """Waiters in the scope's line, fleet-wide."""
        try:
            reply, shift = yield from self.op("waiting", scope, lambda cur: [], self.lnow(), True)
        except Unavailable as exc:
            if self.on_error != "local":
                raise self._unavailable(exc) from exc
            return self.local.waiting(scope)
        self.deliver(scope, reply.decisions, shift)
        return int(reply.result) + (self.local.waiting(scope) if scope in self.local_scopes else 0)
