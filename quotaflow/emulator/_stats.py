"""Observability: counters and an exact admission log per model. Pure, no I/O.

The maxima are computed from the whole admission log with a two-pointer sweep: for each
admission, the amount admitted in the rolling window ``(t - period, t]`` ending at it. The
largest window sum always ends at an admission, so this is the exact maximum over every window
of the run — the number to compare with a limit to prove a client never went over.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ._errors import JSON

__all__ = ["Admission", "StatsRecorder", "max_in_window"]


@dataclass(frozen=True)
class Admission:
    """One admitted (charged) request.

    Attributes:
        time: Epoch seconds of the admission.
        project: Project charged.
        model: Model charged.
        requests: Request cost (N for a batch of N embeddings).
        tokens: Input tokens charged.
    """

    time: float
    project: str
    model: str
    requests: int
    tokens: int


def max_in_window(times: list[float], amounts: list[int], period: float) -> int:
    """Largest sum of ``amounts`` in any window ``(t - period, t]``; ``times`` sorted.

    Example:
        >>> max_in_window([0.0, 0.5, 1.0, 1.2], [1, 1, 1, 1], 1.0)
        3
    """
    best = total = left = 0
    for right, t in enumerate(times):
        total += amounts[right]
        while times[left] <= t - period:
            total -= amounts[left]
            left += 1
        best = max(best, total)
    return best


@dataclass
class _Counters:
    received: int = 0
    admitted: int = 0
    rejected: int = 0
    injected: int = 0
    failed: int = 0
    requests_admitted: int = 0
    tokens_admitted: int = 0
    rejected_by_dimension: Counter[str] = field(default_factory=Counter)
    count_received: int = 0
    count_admitted: int = 0
    count_rejected: int = 0


class StatsRecorder:
    """Counts what happened to every request, per model."""

    def __init__(self) -> None:
        self._counters: dict[str, _Counters] = {}
        self._log: list[Admission] = []

    def reset(self) -> None:
        """Forget everything."""
        self._counters.clear()
        self._log.clear()

    def _c(self, model: str) -> _Counters:
        return self._counters.setdefault(model, _Counters())

    def received(self, model: str, *, count: bool = False) -> None:
        """A request for ``model`` arrived (``count``: a countTokens request)."""
        c = self._c(model)
        if count:
            c.count_received += 1
        else:
            c.received += 1

    def rejected(self, model: str, dimensions: list[str], *, count: bool = False) -> None:
        """A request was refused with 429 for ``dimensions`` (or ``["injected"]``)."""
        c = self._c(model)
        if count:
            c.count_rejected += 1
            return
        c.rejected += 1
        if dimensions == ["injected"]:
            c.injected += 1
        c.rejected_by_dimension.update(dimensions)

    def admitted(self, admission: Admission) -> None:
        """A generate/embed request was admitted and charged."""
        c = self._c(admission.model)
        c.admitted += 1
        c.requests_admitted += admission.requests
        c.tokens_admitted += admission.tokens
        self._log.append(admission)

    def count_admitted(self, model: str) -> None:
        """A countTokens request was admitted."""
        self._c(model).count_admitted += 1

    def failed(self, model: str) -> None:
        """An admitted request ended in an (injected) server error."""
        self._c(model).failed += 1

    def snapshot(self, period: float, *, include_log: bool = False) -> JSON:
        """Everything as a JSON-ready dict (see the README for the shape)."""
        models: JSON = {}
        for name, c in sorted(self._counters.items()):
            log = [a for a in self._log if a.model == name]
            entry: JSON = {
                "received": c.received,
                "admitted": c.admitted,
                "rejected": c.rejected,
                "rejected_by_dimension": dict(sorted(c.rejected_by_dimension.items())),
                "injected_rejections": c.injected,
                "failed": c.failed,
                "requests_admitted": c.requests_admitted,
                "tokens_admitted": c.tokens_admitted,
                **_maxima(log, period),
                "count_tokens": {
                    "received": c.count_received,
                    "admitted": c.count_admitted,
                    "rejected": c.count_rejected,
                },
                "projects": {
                    project: _maxima([a for a in log if a.project == project], period)
                    for project in sorted({a.project for a in log})
                },
            }
            if include_log:
                entry["log"] = [
                    {
                        "time": a.time,
                        "project": a.project,
                        "requests": a.requests,
                        "tokens": a.tokens,
                    }
                    for a in log
                ]
            models[name] = entry
        return {"minute_seconds": period, "models": models}


def _maxima(log: list[Admission], period: float) -> JSON:
    ordered = sorted(log, key=lambda a: a.time)
    times = [a.time for a in ordered]
    return {
        "max_requests_in_window": max_in_window(times, [a.requests for a in ordered], period),
        "max_input_tokens_in_window": max_in_window(times, [a.tokens for a in ordered], period),
    }
