"""The typed error of a refused request: what :meth:`LimiterCore.error
<quotaflow.scheduler.core.LimiterCore.error>` raises for a backend's refusal, with the message
that names the limit and what to do."""

from __future__ import annotations

import math

from quotaflow.backends.base import Decision
from quotaflow.errors import (
    CannotFitError,
    QuotaError,
    QuotaExhaustedError,
    QuotaTimeoutError,
    WouldBlockError,
)

__all__ = ["refusal_error"]


def refusal_error(decision: Decision, model: str, now: float) -> QuotaError:
    """The typed error for a refusal of a call to ``model`` (``now``: the limiter's clock)."""
    dim = decision.dimension
    at = decision.at
    retry = None if at is None or math.isinf(at) else max(0.0, at - now)
    kw: dict[str, object] = {"model": model, "dimension": dim, "retry_after": retry}
    if decision.reason == "cannot_fit":
        over = decision.requested - decision.limit
        return CannotFitError(
            f"{model}: the request needs {decision.requested} on {dim!r} but the limit is "
            f"{decision.limit} ({over} over); it can never be admitted. Split the request "
            "or raise the limit (a higher tier, or overrides=...).",
            requested=decision.requested,
            limit=decision.limit,
            **kw,
        )
    if decision.reason == "exhausted":
        return QuotaExhaustedError(
            f"{model}: the {dim!r} quota ({decision.limit}) is spent until it resets "
            f"in {retry:.0f}s; retry after the reset, use another model, or raise the tier.",
            resets_at=at,
            **kw,  # type: ignore[arg-type]
        )
    if decision.reason == "timeout":
        when = "" if retry is None else f" (capacity on {dim!r} expected in {retry:.3f}s)"
        return QuotaTimeoutError(
            f"{model}: no room before the deadline{when}; allow a longer timeout=, "
            "raise the priority, or shed load.",
            resets_at=at,
            **kw,  # type: ignore[arg-type]
        )
    when = "only after a running call ends" if retry is None else f"in {retry:.3f}s"
    return WouldBlockError(
        f"{model}: no room right now on {dim or 'the line'!r}; try again {when}.",
        resets_at=at,
        **kw,  # type: ignore[arg-type]
    )
