"""The waiting line of one scope: priority order with aging, FIFO within a level. Pure.

Order: a waiter's *key* is ``arrival - priority * aging``; the smallest key is served first, ties
by arrival sequence. So a higher level goes first, yet a lower level that has waited ``aging``
seconds per level of difference goes ahead of newer higher-level arrivals: no starvation, and
the key never changes while waiting, so the order is fixed at arrival. ``aging=None`` gives strict
priority (which can starve lower levels; opt in knowingly).

Waiters of one level arrive in key order, so each level is a FIFO deque; the head is the minimum
over the level heads (levels are few). Removal from the middle is lazy (a dead mark), so every
operation is amortized O(levels).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["WaitQueue", "Waiter"]


@dataclass(eq=False)
class Waiter:
    """One waiting request in a scope's line."""

    id: str
    cost: dict[str, int]  # by limit name
    priority: int
    arrival: float
    seq: int
    deadline: float | None
    key: float = 0.0
    alive: bool = field(default=True)


class WaitQueue:
    """Waiters of one scope, in service order."""

    __slots__ = ("_aging", "_levels", "_live", "_seq")

    def __init__(self, aging: float | None) -> None:
        self._aging = aging
        self._levels: dict[int, deque[Waiter]] = {}
        self._live: dict[str, Waiter] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, waiter_id: object) -> bool:
        return waiter_id in self._live

    def get(self, waiter_id: str) -> Waiter | None:
        """The live waiter with this id, if any."""
        return self._live.get(waiter_id)

    def push(
        self,
        waiter_id: str,
        cost: dict[str, int],
        priority: int,
        arrival: float,
        deadline: float | None,
    ) -> Waiter:
        """Append a waiter at its place in the line."""
        self._seq += 1
        if self._aging is None:
            key = -priority * 1e18 + arrival
        else:
            key = arrival - priority * self._aging
        w = Waiter(waiter_id, cost, priority, arrival, self._seq, deadline, key)
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
        # Same level, later arrival => larger key, except with equal/earlier clock readings.
        if level and (level[-1].key, level[-1].seq) > (key, w.seq):
            key = w.key = level[-1].key
        level.append(w)
        self._live[waiter_id] = w
        return w

    def remove(self, waiter_id: str) -> Waiter | None:
        """Take a waiter out of the line (granted, refused or cancelled)."""
        w = self._live.pop(waiter_id, None)
        if w is not None:
            w.alive = False
            if not self._live:
                self._levels.clear()  # drop the dead marks in one go
        return w

    def _front(self, level: deque[Waiter]) -> Waiter | None:
        while level and not level[0].alive:
            level.popleft()
        return level[0] if level else None

    def head(self) -> Waiter | None:
        """The waiter served next."""
        best: Waiter | None = None
        for prio in list(self._levels):
            level = self._levels[prio]
            w = self._front(level)
            if w is None:
                del self._levels[prio]
                continue
            if best is None or (w.key, w.seq) < (best.key, best.seq):
                best = w
        return best

    def in_order(self, limit: int) -> Iterator[Waiter]:
        """The first ``limit`` live waiters in service order (head first)."""
        if limit <= 0:
            return iter(())
        streams = [((w.key, w.seq, w) for w in level if w.alive) for level in self._levels.values()]
        merged = heapq.merge(*streams, key=lambda item: (item[0], item[1]))
        return (item[2] for _, item in zip(range(limit), merged, strict=False))

    def position(self, waiter_id: str) -> int | None:
        """1-based place in the line (O(n); for status and tests)."""
        w = self._live.get(waiter_id)
        if w is None:
            return None
        return 1 + sum(1 for o in self._live.values() if (o.key, o.seq) < (w.key, w.seq))
