"""Shadow mode: the transports decide every call as usual, record it, and let it through.

``Limiter(..., mode="shadow")`` asks the limiter with ``acquire_nowait`` instead of waiting: a
grant is kept as in enforcing mode (so the limits see the traffic the limiter would have
admitted), and a call that would have waited or been refused goes out at once with a
:class:`ShadowPermit` that holds nothing, its :class:`ShadowDecision` recorded in metrics
(``quotaflow.wait.duration`` and ``quotaflow.refusals`` with ``quotaflow.mode=shadow``), on
``response.extensions["quotaflow"].shadow`` and in the agents' audit log (``would_wait``,
``would_refuse``).

A call let through without room is not charged to the limits (the limiter holds only what it
granted), so under sustained overload the recorded waits are the waits of calls arriving at
the limiter's state: each is the time until room for that call, not its place in a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quotaflow.errors import (
    CannotFitError,
    ConfigError,
    QuotaError,
    QuotaExhaustedError,
    QuotaTimeoutError,
    WouldBlockError,
)
from quotaflow.observe import metrics

__all__ = ["ShadowDecision", "ShadowPermit", "check_mode"]

MODES = ("enforce", "shadow")


def check_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`MODES`, else a :class:`ConfigError` naming them."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: give 'enforce' (the default) or 'shadow'")
    return str(mode)


def refusal_reason(exc: BaseException) -> str:
    """The metric's ``reason`` of a local refusal."""
    if isinstance(exc, QuotaTimeoutError):
        return "timeout"
    if isinstance(exc, CannotFitError):
        return "cannot_fit"
    if isinstance(exc, QuotaExhaustedError):
        return "exhausted"
    if isinstance(exc, WouldBlockError):
        return "would_block"
    return type(exc).__name__


@dataclass(frozen=True)
class ShadowDecision:
    """What the limiter would have done with one call in enforcing mode.

    Attributes:
        model: the model (or the spend scope) asked.
        outcome: ``wait`` or ``refuse`` (a call granted at once carries no decision).
        would_wait: seconds the call would have waited (``None`` when refused or when no
            return time is known).
        dimension: the dimension that would have made it wait or refused it.
        reason: for ``refuse``: ``timeout``, ``cannot_fit``, ``exhausted``.
    """

    model: str
    outcome: str
    would_wait: float | None
    dimension: str = ""
    reason: str = ""


class _NoWait:
    """The awaitable of a shadow permit's settle and release: nothing to do."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


class ShadowPermit:
    """Stands in for a permit the limiter did not grant: holds nothing, settles to nothing."""

    __slots__ = ("model", "priority", "shadow")

    waited = 0.0

    def __init__(self, model: str, priority: int, decision: ShadowDecision) -> None:
        self.model = model
        self.priority = priority
        self.shadow = decision

    @property
    def id(self) -> str:
        return ""

    def mark_sent(self) -> None:
        """Nothing is held."""

    def mark_response_started(self) -> None:
        """Nothing is held."""

    def settle(self, **_amounts: Any) -> Any:
        return _NoWait()

    def release(self) -> Any:
        return _NoWait()


def _priority(lim: Any, effect: Any) -> int:
    from quotaflow.context import priority_value

    p = effect.priority if effect.priority is not None else lim._core.default_priority
    try:
        return priority_value(p)
    except Exception:  # a bad priority is the limiter's to name (acquire_nowait raised it)
        return 0


def _decide(lim: Any, effect: Any, exc: QuotaError) -> ShadowPermit:
    now = lim.clock.now()
    dim = getattr(exc, "dimension", "") or ""
    if isinstance(exc, WouldBlockError):
        wait = exc.retry_after
        if effect.deadline is not None and wait is not None and now + wait > effect.deadline:
            decision = ShadowDecision(effect.model, "refuse", None, dim, "timeout")
        else:
            decision = ShadowDecision(effect.model, "wait", wait, dim)
    else:
        decision = ShadowDecision(effect.model, "refuse", None, dim, refusal_reason(exc))
    prio = _priority(lim, effect)
    if metrics.ON:
        if decision.outcome == "wait" and decision.would_wait is not None:
            metrics.would_wait(effect.model, decision.would_wait, dim, prio, effect.agent)
        elif decision.outcome == "refuse":
            metrics.refused(effect.model, decision.reason, effect.agent, "shadow")
    return ShadowPermit(effect.model, prio, decision)


def _granted(lim: Any, effect: Any, permit: Any) -> Any:
    if metrics.ON:
        metrics.granted(effect.model, permit, effect.agent, "shadow", lim)
    return permit


async def acquire_async(lim: Any, effect: Any) -> Any:
    """Shadow mode's ``Acquire`` for the async transports."""
    try:
        permit = await lim.acquire_nowait(
            effect.model, effect.tokens, cost=effect.cost, priority=effect.priority,
            agent=effect.agent,
        )  # fmt: skip
    except QuotaError as exc:
        return _decide(lim, effect, exc)
    return _granted(lim, effect, permit)


def acquire_sync(lim: Any, effect: Any) -> Any:
    """Shadow mode's ``Acquire`` for the sync transports."""
    try:
        permit = lim.acquire_nowait(
            effect.model, effect.tokens, cost=effect.cost, priority=effect.priority,
            agent=effect.agent,
        )  # fmt: skip
    except QuotaError as exc:
        return _decide(lim, effect, exc)
    return _granted(lim, effect, permit)


def decisions_of(permit: Any) -> list[ShadowDecision]:
    """The shadow decisions a permit (or a model+spend pair of permits) carries."""
    out: list[ShadowDecision] = []
    for p in (permit, getattr(permit, "model", None), getattr(permit, "spend", None)):
        d = getattr(p, "shadow", None)
        if isinstance(d, ShadowDecision) and d not in out:
            out.append(d)
    return out
