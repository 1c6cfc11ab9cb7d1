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


class _Plan:
    """Which limits of a scope a spend is kept for (worked out once per set of limits)."""

    __slots__ = ("calendars", "horizon", "limits", "rolling")

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits = limits
        self.rolling = {
            lim.name: lim.period
            for lim in limits
            if not isinstance(lim.reset, (Calendar, Concurrent))
        }
        self.calendars = [
            (lim.name, lim.reset) for lim in limits if isinstance(lim.reset, Calendar)
        ]
        self.horizon = max(self.rolling.values(), default=0.0) + 1.0


class Ledger:
    """Lease costs and recent spends of one process, per scope (times of the limiter clock).

    On the hot path (every grant and settle) it stores references and appends to a deque;
    the work of picking what to write back is done only when a state was lost.
    """

    def __init__(self) -> None:
        self.costs: dict[str, Mapping[str, int]] = {}  # lease id -> cost by limit
        self._spent: dict[str, deque[tuple[float, Mapping[str, int]]]] = {}
        self._days: dict[str, dict[str, tuple[float, int]]] = {}  # limit -> (window, total)
        self._plans: dict[str, _Plan] = {}

    def granted(self, lease_id: str, cost: Mapping[str, int]) -> None:
        """A lease was granted with ``cost`` (by limit; kept by reference, never changed)."""
        self.costs[lease_id] = cost

    def dropped(self, lease_id: str) -> None:
        """A lease ended without spending (released, lost, expired)."""
        self.costs.pop(lease_id, None)

    def _plan(self, scope: str, limits: Sequence[Limit]) -> _Plan:
        plan = self._plans.get(scope)
        if plan is None or plan.limits is not limits:
            plan = self._plans[scope] = _Plan(limits)
        return plan

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
        real = cost if not actual else {**cost, **actual}
        plan = self._plan(scope, limits)
        for name, calendar in plan.calendars:
            amount = int(real.get(name, 0))
            if amount:
                start = calendar.window_start(at)
                days = self._days.setdefault(scope, {})
                ws, total = days.get(name, (start, 0))
                if start > ws:
                    ws, total = start, 0
                if start == ws:
                    days[name] = (ws, total + amount)
        log = self._spent.get(scope)
        if log is None:
            log = self._spent[scope] = deque()
        log.append((at, real))
        edge = at - plan.horizon
        while log[0][0] < edge:
            log.popleft()

    def leases(self, lease_ids: Sequence[str]) -> list[tuple[str, Mapping[str, int]]]:
        """``(id, cost)`` of the given leases (those whose cost is known)."""
        return [(i, self.costs[i]) for i in lease_ids if i in self.costs]

    def spends(
        self, scope: str, limits: Sequence[Limit], now: float
    ) -> list[tuple[float, dict[str, int]]]:
        """What to write back at ``now``: the amounts of rolling limits spent within a period
        of their limit, and one entry per calendar limit with the current window's total."""
        plan = self._plan(scope, limits)
        out: list[tuple[float, dict[str, int]]] = []
        for at, amounts in self._spent.get(scope, ()):
            keep = {
                k: int(v)
                for k, v in amounts.items()
                if v and k in plan.rolling and at > now - plan.rolling[k] - 1.0
            }
            if keep:
                out.append((at, keep))
        days = self._days.get(scope, {})
        for name, calendar in plan.calendars:
            entry = days.get(name)
            if entry is not None and entry[0] == calendar.window_start(now):
                out.append((now, {name: entry[1]}))
        return out
