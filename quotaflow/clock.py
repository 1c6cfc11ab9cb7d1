"""Time in one place: the only module that reads the time.

A clock gives *epoch seconds* (float) that never go backwards: the wall time read once at start,
advanced by the monotonic clock. Epoch seconds let calendar rules (midnight in
America/Los_Angeles) and rolling windows share one time base.

Tests use :class:`ManualClock`, whose time moves only when the test says so. Sleeping is done by
the drivers with :func:`sleep_time`, which turns an absolute time of this clock into seconds to
sleep on the real event loop; with a manual clock the drivers instead wait for
:meth:`ManualClock.advance` (see ``quotaflow.scheduler.waiting``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Anything with ``now() -> float`` (epoch seconds, never decreasing)."""

    def now(self) -> float:
        """The current time in epoch seconds."""
        ...


class SystemClock:
    """Wall time at start plus monotonic progress: epoch seconds that never jump back."""

    __slots__ = ("_mono0", "_wall0")

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        """The current time in epoch seconds."""
        return self._wall0 + (time.monotonic() - self._mono0)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to; for tests and simulations.

    Waiters blocked in a limiter that uses this clock wake when :meth:`advance` or :meth:`set`
    moves the time past their wake-up time.

    Example:
        >>> clock = ManualClock(1_000.0)
        >>> clock.advance(0.5)
        >>> clock.now()
        1000.5
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._listeners: list[_Listener] = []

    def now(self) -> float:
        """The current (virtual) time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` (>= 0) and wake whoever is due."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance(seconds={seconds}): seconds must be >= 0")
        self.set(self._now + seconds)

    def set(self, t: float) -> None:
        """Move the time to ``t`` (not before the current time) and wake whoever is due."""
        if t < self._now:
            raise ValueError(f"ManualClock.set({t}): the clock cannot go back from {self._now}")
        with self._lock:
            self._now = float(t)
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def subscribe(self, listener: _Listener) -> None:
        """Call ``listener()`` after every move of the time (used by the drivers)."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: _Listener) -> None:
        """Stop calling ``listener``."""
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:.6f})"


class _Listener(Protocol):
    def __call__(self) -> None: ...
