"""Fault injection: forced responses queued per model, and seeded random faults. Pure."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._config import FaultConfig

__all__ = ["FaultInjector", "Injection"]

_SERVER_ERRORS = (500, 503, 504)


@dataclass(frozen=True)
class Injection:
    """A forced response for the next request(s) of a model.

    Attributes:
        status: 429, 500, 503 or 504.
        violations: For a 429, the violated dimensions (``rpm``, ``tpm``, ``rpd``, ``tpd``), one
            QuotaFailure violation each.
        retry_delay: For a 429, the ``retryDelay`` in seconds (default: the period).
        body: Send this JSON body verbatim instead of the generated one.
        project: Only requests of this project are affected (default: any).

    An injected 429 costs nothing. An injected 5xx is charged like any admitted request that
    fails, if the quota would have admitted it.
    """

    status: int = 429
    violations: tuple[str, ...] = ("rpm",)
    retry_delay: float | None = None
    body: dict[str, Any] | None = None
    project: str | None = None

    def __post_init__(self) -> None:
        if self.status not in (429, *_SERVER_ERRORS):
            raise ValueError(f"cannot inject status {self.status}; use 429, 500, 503 or 504")
        bad = set(self.violations) - {"rpm", "tpm", "rpd", "tpd"}
        if bad or not self.violations:
            raise ValueError(f"violations must be among rpm, tpm, rpd, tpd; got {self.violations}")


class FaultInjector:
    """Holds forced responses and draws random faults and latency.

    Args:
        config: Rates, latency, jitter and seed.
    """

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._queues: dict[str, deque[Injection]] = {}

    def reset(self) -> None:
        """Drop queued injections and re-seed the random generator."""
        self._queues.clear()
        self._rng = random.Random(self._config.seed)

    def inject(self, model: str, injection: Injection, count: int = 1) -> None:
        """Force the next ``count`` responses of ``model`` to be ``injection``."""
        if count < 1:
            raise ValueError("count must be at least 1")
        self._queues.setdefault(model.removeprefix("models/"), deque()).extend([injection] * count)

    def take(self, model: str, project: str) -> Injection | None:
        """Pop the next injection for ``model`` that applies to ``project``."""
        queue = self._queues.get(model)
        if not queue:
            return None
        for i, injection in enumerate(queue):
            if injection.project in (None, project):
                del queue[i]
                return injection
        return None

    def pending(self) -> dict[str, int]:
        """Number of queued injections per model."""
        return {m: len(q) for m, q in sorted(self._queues.items()) if q}

    def roll(self) -> int | None:
        """Draw a random server error code (500, 503, 504) or None."""
        c = self._config
        rates = (c.error_rate_500, c.error_rate_503, c.error_rate_504)
        if not any(rates):
            return None
        x = self._rng.random()
        for code, rate in zip(_SERVER_ERRORS, rates, strict=True):
            if x < rate:
                return code
            x -= rate
        return None

    def latency(self) -> float:
        """Draw the delay of one response."""
        c = self._config
        jitter = self._rng.uniform(0.0, c.jitter_seconds) if c.jitter_seconds else 0.0
        return c.latency_seconds + jitter
