"""What :meth:`Limiter.status <quotaflow.Limiter.status>` reports: one
:class:`DimensionStatus` per limit of a model."""

from __future__ import annotations

from dataclasses import dataclass, field

from quotaflow.limits import Limit
from quotaflow.quotas.learned import Origin
from quotaflow.scheduler.buckets import Level

__all__ = ["DimensionStatus"]


@dataclass(frozen=True)
class DimensionStatus:
    """One limit of a model, as :meth:`Limiter.status` reports it."""

    name: str
    metric: str
    period: float
    limit: int
    used: int
    free: int
    in_flight: int
    next_return: float | None
    paused_until: float | None
    origin: Origin = field(default_factory=lambda: Origin("configured"))

    @classmethod
    def of(cls, lim: Limit, level: Level, origin: Origin | None = None) -> DimensionStatus:
        return cls(
            lim.name,
            lim.metric,
            lim.period,
            level.limit,
            level.used,
            level.free,
            level.in_flight,
            level.next_return,
            level.paused_until,
            origin or Origin("configured"),
        )
