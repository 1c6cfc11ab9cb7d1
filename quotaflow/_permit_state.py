"""The life of a permit, pure: granted -> sent -> settled, or granted -> released."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from quotaflow.errors import PermitError
from quotaflow.limits import Limit, check_cost

if TYPE_CHECKING:
    from quotaflow._gate import LaneGate

__all__ = ["PermitPhase", "PermitState"]

PermitPhase = Literal["granted", "sent", "settled", "released"]


class PermitState:
    """The life of a permit: granted -> sent -> settled, or granted -> released. Pure.

    A plain class with its own ``__init__`` (not a dataclass): it is built on the hot path, and
    compiled with mypyc a written ``__init__`` is native while a dataclass's is not.
    """

    __slots__ = (
        "actual",
        "granted_at",
        "id",
        "limits",
        "metrics",
        "model",
        "phase",
        "priority",
        "quick",
        "response_at",
        "scope",
        "sent_at",
        "waited",
    )

    def __init__(
        self,
        id: str,
        model: str,
        scope: str,
        metrics: dict[str, int],
        limits: tuple[Limit, ...],
        granted_at: float,
        waited: float,
        priority: int,
        quick: LaneGate | None,
    ) -> None:
        self.id = id
        self.model = model
        self.scope = scope
        self.metrics = metrics  # by metric
        self.limits = limits
        self.granted_at = granted_at
        self.waited = waited
        self.priority = priority
        # for grants of a fast lane: the gate that granted it (it settles them the quick way)
        self.quick = quick
        self.phase: PermitPhase = "granted"
        self.sent_at: float | None = None
        self.response_at: float | None = None
        self.actual: dict[str, int] | None = None  # the real usage given to settle, by metric

    def __repr__(self) -> str:
        return (
            f"PermitState(id={self.id!r}, model={self.model!r}, phase={self.phase!r}, "
            f"metrics={self.metrics!r}, granted_at={self.granted_at!r})"
        )

    def mark_sent(self, now: float) -> None:
        if self.phase in ("settled", "released"):
            raise PermitError(f"permit {self.id} is already {self.phase}; acquire a new one")
        if self.sent_at is None:
            self.sent_at = now
        self.phase = "sent"

    def mark_response(self, now: float) -> None:
        self.mark_sent(now)
        if self.response_at is None:
            self.response_at = now

    def plan_settle(
        self, actual_metrics: Mapping[str, int], now: float
    ) -> tuple[dict[str, int] | None, float]:
        """The actual cost by limit name (``None``: as granted) and the anchor time."""
        if self.phase in ("settled", "released"):
            raise PermitError(
                f"permit {self.id} is already {self.phase}: settle() runs once per call"
            )
        actual_metrics = check_cost(actual_metrics)
        self.sent_at = self.sent_at if self.sent_at is not None else now
        self.phase = "settled"
        self.actual = dict(actual_metrics)
        at = self.response_at if self.response_at is not None else now
        if not actual_metrics:
            return None, at
        by_limit = {
            lim.name: actual_metrics[lim.metric]
            for lim in self.limits
            if lim.metric in actual_metrics
        }
        return by_limit, at

    def plan_quick_settle(self, input_tokens: int | None, now: float) -> float | None:
        """:meth:`plan_settle` for a lane grant settled with input tokens only (already checked
        by the permit's ``settle``: an int >= 0 or ``None``); returns the anchor time, or
        ``None`` if this settle needs the full way (it then raises or plans)."""
        if self.quick is None or self.phase in ("settled", "released"):
            return None
        if input_tokens is not None:
            self.actual = {"input_tokens": input_tokens}
        if self.sent_at is None:
            self.sent_at = now
        self.phase = "settled"
        return self.response_at if self.response_at is not None else now

    def plan_release(self) -> bool:
        """True if the lease must be returned (the call never reached the server)."""
        if self.phase in ("settled", "released"):
            return False
        if self.phase == "sent":
            raise PermitError(
                f"permit {self.id} was sent: a call that reached the server keeps its request "
                "count; use settle() instead of release()"
            )
        self.phase = "released"
        return True
