"""What the async and the sync face of the Redis backend share: the operations as flows.

Each operation is written once, as a generator that yields effects (:class:`Exec`: run the
scope script; :class:`Backoff`: back off) and receives their results; the async face runs it on
``redis.asyncio``, the sync face and the link thread on the sync client. No redis import here.

Time: the script's clock is Redis ``TIME``. Drivers pass ``now`` from the limiter clock and
expect absolute times of that clock in decisions, so a reply's times are moved by
``local - redis`` measured around the call (``at = local_now + (redis_at - redis_now)``).
``exact=True`` (tests only) instead sends the driver's ``now`` as the script's clock.

Settles ride along: every script call of a scope carries the settles waiting for it (ARGV[5..]),
and the script applies them before its op. The async face may *defer* a settle while the
scope's line is empty (as of the last reply): it returns at once and the settle goes out with
the next call for the scope, or after :data:`SETTLE_DELAY` at the latest (see ``redis.py``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.backends.memory import MemoryBackend
from quotaflow.backends.redis import script as rs
from quotaflow.backends.redis.ledger import Ledger
from quotaflow.errors import BackendError, ConfigError
from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import Level

__all__ = ["SETTLE_DELAY", "Backoff", "Engine", "Exec", "Policy", "Transient", "Unavailable"]

log = logging.getLogger("quotaflow.redis")

Policy = Literal["wait", "raise", "local"]


@dataclass(frozen=True)
class Exec:
    """Effect: run the scope script with these keys and arguments (or, given ``command``,
    that plain command)."""

    keys: list[str]
    argv: list[str]
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backoff:
    """Effect: back off for ``seconds``."""

    seconds: float


class Transient(Exception):
    """Thrown into a flow by a driver when Redis is unreachable (wraps the redis-py error)."""


class Unavailable(Exception):
    """Raised inside the engine when Redis is down and the flow may not wait."""


EngineFlow = Generator[Exec | Backoff, Any, Any]

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


@dataclass(slots=True)
class Started:
    """A submit the async face sent itself (see :meth:`Engine.start_submit`)."""

    keys: list[bytes]  # with argv: the call for clients that take no packed command
    argv: list[str]
    t0: float
    taken: list[rs.Settle]
    packed: bytes = b""  # the whole command, encoded (see Codec.packed_submit)
    raw: Any = None


_NOKEYS: list[Any] = []

SETTLE_DELAY = 0.002
"""Seconds a deferred settle may wait for a script call to ride on before it is sent alone."""

LOST_AFTER = 60.0
"""A scope this process talked to within this many seconds and now finds unconfigured was
lost (restart, flush, eviction, failover), not expired for lack of use (its keys live at least
this long): the new state then holds its limits briefly so that every process writes back."""


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

    def op(
        self,
        op: str,
        scope: str,
        build: Callable[[float], list[str]],
        now: float,
        wait: bool,
        settles: Sequence[rs.Settle] = (),
        first: Started | None = None,
        cost: str = "",
    ) -> Generator[Exec | Backoff, Any, tuple[rs.Reply, float]]:
        """Run ``op`` with ``settles`` and the scope's deferred ones; returns the reply and the
        shift from Redis to limiter times. ``first``: a call already made (see
        :meth:`start_submit`), whose reply is taken as the first attempt's. ``cost``: ARGV[3]
        (a submit's, :func:`~quotaflow.backends.redis.script.cost_arg`)."""
        limits = self.limits_of(scope)
        t0 = time.monotonic() if first is None else first.t0
        if not self.exact:
            self.skew = now - t0
        if first is None and not self.up and not (wait and self.on_error == "wait"):
            raise Unavailable
        taken: list[rs.Settle] = []
        if first is not None:
            taken = first.taken
        elif self.pending and op not in ("configure", "restore"):
            with self.lock:
                taken = self.pending.pop(scope, [])
                self.pending_since.pop(scope, None)
        carried = [*settles, *taken] if taken else settles
        attempt = 0
        stale = True  # a first failure may be a pooled connection the server closed: retry once
        raw: Any = None if first is None else first.raw
        try:
            while True:
                if raw is None:  # else: the reply of a call made before this flow began
                    cur = now + (time.monotonic() - t0)
                    argv = self.codec.argv(
                        op,
                        scope,
                        build(cur),
                        limits,
                        now if self.exact else None,
                        cur + self.roff,
                        rs.settle_args(carried, cur, self.exact) if carried else (),
                        cost,
                    )
                    try:
                        raw = yield Exec(self.codec.keys(scope), argv)
                    except Transient as exc:
                        if stale:
                            stale = False
                            continue
                        self.went_down(exc.__cause__ or exc)
                        if not (wait and self.on_error == "wait"):
                            self._requeue(scope, taken)
                            raise Unavailable from exc
                        yield Backoff(min(1.0, 0.02 * 2**attempt))
                        attempt += 1
                        continue
                if not self.up:
                    self.came_up()
                reply = rs.decode_reply(raw)
                raw = None
                end = now + (time.monotonic() - t0)
                shift = 0.0 if self.exact else end - reply.now
                if not self.exact:
                    self.roff = reply.now - end
                status = reply.status
                if status == "noconf":  # the state is gone: made anew (and written back)
                    seen = self.contact.get(scope)
                    lost = seen is not None and time.monotonic() - seen < LOST_AFTER
                    grace = self.codec.ttl / 2 if lost else None
                    yield from self.op(
                        "configure", scope, self._configure_args(scope, grace), now, wait
                    )
                    continue
                if status == "gen":  # another process made the state anew: write back
                    self.codec.set_gen(scope, rs._text(reply.result))
                    yield from self.restore(scope, now, wait)
                    continue
                if status == "cal" and attempt < 5:
                    attempt += 1
                    continue
                self.calm[scope] = reply.waiting == 0
                if status != "ok":  # nothing was applied: the deferred settles wait for the next
                    self._putback(scope, taken, t0)
                    taken = []
                    raise (KeyError if status == "nolimit" else BackendError)(status)
                self.contact[scope] = time.monotonic()
                if carried:
                    self._applied(scope, carried)
                if op == "configure":
                    known = scope in self.codec.gens
                    if self.codec.set_gen(scope, rs._text(reply.result)) and known:
                        yield from self.restore(scope, now, wait)
                return reply, shift
        except GeneratorExit:  # the caller gave up (cancelled): keep what it carried
            self._putback(scope, taken, t0)
            raise

    def _applied(self, scope: str, settles: Sequence[rs.Settle]) -> None:
        """Settles the script applied: the leases end, their spends go into the ledger."""
        limits = self.limits.get(scope, ())
        with self.lock:
            for lease_id, actual, at in settles:
                self.leases.pop(lease_id, None)
                self.ledger.settled(scope, limits, lease_id, actual, at)

    def restore(self, scope: str, now: float, wait: bool) -> EngineFlow:
        """Write back into a new state what this process holds (its leases, with their costs)
        and spent in the last period of each limit (see :mod:`._redis_ledger`)."""
        limits = self.limits_of(scope)
        with self.lock:
            held = [i for i, s in self.leases.items() if s == scope and i not in self.local_ids]
            leases = self.ledger.leases(held)
            spends = self.ledger.spends(scope, limits, now)
        self.restores += 1
        if leases or spends:
            log.info(
                "Redis state of %s is new: writing back %d leases and %d spends",
                scope,
                len(leases),
                len(spends),
            )
        args = rs.restore_args(leases)
        cost = rs.spend_arg(spends, now, self.exact)
        reply, shift = yield from self.op("restore", scope, lambda cur: args, now, wait, cost=cost)
        self.deliver(scope, reply.decisions, shift)
        return None

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

    def start_submit(
        self, scope: str, request: Request, now: float, packed: bool = False
    ) -> Started | None:
        """The async face's lean submit: the call to send now (deferred settles of the scope
        included): encoded whole if ``packed``, else keys and ARGV; or None to take the
        general flow."""
        limits = self.limits.get(scope)
        if limits is None or self.exact or not self.up:
            return None
        t0 = time.monotonic()
        self.skew = now - t0
        taken: list[rs.Settle] = []
        if self.pending:
            with self.lock:
                taken = self.pending.pop(scope, [])
                self.pending_since.pop(scope, None)
        if packed:
            cmd = self.codec.packed_submit(scope, request, now, limits, now + self.roff, taken)
            return Started(_NOKEYS, _NOKEYS, t0, taken, cmd)
        argv = self.codec.argv(
            "submit",
            scope,
            rs.submit_args(request, now, False),
            limits,
            None,
            now + self.roff,
            rs.settle_args(taken, now, False) if taken else (),
            rs.cost_arg(request.cost),
        )
        return Started(self.codec.keys_bytes(scope), argv, t0, taken)

    def end_submit(self, scope: str, request: Request, now: float, s: Started) -> Decision | None:
        """The grant of a lean submit answered by the fast path; None: run :meth:`submit` with
        ``first=s`` (any other reply) or ``first=None`` after putting ``s``'s settles back."""
        raw = s.raw
        if raw.__class__ is not bytes or raw[:1] != b"G":
            return None
        rnow = float(raw[1:])
        end = now + (time.monotonic() - s.t0)
        self.roff = rnow - end
        self.calm[scope] = True
        self.contact[scope] = time.monotonic()
        with self.lock:
            self.leases[request.id] = scope
            self.ledger.granted(request.id, request.cost)
        if s.taken:
            self._applied(scope, s.taken)
        return Decision(request.id, "granted", end)

    def unstart(self, scope: str, s: Started) -> None:
        """A lean submit failed to send: its settles go back to the front of the queue."""
        self._putback(scope, s.taken, s.t0)

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

    def flush(self, scope: str, now: float, first: Started | None = None) -> EngineFlow:
        """Send the scope's deferred settles (a call of their own); ``first``: that call,
        made already (see :meth:`start_flush`)."""
        if first is None and scope not in self.pending:
            return None
        with contextlib.suppress(Unavailable):  # op() moved them to the outbox
            yield from self.op("flush", scope, lambda cur: [], now, False, first=first)
        return None

    def start_flush(self, scope: str, now: float) -> Started | None:
        """The async face's lean flush: the scope's deferred settles as one encoded call to
        send now (its reply goes to :meth:`flush` as ``first``), or None (nothing deferred,
        or the general flow must send it)."""
        limits = self.limits.get(scope)
        if limits is None or self.exact or not self.up:
            return None
        with self.lock:
            taken = self.pending.pop(scope, [])
            self.pending_since.pop(scope, None)
        if not taken:
            return None
        t0 = time.monotonic()
        self.skew = now - t0
        argv = self.codec.argv(
            "flush", scope, (), limits, None, now + self.roff, rs.settle_args(taken, now, False)
        )
        keys = self.codec.keys_bytes(scope)
        return Started(keys, argv, t0, taken, rs.packed_command(rs.SCRIPT_SHA, keys, argv))

    def _configure_args(
        self, scope: str, grace: float | None = None
    ) -> Callable[[float], list[str]]:
        limits = self.limits_of(scope)
        return lambda cur: rs.configure_args(limits, self.aging, self.depth, grace)

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
        mine = rs.decode_decision(reply.result)
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
                won = _shift(rs.decode_decision(reply.result), shift)
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
        resets = rs._num(reply.result)
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
        rows = rs.decode_levels(reply.result)
        out: dict[str, Level] = {k: rs.shift_level(v, shift) for k, v in rows.items()}
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
