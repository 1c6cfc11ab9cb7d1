"""Measured timings for the tests that check full use under load.

A unit of capacity comes back one period after its call's response began (the anchor): the
time a call spends between its grant and its response is capacity no limiter can hand out
again, and on a loaded machine it grows. :class:`InFlight` records it for every permit, so a
test can tell the limiter's idle capacity (its own fault) from that latency (the machine's):
with ``s`` the mean time in flight as a share of the period, a unit is granted at most once
per ``period * (1 + s)``, so a limiter that leaves nothing idle reaches ``1 / (1 + s)`` of
the limit.
"""

from __future__ import annotations

import pytest

from quotaflow.scheduler.permit_state import _PermitBase


class InFlight:
    """Each permit of ``model``: its priority, grant time and response time (limiter clock),
    recorded while installed (by wrapping :meth:`mark_response_started`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: str) -> None:
        self.calls: list[tuple[int, float, float]] = []
        mark = _PermitBase.mark_response_started

        def recorded(permit: _PermitBase) -> None:
            mark(permit)
            if permit.model == model and permit.response_at is not None:
                self.calls.append((permit.priority, permit.granted_at, permit.response_at))

        monkeypatch.setattr(_PermitBase, "mark_response_started", recorded)

    def _of(self, priority: int | None) -> list[tuple[int, float, float]]:
        calls = [c for c in self.calls if priority is None or c[0] == priority]
        assert calls, f"no permit (priority {priority}) reached a response"
        return calls

    def share(self, period: float, priority: int | None = None) -> float:
        """The mean time in flight (grant to response) as a share of ``period``."""
        calls = self._of(priority)
        return sum(r - g for _, g, r in calls) / len(calls) / period

    def granted(self, start: float, end: float, priority: int | None = None) -> int:
        """How many permits were granted in ``[start, end)`` (limiter clock)."""
        return sum(1 for _, g, _ in self._of(priority) if start <= g < end)
