"""The fast path of ``acquire`` and ``settle``: a limiter's gate into a scope's fast lane.

A :class:`LaneGate` belongs to one limiter and one spelling of a model. When nobody waits, it
grants a plain request (one request, its input tokens) through the backend's
:class:`~quotaflow.scheduler.lane.FastLane` with a few integer steps under the backend's mutex, and
settles it the same way. Anything else (a cost of other metrics, a
lane that is closed or too small, a changed set of limits) returns ``None`` or ``False`` and
the caller takes the general way, which makes the same decision: the lane only answers when
the exact rule would answer the same.

``Limiter.acquire`` and ``SyncLimiter.acquire`` try their model's gate first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar

from quotaflow.clock import Clock, SystemClock
from quotaflow.context import _priority
from quotaflow.context import priority_value as _priority_value
from quotaflow.limits import Limit
from quotaflow.scheduler.lane import FastLane
from quotaflow.scheduler.permit_state import PermitState

if TYPE_CHECKING:
    from quotaflow.permit import _PermitBase

__all__ = ["LaneGate"]

_P = TypeVar("_P", bound="_PermitBase")


class LaneGate:
    """One limiter's way into a scope's fast lane, for one spelling of a model."""

    def __init__(
        self,
        gates: dict[str, LaneGate],
        model: str,
        key: str,
        canonical: str,
        limits: tuple[Limit, ...],
        lane: FastLane,
        backend: Any,
        clock: Clock,
        default_priority: int,
    ) -> None:
        self.gates = gates  # the limiter's gates by model spelling: a stale gate leaves it
        self.model = model
        self.key = key
        self.canonical = canonical
        self.limits = limits
        self.lane = lane
        self.version = lane.version
        # the backend's mutex (a MemoryBackend.Mutex), called without a lookup per call; its
        # unlock also does what was deferred while it was held (a lock with only take/give:
        # give it back)
        lock = backend.lock
        self.lock_acquire: Callable[[], Any] = lock.take
        self.unlock: Callable[[], None] = getattr(lock, "unlock", None) or (lambda: lock.give(None))
        self.clock = clock
        # the system clock, read without a method call (the same sum as SystemClock.now)
        self.system = isinstance(clock, SystemClock)
        self.wall0 = clock._wall0 if isinstance(clock, SystemClock) else 0.0
        self.mono0 = clock._mono0 if isinstance(clock, SystemClock) else 0.0
        self.default_priority = default_priority
        self.settle_fn: Callable[..., Any] = backend.settle
        self.release_fn: Callable[..., Any] = backend.release
        self.settle_tokens: Callable[[str, str, int | None, float, float], None] = (
            backend.settle_tokens
        )

    def now(self) -> float:
        if self.system:
            return self.wall0 + (monotonic() - self.mono0)
        return self.clock.now()

    def grant(
        self,
        kind: type[_P],
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
        deadline: float | None,
    ) -> _P | None:
        """A permit of ``kind`` (:class:`~quotaflow.permit.Permit` or
        :class:`~quotaflow.permit.SyncPermit`) if the lane grants the request at once, else
        ``None`` (the full way).

        Only plain requests: one request (``cost`` ``None`` or ``{"requests": 1}``, the
        transports' form) and ``tokens`` input tokens. Where nobody waits and the lane's bounds
        say it fits, the exact rule would grant it too, so neither priority nor a deadline can
        change the outcome; bad input (a ``"10"``, a ``True``, a NaN) goes the full way, which
        names the error.
        """
        if cost is not None and not (
            isinstance(cost, dict)
            and len(cost) == 1
            and type(cost.get("requests")) is int
            and cost["requests"] == 1
        ):
            return None
        if type(tokens) is not int or tokens < 0:
            return None
        if timeout is not None and not (
            (type(timeout) is float or type(timeout) is int) and timeout >= 0
        ):
            return None
        if deadline is not None and (
            (type(deadline) is not float and type(deadline) is not int) or deadline != deadline
        ):
            return None  # not a number, or NaN: the full way names it
        lane = self.lane
        if lane.version != self.version:  # the scope's limits changed: look again
            if self.gates.get(self.model) is self:
                del self.gates[self.model]
            return None
        if priority is None:
            prio = _priority.get()
            if prio is None:
                prio = self.default_priority
        elif type(priority) is int:
            prio = priority
        elif isinstance(priority, str):
            prio = _priority_value(priority)  # raises as the full way would
        else:
            return None  # a bad value: the full way names it
        now = self.wall0 + (monotonic() - self.mono0) if self.system else self.clock.now()
        self.lock_acquire()
        try:
            lease = lane.take(tokens, now, self.version)
        finally:
            self.unlock()
        if not lease:
            return None
        return kind(
            "",
            self.canonical,
            self.key,
            None,
            self.limits,
            now,
            0.0,
            prio,
            self.clock,
            self.settle_fn,
            self.release_fn,
            None,
            self,
            lease,
            tokens,
        )

    def settle(self, state: PermitState, input_tokens: int | None) -> bool:
        """Settle a grant of this gate with its real input tokens (``None``: as granted);
        ``False``: this settle takes the general way (which raises or plans it)."""
        now = self.wall0 + (monotonic() - self.mono0) if self.system else self.clock.now()
        at = state._plan_quick_settle(input_tokens, now)
        if at is None:
            return False
        self.lock_acquire()
        try:
            done = self.lane.settle(state._lease, None, input_tokens, at, now)
        finally:
            self.unlock()
        if not done:  # the lane closed since: the backend writes it into the buckets
            self.settle_tokens(self.key, state._lease_id(), input_tokens, at, now)
        return True
