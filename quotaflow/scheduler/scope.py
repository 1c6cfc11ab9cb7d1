"""The rules of one scope, pure: buckets + line + leases, and the dispatch that serves the line.

This is the reference the backends implement (the memory backend runs it as is; the Redis Lua
script is its port). Everything takes ``now``; nothing reads a clock or sleeps.

Dispatch rule (run after every change):

1. Serve the head of the line while every limit has room for its cost (all or none).
2. If the head cannot fit: refuse it if it never can (cost above a limit), if a fail-fast
   limit (a day quota) blocks it, or if its computed start ``T`` is after its deadline.
3. Otherwise *backfill*: each of the next ``backfill_depth`` waiters may start now if it fits now
   AND the head would still fit at ``T`` with that waiter's amounts never returned. So passing the
   head never moves the head's start, and small requests do not wait for nothing.
4. The head's ``T`` is the scope's single timer; the line wakes on changes, never polls.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quotaflow.backends.base import Decision, Refusal, Request
from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import (
    Bucket,
    CalendarBucket,
    ConcurrencyBucket,
    GcraBucket,
    Level,
    WindowBucket,
    make_bucket,
)
from quotaflow.scheduler.lane import FastLane
from quotaflow.scheduler.queue import Waiter, WaitQueue

__all__ = ["ScopeState"]

INF = math.inf


@dataclass
class _Lease:
    cost: dict[str, int]


@dataclass(frozen=True)
class _Fit:
    at: float  # optimistic earliest start
    strict: float  # earliest start if in-flight amounts never return
    dimension: str
    refusal: Refusal | None = None
    requested: int = 0
    limit: int = 0


class ScopeState:
    """Buckets, line and leases of one scope."""

    def __init__(
        self, limits: Sequence[Limit], now: float, *, aging: float | None, backfill_depth: int
    ) -> None:
        self.limits: dict[str, Limit] = {}
        self.buckets: dict[str, Bucket] = {}
        self.queue = WaitQueue(aging)
        self.leases: dict[str, _Lease] = {}
        self.backfill_depth = backfill_depth
        self.head_at: float | None = None
        self.head_id: str | None = None
        # Backfilling can only find a new candidate after something changed: an arrival, room
        # returned (release, refund), time passing (a timer), a limit or pause changed.
        self.rescan = True
        # per agent with a floor: its waiting requests in arrival order (see
        # quotaflow.quotas.shares)
        self.floor_lines: dict[tuple[str, ...], deque[tuple[str, dict[str, int]]]] = {}
        # the fast lane (see quotaflow.scheduler.lane): the limits it charges, by metric
        self.lane = FastLane()
        self.configure(limits, now)

    # --- configuration ---------------------------------------------------------------------
    def configure(self, limits: Sequence[Limit], now: float) -> None:
        """Add buckets for new limits; change the amount of existing ones in place."""
        self.rescan = True
        for lim in limits:
            old = self.limits.get(lim.name)
            if old is not None and old.reset == lim.reset and old.period == lim.period:
                bucket = self.buckets[lim.name]
                if isinstance(bucket, GcraBucket):
                    bucket.set_rate(lim.amount, now)
                else:
                    bucket.capacity = lim.amount
            else:
                self.buckets[lim.name] = make_bucket(lim, now)
            self.limits[lim.name] = lim
        names = frozenset(self.limits)
        if names != self.lane.scope_limits:
            self.lane.scope_limits = names
            self.lane.version += 1

    # --- the fast lane ----------------------------------------------------------------------
    def lane_close(self, now: float) -> None:
        """Write the lane's grants and settles into the buckets and leases; close it."""
        lane = self.lane
        if not lane.open:
            return
        lane.open = False
        buckets = self.buckets
        if lane.pending_requests or lane.pending_tokens:
            for name in lane.limits_requests:
                buckets[name].in_flight += lane.pending_requests
            for name in lane.limits_tokens:
                buckets[name].in_flight += lane.pending_tokens
            lane.pending_requests = lane.pending_tokens = 0
        if lane.anchored_requests or lane.anchored_tokens:
            for names, amount in (
                (lane.limits_requests, lane.anchored_requests),
                (lane.limits_tokens, lane.anchored_tokens),
            ):
                for name in names:  # every anchor gathered lies in the slot of anchored_at
                    buckets[name].adjust(lane.anchored_at, amount, now)
            lane.anchored_requests = lane.anchored_tokens = 0
        lane.anchored_slot = -1
        for lease, tokens in lane.leases.items():
            cost = dict.fromkeys(lane.limits_requests, 1)
            if tokens:
                cost.update(dict.fromkeys(lane.limits_tokens, tokens))
            self.leases[lane.lease_id(lease)] = _Lease(cost)
        lane.leases.clear()

    def lane_open(self, now: float) -> None:
        """Open the lane if nobody waits and every limit is of a kind it serves."""
        lane = self.lane
        if lane.open or self.queue or self.floor_lines:
            return
        rooms: dict[str, int] = {}
        requests: list[str] = []
        tokens: list[str] = []
        until = INF
        width = 0.0
        for name, bucket in self.buckets.items():
            metric = self.limits[name].metric
            if metric == "requests":
                requests.append(name)
            elif metric == "input_tokens":
                tokens.append(name)
            else:
                continue  # the lane charges nothing else: such limits cannot block it
            if bucket.paused_until > now:
                return
            if isinstance(bucket, WindowBucket):
                if width and bucket.width != width:
                    return
                width = bucket.width
            elif isinstance(bucket, CalendarBucket):
                until = min(until, bucket.next_reset(now))
            else:
                return
            free = bucket.room(now)
            rooms[metric] = min(rooms.get(metric, free), free)
        lane.limits_requests, lane.limits_tokens = tuple(requests), tuple(tokens)
        lane.width, lane.until = width, until
        lane.reset_room(rooms.get("requests"), rooms.get("input_tokens"))

    # --- fitting ---------------------------------------------------------------------------
    def _fit(self, cost: Mapping[str, int], now: float) -> _Fit:
        at, strict, dim = now, now, ""
        for name, amount in cost.items():
            if amount <= 0:
                continue
            bucket = self.buckets.get(name)
            if bucket is None:
                continue
            limit = self.limits[name]
            if amount > bucket.capacity:
                return _Fit(INF, INF, name, "cannot_fit", amount, bucket.capacity)
            t = bucket.earliest(amount, now)
            if t > now and limit.fail_fast and bucket.exhausted(amount, now):
                return _Fit(t, t, name, "exhausted", amount, bucket.capacity)
            if t > at:
                at, dim = t, name
            strict = max(strict, bucket.earliest(amount, now, strict=True))
        return _Fit(at, strict, dim)

    def _fits_now(self, cost: Mapping[str, int], now: float) -> bool:
        buckets = self.buckets
        for name, amount in cost.items():
            bucket = buckets.get(name)
            if bucket is not None and not bucket.fits_now(amount, now):
                return False
        return True

    def _below_floors(self, floors: Mapping[str, int], cost: Mapping[str, int], now: float) -> bool:
        for name, floor in floors.items():
            bucket = self.buckets.get(name)
            if bucket is None or bucket.level(now).used + cost.get(name, 0) > floor:
                return False
        return True

    def _serve_floors(self, now: float, out: list[Decision]) -> None:
        """An agent below its floor is served before the line, if its oldest request fits."""
        for key in list(self.floor_lines):
            line = self.floor_lines[key]
            while line and line[0][0] not in self.queue:
                line.popleft()
            while line:
                rid, floors = line[0]
                w = self.queue.get(rid)
                if w is None:
                    line.popleft()
                    continue
                if not self._below_floors(floors, w.cost, now) or not self._fits_now(w.cost, now):
                    break
                line.popleft()
                self.queue.remove(rid)
                self._take(rid, w.cost, now)
                out.append(Decision(rid, "granted", now))
            if not line:
                del self.floor_lines[key]

    def _take(self, request_id: str, cost: Mapping[str, int], now: float) -> None:
        for name, amount in cost.items():
            bucket = self.buckets.get(name)
            if bucket is not None and amount > 0:
                bucket.take(amount, now)
        self.leases[request_id] = _Lease(dict(cost))

    def _untake(self, request_id: str, now: float) -> None:
        lease = self.leases.pop(request_id)
        for name, amount in lease.cost.items():
            bucket = self.buckets.get(name)
            if bucket is not None and amount > 0:
                bucket.release(amount, now)

    @staticmethod
    def _refused(request_id: str, fit: _Fit, reason: Refusal | None = None) -> Decision:
        return Decision(
            request_id,
            "refused",
            at=None if fit.at == INF else fit.at,
            dimension=fit.dimension,
            reason=reason or fit.refusal,
            requested=fit.requested,
            limit=fit.limit,
        )

    # --- operations ------------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> tuple[Decision, list[Decision]]:
        """Returns the request's decision and decisions about other waiters."""
        cost = {k: v for k, v in request.cost.items() if v > 0}
        if not self.queue and self._fits_now(cost, now):
            self._take(request.id, cost, now)  # the fast path: nobody waits and all fit
            return Decision(request.id, "granted", now), []
        fit = self._fit(cost, now)
        if fit.refusal is not None:
            return self._refused(request.id, fit), []
        if request.deadline is not None and request.deadline < fit.at < INF:
            return self._refused(request.id, fit, "timeout"), []
        self.queue.push(request.id, cost, request.priority, now, request.deadline)
        if request.floors:
            key = tuple(sorted(request.floors))
            self.floor_lines.setdefault(key, deque()).append((request.id, dict(request.floors)))
        self.rescan = True
        others = self.dispatch(now)
        mine = next((d for d in others if d.id == request.id), None)
        others = [d for d in others if d.id != request.id]
        if mine is None:
            mine = Decision(request.id, "waiting", None, fit.dimension)
        if mine.outcome == "waiting" and request.nowait:
            self.queue.remove(request.id)
            at = mine.at if mine.at is not None else (fit.at if fit.at > now else None)
            self.rescan = True  # its scan may have blocked others behind it
            if self.head_id == request.id:
                self.head_id = self.head_at = None
                others.extend(self.dispatch(now))
            return Decision(request.id, "refused", at, mine.dimension, "nowait"), others
        return mine, others

    def dispatch(self, now: float, timer: bool = False) -> list[Decision]:
        """Serve the line; returns every decision taken (grants, refusals, the head's time).

        ``timer``: called because time passed (the head's timer), so room may have returned.
        """
        if timer:
            self.rescan = True
        out: list[Decision] = []
        if self.floor_lines:
            self._serve_floors(now, out)
        while True:
            head = self.queue.head()
            if head is None:
                self.head_at = self.head_id = None
                return out
            fit = self._fit(head.cost, now)
            if fit.refusal is not None:
                self.queue.remove(head.id)
                out.append(self._refused(head.id, fit))
                continue
            if fit.at <= now:
                self.queue.remove(head.id)
                self._take(head.id, head.cost, now)
                out.append(Decision(head.id, "granted", now))
                continue
            if head.deadline is not None and head.deadline < fit.at < INF:
                self.queue.remove(head.id)
                out.append(self._refused(head.id, fit, "timeout"))
                continue
            break
        if self.rescan:
            self.rescan = False
            self._backfill(head, fit, now, out)
        if (self.head_id, self.head_at) != (head.id, fit.at):
            if self.head_id not in (None, head.id) and self.head_id in self.queue:
                out.append(Decision(self.head_id, "waiting", None))  # displaced: drop its timer
            self.head_id, self.head_at = head.id, fit.at
            at = None if fit.at == INF else fit.at
            out.append(Decision(head.id, "waiting", at, fit.dimension))
        return out

    def _backfill(self, head: Waiter, head_fit: _Fit, now: float, out: list[Decision]) -> None:
        """Conservative backfilling within ``backfill_depth``: a waiter may start now only if
        it fits now and no waiter ahead of it (the head included) would start later for it."""
        if self.backfill_depth <= 0:
            return
        candidates = list(self.queue.in_order(self.backfill_depth + 1))[1:]
        ahead: list[tuple[Waiter, float]] = [(head, head_fit.at)]
        for cand in candidates:
            fit = self._fit(cand.cost, now)
            if fit.refusal is not None:
                self.queue.remove(cand.id)
                out.append(self._refused(cand.id, fit))
                continue
            if fit.at > now:
                ahead.append((cand, fit.at))
                continue
            self._take(cand.id, cand.cost, now)
            # a waiter ahead with no computed start (blocked on a concurrency limit) is never
            # passed: nothing says the passer would not delay it
            if all(at < INF and self._fit(w.cost, now).strict <= at + 1e-9 for w, at in ahead):
                self.queue.remove(cand.id)
                out.append(Decision(cand.id, "granted", now))
            else:
                self._untake(cand.id, now)
                ahead.append((cand, now))

    def cancel(self, request_id: str, now: float) -> tuple[Decision | None, list[Decision]]:
        """Leave the line; a lease already granted is reported back to be released."""
        if request_id in self.leases:
            return Decision(request_id, "granted", now), []
        if self.queue.remove(request_id) is None:
            return None, []
        if self.head_id == request_id:
            self.head_id = self.head_at = None
        self.rescan = True
        return None, self.dispatch(now)

    def settle(
        self, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> list[Decision]:
        """Anchor the lease's amounts at ``at``, apply the real usage, end the lease."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        buckets = self.buckets
        for name, amount in lease.cost.items():
            bucket = buckets.get(name)
            if bucket is None:
                continue
            real = amount if actual is None else actual.get(name, amount)
            bucket.settle(amount, real, at, now)
            if real < amount or isinstance(bucket, ConcurrencyBucket):
                self.rescan = True
        if actual is not None:  # usage that was not estimated (0 reserved) still counts
            for name, real in actual.items():
                if real > 0 and name not in lease.cost:
                    bucket = buckets.get(name)
                    if bucket is not None:
                        bucket.settle(0, real, at, now)
        return self.dispatch(now) if self.queue else []

    def release(self, lease_id: str, now: float) -> list[Decision]:
        """Return everything a lease holds."""
        if lease_id not in self.leases:
            return []
        self._untake(lease_id, now)
        self.rescan = True
        return self.dispatch(now) if self.queue else []

    def pause(self, limit: str, until: float, now: float) -> list[Decision]:
        """Hold ``limit`` until ``until``."""
        bucket = self.buckets.get(limit)
        if bucket is None:
            raise KeyError(limit)
        bucket.pause(until)
        self.rescan = True
        self.head_id = self.head_at = None  # the head's time moves: recompute and tell it
        return self.dispatch(now)

    def exhaust(self, limit: str, now: float) -> tuple[float | None, list[Decision]]:
        """Mark a calendar limit spent until it resets."""
        bucket = self.buckets.get(limit)
        if bucket is None:
            raise KeyError(limit)
        resets = bucket.exhaust(now)
        self.rescan = True
        self.head_id = self.head_at = None
        return resets, self.dispatch(now)

    def status(self, now: float) -> dict[str, Level]:
        """Each limit's level."""
        return {name: b.level(now) for name, b in self.buckets.items()}
