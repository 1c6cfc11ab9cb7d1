"""Quota windows: rolling and fixed, plus the Pacific calendar day. Pure, no I/O.

A window holds the amounts (requests or tokens) admitted at given times and answers two
questions at a time ``now``: how much is in use, and how long until ``amount`` more would fit
under ``limit``. Rolling windows hold what was admitted in ``(now - period, now]``: an entry made
exactly one period ago has expired.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["FixedWindow", "RollingWindow", "Window", "day_bounds", "period_bounds"]

Bounds = Callable[[float], tuple[float, float]]


def period_bounds(period: float) -> Bounds:
    """Fixed windows of ``period`` seconds aligned on the Unix epoch."""

    def bounds(now: float) -> tuple[float, float]:
        start = math.floor(now / period) * period
        return start, start + period

    return bounds


def day_bounds(zone: ZoneInfo, day_seconds: float | None = None) -> Bounds:
    """Calendar days in ``zone`` (DST aware), or compressed days of ``day_seconds``.

    Args:
        zone: Time zone whose local midnight starts a day.
        day_seconds: If given, days are fixed windows of this length from the epoch.
    """
    if day_seconds is not None:
        return period_bounds(day_seconds)

    def bounds(now: float) -> tuple[float, float]:
        local = datetime.fromtimestamp(now, zone).date()
        start = datetime.combine(local, time(0), tzinfo=zone)
        end = datetime.combine(local + timedelta(days=1), time(0), tzinfo=zone)
        return start.timestamp(), end.timestamp()

    return bounds


class Window:
    """Interface shared by the window kinds."""

    def usage(self, now: float) -> int:
        """Amount in use at ``now``."""
        raise NotImplementedError

    def wait(self, now: float, amount: int, limit: int) -> float | None:
        """Seconds until ``amount`` more fits under ``limit``; 0 if now, None if never."""
        raise NotImplementedError

    def add(self, now: float, amount: int) -> None:
        """Record ``amount`` admitted at ``now``."""
        raise NotImplementedError


class RollingWindow(Window):
    """Sliding window of ``period`` seconds over an exact log of admissions."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._log: deque[tuple[float, int]] = deque()
        self._total = 0

    def _expire(self, now: float) -> None:
        horizon = now - self._period
        while self._log and self._log[0][0] <= horizon:
            self._total -= self._log.popleft()[1]

    def usage(self, now: float) -> int:
        self._expire(now)
        return self._total

    def wait(self, now: float, amount: int, limit: int) -> float | None:
        if amount > limit:
            return None
        used = self.usage(now)
        if used + amount <= limit:
            return 0.0
        for at, spent in self._log:
            used -= spent
            if used + amount <= limit:
                return at + self._period - now
        return None  # pragma: no cover - unreachable: an empty log always fits

    def add(self, now: float, amount: int) -> None:
        self._expire(now)
        if amount:
            self._log.append((now, amount))
            self._total += amount

    def __repr__(self) -> str:
        return f"RollingWindow(period={self._period}, total={self._total}, n={len(self._log)})"


class FixedWindow(Window):
    """Counter that resets at the boundaries given by ``bounds``."""

    def __init__(self, bounds: Bounds) -> None:
        self._bounds = bounds
        self._start = -math.inf
        self._end = -math.inf
        self._total = 0

    def _roll(self, now: float) -> None:
        if not self._start <= now < self._end:
            self._start, self._end = self._bounds(now)
            self._total = 0

    def usage(self, now: float) -> int:
        self._roll(now)
        return self._total

    def wait(self, now: float, amount: int, limit: int) -> float | None:
        if amount > limit:
            return None
        if self.usage(now) + amount <= limit:
            return 0.0
        return self._end - now

    def add(self, now: float, amount: int) -> None:
        self._roll(now)
        self._total += amount

    def __repr__(self) -> str:
        return f"FixedWindow(start={self._start}, end={self._end}, total={self._total})"
