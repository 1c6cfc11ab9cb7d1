"""Bucket arithmetic: pure, clock-injected (every method takes ``now``), no I/O.

A bucket is the stored state of one limit. The life of an amount in a bucket:

    take (in flight) -> anchor at t (counted by the server at t) -> adjust (settle) -> end
                     -> release (never reached the server: returned at once)

In-flight amounts count fully against the limit and have no return time yet: the server counts a
call somewhere between its sending and the start of its response, so an amount is *anchored* at
the latest moment the server could have counted it, and only from then does its reset rule run.

``earliest(amount, now, strict)`` answers when ``amount`` more would fit. In-flight amounts make
the answer uncertain; ``strict=False`` gives a lower bound that assumes they anchor now (good for
a timer), ``strict=True`` assumes they never come back (``inf`` if they must; good for deciding
whether taking something now could delay someone else).

The Redis backend's Lua scripts are a port of this module: change one, change the other.
"""

from __future__ import annotations

import math
from collections import deque

from quotaflow.limits import Calendar, Concurrent, Limit, Rolling, TokenBucket
from quotaflow.scheduler.bucket_base import Bucket, Level

__all__ = [
    "Bucket",
    "CalendarBucket",
    "ConcurrencyBucket",
    "GcraBucket",
    "Level",
    "WindowBucket",
    "make_bucket",
]

INF = math.inf
_EPS = 1e-9


class WindowBucket(Bucket):
    """Rolling window: an amount anchored at ``t`` returns at ``slot_end(t) + period``.

    Memory: a deque of at most ``slots + 1`` non-empty time slots and a running total.
    """

    __slots__ = ("_index", "_log", "logged", "period", "width")

    def __init__(self, capacity: int, period: float, slots: int = 600) -> None:
        super().__init__(capacity)
        self.period = float(period)
        self.width = self.period / slots
        self._log: deque[list[int]] = deque()  # [slot, amount], slots ascending
        self._index: dict[int, list[int]] = {}
        self.logged = 0

    def _slot(self, t: float) -> int:
        return math.floor(t / self.width + _EPS)

    def _returns_at(self, slot: int) -> float:
        return (slot + 1) * self.width + self.period

    def _expire(self, now: float) -> None:
        log = self._log
        while log and self._returns_at(log[0][0]) <= now + _EPS:
            slot, amount = log.popleft()
            del self._index[slot]
            self.logged -= amount

    def fits_now(self, amount: int, now: float) -> bool:
        log = self._log
        if log and self._returns_at(log[0][0]) <= now + _EPS:
            self._expire(now)
        return self.logged + self.in_flight + amount <= self.capacity and self.paused_until <= now

    def room(self, now: float) -> int:
        self._expire(now)
        return self.capacity - self.logged - self.in_flight

    def earliest(self, amount: int, now: float, strict: bool = False) -> float:
        self._expire(now)
        need = self.logged + self.in_flight + amount - self.capacity
        if need <= 0:
            return self._paused(now)
        for slot, held in self._log:
            need -= held
            if need <= 0:
                return self._paused(self._returns_at(slot))
        if strict or amount > self.capacity:
            return INF
        # Only in-flight amounts can make room; they return one period after they anchor.
        return self._paused(now + self.period)

    def anchor(self, amount: int, t: float, now: float) -> None:
        super().anchor(amount, t, now)
        self._add(self._slot(t), amount, now)

    def settle(self, amount: int, real: int, t: float, now: float) -> None:
        in_flight = self.in_flight - amount
        self.in_flight = in_flight if in_flight > 0 else 0
        if real:
            self._add(math.floor(t / self.width + _EPS), real, now)

    def adjust(self, t: float, delta: int, now: float) -> None:
        self._add(self._slot(t), delta, now)

    def _add(self, slot: int, amount: int, now: float) -> None:
        if amount == 0 or self._returns_at(slot) <= now + _EPS:
            return  # already back (or nothing to do)
        entry = self._index.get(slot)
        if entry is not None:
            applied = max(amount, -entry[1])
            entry[1] += applied
            self.logged += applied
            return
        if amount < 0:
            return
        entry = [slot, amount]
        self._index[slot] = entry
        self.logged += amount
        log = self._log
        if not log or log[-1][0] < slot:
            log.append(entry)
            return
        # Anchored in the past (a settle that arrived late): insert in order. Rare.
        i = len(log)
        while i > 0 and log[i - 1][0] > slot:
            i -= 1
        log.insert(i, entry)

    def level(self, now: float) -> Level:
        self._expire(now)
        used = self.logged + self.in_flight
        nxt = self._returns_at(self._log[0][0]) if self._log else None
        full = self._returns_at(self._log[-1][0]) if self._log and not self.in_flight else None
        return Level(
            limit=self.capacity,
            used=used,
            in_flight=self.in_flight,
            free=max(0, self.capacity - used),
            next_return=nxt,
            full_at=full if self._log else (None if self.in_flight else now),
            paused_until=self.paused_until if self.paused_until > now else None,
        )

    def slot_count(self) -> int:
        """Number of stored slots (bounded by ``slots + 1``)."""
        return len(self._log)


class CalendarBucket(Bucket):
    """Calendar windows: everything counted in a window returns when the window ends."""

    __slots__ = ("_cal", "counted", "window_end", "window_start")

    def __init__(self, capacity: int, calendar: Calendar, now: float) -> None:
        super().__init__(capacity)
        self._cal = calendar
        self.window_start = calendar.window_start(now)
        self.window_end = calendar.window_end(now)
        self.counted = 0

    def fits_now(self, amount: int, now: float) -> bool:
        if now >= self.window_end:
            self._roll(now)
        return self.counted + self.in_flight + amount <= self.capacity and self.paused_until <= now

    def _roll(self, now: float) -> None:
        if now >= self.window_end:
            self.window_start = self._cal.window_start(now)
            self.window_end = self._cal.window_end(now)
            self.counted = 0

    def room(self, now: float) -> int:
        self._roll(now)
        return self.capacity - self.counted - self.in_flight

    def next_reset(self, now: float) -> float:
        """When the current calendar window ends."""
        self._roll(now)
        return self.window_end

    def earliest(self, amount: int, now: float, strict: bool = False) -> float:
        self._roll(now)
        if self.counted + self.in_flight + amount <= self.capacity:
            return self._paused(now)
        if self.counted + amount > self.capacity or not strict:
            return self._paused(self.window_end)
        return INF

    def exhausted(self, amount: int, now: float) -> bool:
        self._roll(now)
        return self.counted + amount > self.capacity or self.paused_until >= self.window_end

    def anchor(self, amount: int, t: float, now: float) -> None:
        super().anchor(amount, t, now)
        self.adjust(t, amount, now)

    def adjust(self, t: float, delta: int, now: float) -> None:
        self._roll(now)
        if t >= self.window_start:
            self.counted = max(0, self.counted + delta)

    def exhaust(self, now: float) -> float | None:
        self._roll(now)
        self.pause(self.window_end)
        return self.window_end

    def level(self, now: float) -> Level:
        self._roll(now)
        used = self.counted + self.in_flight
        return Level(
            limit=self.capacity,
            used=used,
            in_flight=self.in_flight,
            free=max(0, self.capacity - used),
            next_return=self.window_end if self.counted else None,
            full_at=self.window_end if self.counted else now,
            paused_until=self.paused_until if self.paused_until > now else None,
        )


class GcraBucket(Bucket):
    """Continuous refill (GCRA): the theoretical arrival time ``tat`` is the whole state."""

    __slots__ = ("_fixed_burst", "burst", "interval", "period", "tat")

    def __init__(self, capacity: int, period: float, burst: int | None, now: float) -> None:
        self.period = period
        self._fixed_burst = burst
        self.burst = 0
        self.interval = INF
        super().__init__(0)
        self.tat = now
        self.set_rate(capacity, now)

    def set_rate(self, amount: int, now: float) -> None:
        """Change the limit (``amount`` per period), keeping the fraction in use."""
        old_interval, old_burst = self.interval, self.burst
        self.interval = self.period / amount if amount else INF
        self.burst = 0 if not amount else (self._fixed_burst or amount)
        self.capacity = self.burst  # the most one request can take
        if old_burst and amount and self.tat > now:
            used = (self.tat - now) / old_interval
            self.tat = now + used * self.interval

    def earliest(self, amount: int, now: float, strict: bool = False) -> float:
        if amount > self.burst or self.interval == INF:
            return INF
        new_tat = max(self.tat, now) + amount * self.interval
        return self._paused(max(now, new_tat - self.burst * self.interval))

    def take(self, amount: int, now: float) -> None:
        self.tat = max(self.tat, now) + amount * self.interval

    def release(self, amount: int, now: float) -> None:
        self.tat -= amount * self.interval

    def anchor(self, amount: int, t: float, now: float) -> None:
        pass

    def adjust(self, t: float, delta: int, now: float) -> None:
        self.tat = max(self.tat, now - self.burst * self.interval) + delta * self.interval

    def level(self, now: float) -> Level:
        if self.interval == INF:
            return Level(0, 0, 0, 0, None, now, None)
        used = max(0, math.ceil((self.tat - now) / self.interval - _EPS))
        return Level(
            limit=self.burst,
            used=min(used, self.burst),
            in_flight=0,
            free=max(0, self.burst - used),
            next_return=now + self.interval if used else None,
            full_at=max(now, self.tat),
            paused_until=self.paused_until if self.paused_until > now else None,
        )


class ConcurrencyBucket(Bucket):
    """At most ``capacity`` held at once; amounts return when the call ends."""

    __slots__ = ("running",)

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.running = 0

    def earliest(self, amount: int, now: float, strict: bool = False) -> float:
        if self.running + self.in_flight + amount <= self.capacity:
            return self._paused(now)
        return INF

    def anchor(self, amount: int, t: float, now: float) -> None:
        super().anchor(amount, t, now)
        self.running += amount

    def adjust(self, t: float, delta: int, now: float) -> None:
        self.running = max(0, self.running + delta)

    def end(self, amount: int, now: float) -> None:
        self.running = max(0, self.running - amount)

    def level(self, now: float) -> Level:
        used = self.running + self.in_flight
        return Level(
            limit=self.capacity,
            used=used,
            in_flight=self.in_flight,
            free=max(0, self.capacity - used),
            next_return=None,
            full_at=None if used else now,
            paused_until=self.paused_until if self.paused_until > now else None,
        )


def make_bucket(limit: Limit, now: float) -> Bucket:
    """A fresh bucket for ``limit`` (its ``amount`` is the usable capacity)."""
    rule = limit.reset
    if isinstance(rule, Rolling):
        return WindowBucket(limit.amount, limit.period, rule.slots)
    if isinstance(rule, Calendar):
        return CalendarBucket(limit.amount, rule, now)
    if isinstance(rule, TokenBucket):
        return GcraBucket(limit.amount, limit.period, rule.burst, now)
    if isinstance(rule, Concurrent):
        return ConcurrencyBucket(limit.amount)
    raise TypeError(f"unknown reset rule {rule!r}")
