"""What one process holds and spent per scope, so that it can write it back into a new state.

Redis state can vanish (a restart without persistence, ``FLUSHALL``, eviction, a failover to a
replica that lags). The state the fleet then shares knows nothing of the last period, so the
fleet would admit a second full window while the server still counts the first. Each process
therefore keeps, per scope, the cost of every lease it holds and what it spent in the last
period of each limit (in the current calendar window, for calendar limits), and writes both
back (the ``restore`` op) as soon as it sees a new generation. Pure: no I/O, no locks (the
engine holds its lock around every call).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from quotaflow.limits import Calendar, Concurrent, Limit

__all__ = ["Ledger"]


class Ledger:
    """Lease costs and recent spends of one process, per scope (times of the limiter clock)."""

    def __init__(self) -> None:
        self.costs: dict[str, dict[str, int]] = {}  # lease id -> cost by limit
        self._spent: dict[str, deque[tuple[float, dict[str, int]]]] = {}
        self._days: dict[str, dict[str, tuple[float, int]]] = {}  # limit -> (window, total)

    def granted(self, lease_id: str, cost: Mapping[str, int]) -> None:
        """A lease was granted with ``cost`` (by limit)."""
        self.costs[lease_id] = dict(cost)

    def dropped(self, lease_id: str) -> None:
        """A lease ended without spending (released, lost, expired)."""
        self.costs.pop(lease_id, None)

    def settled(
        self,
        scope: str,
        limits: Sequence[Limit],
        lease_id: str,
        actual: Mapping[str, int] | None,
        at: float,
    ) -> None:
        """A lease was settled at ``at`` with ``actual`` (``None``: its cost) and applied."""
        cost = self.costs.pop(lease_id, None)
        if cost is None:
            return
        real = dict(cost)
        if actual is not None:
            real.update({k: int(v) for k, v in actual.items()})
        rolling: dict[str, int] = {}
        horizon = 0.0
        for lim in limits:
            amount = real.get(lim.name, 0)
            rule = lim.reset
            if isinstance(rule, Concurrent):
                continue
            if isinstance(rule, Calendar):
                if amount:
                    start = rule.window_start(at)
                    days = self._days.setdefault(scope, {})
                    ws, total = days.get(lim.name, (start, 0))
                    if start > ws:
                        ws, total = start, 0
                    if start == ws:
                        days[lim.name] = (ws, total + amount)
                continue
            horizon = max(horizon, lim.period)
            if amount:
                rolling[lim.name] = amount
        if not rolling:
            return
        log = self._spent.setdefault(scope, deque())
        log.append((at, rolling))
        while log and log[0][0] < at - horizon - 1.0:
            log.popleft()

    def leases(self, lease_ids: Sequence[str]) -> list[tuple[str, dict[str, int]]]:
        """``(id, cost)`` of the given leases (those whose cost is known)."""
        return [(i, self.costs[i]) for i in lease_ids if i in self.costs]

    def spends(
        self, scope: str, limits: Sequence[Limit], now: float
    ) -> list[tuple[float, dict[str, int]]]:
        """What to write back at ``now``: spends still inside a period of their limit, and one
        entry per calendar limit with the current window's total."""
        periods = {lim.name: lim.period for lim in limits}
        out: list[tuple[float, dict[str, int]]] = []
        for at, amounts in self._spent.get(scope, ()):
            keep = {k: v for k, v in amounts.items() if at > now - periods.get(k, 0.0) - 1.0}
            if keep:
                out.append((at, keep))
        days = self._days.get(scope, {})
        for lim in limits:
            rule = lim.reset
            entry = days.get(lim.name)
            if (
                isinstance(rule, Calendar)
                and entry is not None
                and entry[0] == rule.window_start(now)
            ):
                out.append((now, {lim.name: entry[1]}))
        return out
