"""The engine's script call: one op of the scope script, with the settles riding on it, its
retries, and the recovery of a scope state Redis lost; the operations' flows
(:mod:`~quotaflow.backends.redis.engine`) are built on it.

Time: the script's clock is Redis ``TIME``. Drivers pass ``now`` from the limiter clock and
expect absolute times of that clock in decisions, so a reply's times are moved by
``local - redis`` measured around the call (``at = local_now + (redis_at - redis_now)``).
``exact=True`` (tests only) instead sends the driver's ``now`` as the script's clock.

Settles ride along: every script call of a scope carries the settles waiting for it (ARGV[5..]),
and the script applies them before its op. The async face may *defer* a settle while the
scope's line is empty (as of the last reply): it returns at once and the settle goes out with
the next call for the scope, or after :data:`SETTLE_DELAY` at the latest (see
:mod:`~quotaflow.backends.redis.settle_timer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from quotaflow.backends.redis import replies as rp
from quotaflow.backends.redis import script as rs
from quotaflow.backends.redis.effects import Backoff, EngineFlow, Exec, Transient, Unavailable
from quotaflow.backends.redis.engine_lean import Started
from quotaflow.backends.redis.engine_state import EngineState, log
from quotaflow.errors import BackendError

__all__ = ["LOST_AFTER", "ScriptCall"]

LOST_AFTER = 60.0
"""A scope this process talked to within this many seconds and now finds unconfigured was
lost (restart, flush, eviction, failover), not expired for lack of use (its keys live at least
this long): the new state then holds its limits briefly so that every process writes back."""


class ScriptCall(EngineState):
    """The script call of the engine's flows (see :meth:`op`)."""

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
    ) -> Generator[Exec | Backoff, Any, tuple[rp.Reply, float]]:
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
                reply = rp.decode_reply(raw)
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
                    self.codec.set_gen(scope, rp._text(reply.result))
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
                    if self.codec.set_gen(scope, rp._text(reply.result)) and known:
                        yield from self.restore(scope, now, wait)
                return reply, shift
        except GeneratorExit:  # the caller gave up (cancelled): keep what it carried
            self._putback(scope, taken, t0)
            self.gave_up(scope, t0)
            raise

    def restore(self, scope: str, now: float, wait: bool) -> EngineFlow:
        """Write back into a new state what this process holds (its leases, with their costs)
        and spent in the last period of each limit (see :mod:`~quotaflow.backends.redis.ledger`)."""
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

    def _configure_args(
        self, scope: str, grace: float | None = None
    ) -> Callable[[float], list[str]]:
        limits = self.limits_of(scope)
        return lambda cur: rs.configure_args(limits, self.aging, self.depth, grace)
