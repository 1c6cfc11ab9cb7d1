"""What every bucket kind of :mod:`quotaflow.scheduler.buckets` shares: :class:`Level`, a
bucket's state at one moment, and :class:`Bucket`, the base with the in-flight count, the pause
and the calls each kind answers (pure, clock-injected, no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Bucket", "Level"]

INF = math.inf


@dataclass(frozen=True)
class Level:
    """A bucket's state at one moment.

    Attributes:
        limit: the usable limit (after headroom and calibration).
        used: amount currently held (counted plus in flight).
        in_flight: the part of ``used`` whose return time is not known yet.
        free: ``max(0, limit - used)``.
        next_return: when some held amount next comes back (``None`` if nothing is scheduled).
        full_at: when everything held now will have come back, if known.
        paused_until: a pause set by a 429, if any is active.
    """

    limit: int
    used: int
    in_flight: int
    free: int
    next_return: float | None
    full_at: float | None
    paused_until: float | None


class Bucket:
    """Common state and the pause of every bucket kind."""

    __slots__ = ("capacity", "in_flight", "paused_until")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self.paused_until = -INF

    # --- queries --------------------------------------------------------------------------
    def fits_now(self, amount: int, now: float) -> bool:
        """True if ``amount`` more fits at ``now`` (the fast path of ``earliest``)."""
        return self.earliest(amount, now) <= now

    def earliest(self, amount: int, now: float, strict: bool = False) -> float:
        """The earliest time >= now at which ``amount`` more fits (``inf``: not by time)."""
        raise NotImplementedError

    def room(self, now: float) -> int:
        """How much more fits at ``now`` (may be negative), ignoring a pause."""
        raise NotImplementedError

    def exhausted(self, amount: int, now: float) -> bool:
        """True if a fail-fast limit should refuse ``amount`` now (it does not fit now; a
        calendar bucket: it cannot fit before the reset)."""
        return self.earliest(amount, now) > now

    def level(self, now: float) -> Level:
        """A snapshot of the bucket at ``now``."""
        raise NotImplementedError

    # --- changes ---------------------------------------------------------------------------
    def take(self, amount: int, now: float) -> None:
        """Reserve ``amount`` (in flight)."""
        self.in_flight += amount

    def release(self, amount: int, now: float) -> None:
        """Return an in-flight amount that never reached the server."""
        self.in_flight = max(0, self.in_flight - amount)

    def anchor(self, amount: int, t: float, now: float) -> None:
        """The server counted an in-flight ``amount`` no later than ``t``."""
        self.in_flight = max(0, self.in_flight - amount)

    def adjust(self, t: float, delta: int, now: float) -> None:
        """Correct an amount anchored at ``t`` by ``delta`` (refund < 0, extra charge > 0)."""

    def end(self, amount: int, now: float) -> None:
        """The call that holds an anchored ``amount`` has finished."""

    def settle(self, amount: int, real: int, t: float, now: float) -> None:
        """Anchor an in-flight ``amount`` at ``t``, correct it to ``real``, end the call."""
        self.anchor(amount, t, now)
        if real != amount:
            self.adjust(t, real - amount, now)
        self.end(real, now)

    def pause(self, until: float) -> None:
        """Admit nothing before ``until`` (a 429 said so)."""
        self.paused_until = max(self.paused_until, until)

    def exhaust(self, now: float) -> float | None:
        """Treat the limit as spent until its reset; returns the reset time if it has one."""
        return None

    def _paused(self, t: float) -> float:
        return t if t >= self.paused_until else self.paused_until
