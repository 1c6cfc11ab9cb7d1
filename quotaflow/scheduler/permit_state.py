"""The life of a permit: granted -> sent -> settled, or granted -> released.

:class:`PermitState` is the pure life cycle: one object per grant, which the fast path builds
with one call; its fields are private. :class:`_PermitBase` adds the public read-only
properties and what the async :class:`~quotaflow.permit.Permit` and its generated sync twin
:class:`~quotaflow.permit.SyncPermit` share; they add the backend I/O.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from quotaflow.clock import Clock
from quotaflow.errors import ConfigError, PermitError
from quotaflow.limits import Limit, check_cost

if TYPE_CHECKING:
    from quotaflow.scheduler.gate import LaneGate

__all__ = ["PermitPhase", "PermitState", "_PermitBase", "bad_tokens"]

PermitPhase = Literal["granted", "sent", "settled", "released"]
SettleFn = Callable[[str, str, Mapping[str, int] | None, float, float], Any]
ReleaseFn = Callable[[str, str, float], Any]
SettleNowaitFn = Callable[[str, str, Mapping[str, int] | None, float, float], bool]


class PermitState:
    """The life of a permit: granted -> sent -> settled, or granted -> released. Pure.

    A plain class with ``__slots__``: one is built per grant, on the hot path.

    A grant of a fast lane (``quick``, the gate that granted it) keeps its lane lease number
    and input tokens; its lease id and its cost by metric are spelled out only when asked.
    """

    __slots__ = (
        "_actual",
        "_actual_tokens",
        "_clock",
        "_granted_at",
        "_id",
        "_lease",
        "_limits",
        "_metrics",
        "_model",
        "_phase",
        "_priority",
        "_quick",
        "_release_fn",
        "_response_at",
        "_scope",
        "_sent_at",
        "_settle_fn",
        "_settle_nowait",
        "_tokens",
        "_waited",
    )

    def __init__(
        self,
        id: str,
        model: str,
        scope: str,
        metrics: dict[str, int] | None,
        limits: tuple[Limit, ...],
        granted_at: float,
        waited: float,
        priority: int,
        clock: Clock,
        settle: SettleFn,
        release: ReleaseFn,
        settle_nowait: SettleNowaitFn | None = None,
        quick: LaneGate | None = None,
        lease: int = 0,
        tokens: int = 0,
    ) -> None:
        self._id = id  # "" for a lane grant until asked (see lease_id)
        self._model = model
        self._scope = scope
        self._metrics = metrics  # by metric; None for a lane grant: 1 request, ``tokens``
        self._limits = limits
        self._granted_at = granted_at
        self._waited = waited
        self._priority = priority
        self._clock = clock
        self._settle_fn = settle  # the backend's calls that end the grant
        self._release_fn = release
        # a backend's way to settle without waiting (e.g. queued to ride on its next call);
        # False: it cannot now, use ``settle``
        self._settle_nowait = settle_nowait
        self._quick = quick
        self._lease = lease
        self._tokens = tokens
        self._phase: PermitPhase = "granted"
        self._sent_at: float | None = None
        self._response_at: float | None = None
        # the real usage given to settle, by metric; input tokens only: ``_actual_tokens``
        self._actual: dict[str, int] | None = None
        self._actual_tokens = -1

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            f"a {type(self).__name__} cannot be copied or pickled: it is one grant of capacity; "
            "pass the permit itself, or acquire another"
        )

    def _lease_id(self) -> str:
        """The lease id in the backend."""
        if not self._id and self._quick is not None:
            self._id = self._quick.lane.lease_id(self._lease)
        return self._id

    def _cost(self) -> dict[str, int]:
        """The reserved amounts by metric (a new dict)."""
        if self._metrics is None:
            return {"requests": 1, "input_tokens": self._tokens}
        return dict(self._metrics)

    def _actual_cost(self) -> dict[str, int]:
        """The real usage given to settle, by metric (a new dict; empty until then)."""
        if self._actual is not None:
            return dict(self._actual)
        if self._actual_tokens >= 0:
            return {"input_tokens": self._actual_tokens}
        return {}

    def _describe(self) -> str:
        return (
            f"{self._lease_id()} model={self._model!r} phase={self._phase} "
            f"cost={self._cost()} waited={self._waited:.3f}s"
        )

    def _mark_sent_at(self, now: float) -> None:
        if self._phase == "settled" or self._phase == "released":
            raise PermitError(
                f"permit {self._lease_id()} is already {self._phase}; acquire a new one"
            )
        if self._sent_at is None:
            self._sent_at = now
        self._phase = "sent"

    def _mark_response_at(self, now: float) -> None:
        self._mark_sent_at(now)
        if self._response_at is None:
            self._response_at = now

    def _plan_settle(
        self, actual_metrics: Mapping[str, int], now: float
    ) -> tuple[dict[str, int] | None, float]:
        """The actual cost by limit name (``None``: as granted) and the anchor time."""
        if self._phase == "settled" or self._phase == "released":
            raise PermitError(
                f"permit {self._lease_id()} is already {self._phase}: settle() runs once per call"
            )
        actual_metrics = check_cost(actual_metrics)
        self._sent_at = self._sent_at if self._sent_at is not None else now
        self._phase = "settled"
        self._actual = dict(actual_metrics)
        at = self._response_at if self._response_at is not None else now
        if not actual_metrics:
            return None, at
        by_limit = {
            lim.name: actual_metrics[lim.metric]
            for lim in self._limits
            if lim.metric in actual_metrics
        }
        return by_limit, at

    def _plan_quick_settle(self, input_tokens: int | None, now: float) -> float | None:
        """:meth:`_plan_settle` for a lane grant settled with input tokens only (already checked
        by the permit's ``settle``: an int >= 0 or ``None``); returns the anchor time, or
        ``None`` if this settle needs the full way (it then raises or plans)."""
        if self._quick is None or self._phase == "settled" or self._phase == "released":
            return None
        if input_tokens is not None:
            self._actual_tokens = input_tokens
        if self._sent_at is None:
            self._sent_at = now
        self._phase = "settled"
        return self._response_at if self._response_at is not None else now

    def _plan_release(self) -> bool:
        """True if the lease must be returned (the call never reached the server)."""
        if self._phase == "settled" or self._phase == "released":
            return False
        if self._phase == "sent":
            raise PermitError(
                f"permit {self._lease_id()} was sent: a call that reached the server keeps its "
                "request count; use settle() instead of release()"
            )
        self._phase = "released"
        return True


def _on_drop(permit: _PermitBase) -> None:
    """A permit garbage-collected without settle/release: nothing may stay held for ever.

    Only for backends whose operations never block (memory): a finalizer must not do I/O. A
    remote backend's lease expires on its own (e.g. Redis, after ``lease_ttl``). A backend
    with a ``drop`` method (memory) is told through it: a finalizer can run anywhere, even
    where the backend's lock is held (see :meth:`~quotaflow.MemoryBackend.drop`).
    """
    backend = getattr(permit._release_fn, "__self__", None)
    if not getattr(backend, "nonblocking", False):
        return
    now = permit._clock.now()
    at: float | None = None
    if permit._phase == "granted":
        permit._phase = "released"
    elif permit._phase == "sent":
        permit._phase = "settled"
        at = permit._response_at if permit._response_at is not None else now
    else:
        return
    drop = getattr(backend, "drop", None)
    if drop is not None:
        drop(permit._scope, permit._lease_id(), at, now)
        return
    if at is None:
        result = permit._release_fn(permit._scope, permit._lease_id(), now)
    else:
        result = permit._settle_fn(permit._scope, permit._lease_id(), None, at, now)
    if inspect.iscoroutine(result):  # pragma: no cover - nonblocking backends are sync
        result.close()


def bad_tokens(input_tokens: object) -> ConfigError:
    """The error of a settle given something other than an amount (``"5"``, ``True``, ``-1``
    are refused, not converted)."""
    return ConfigError(
        f"input_tokens={input_tokens!r}: give the real input token count as an int >= 0 "
        "(usageMetadata.promptTokenCount), or None to keep the estimate"
    )


class _PermitBase(PermitState):
    """The state of one grant (:class:`~quotaflow.scheduler.permit_state.PermitState`) and the
    backend
    calls that end it."""

    __slots__ = ()

    def __del__(self) -> None:
        # cheaper than a weakref.finalize per permit on the hot path: a phase check at dealloc
        if self._phase == "granted" or self._phase == "sent":
            with contextlib.suppress(Exception):  # a finalizer must never raise
                _on_drop(self)

    @property
    def id(self) -> str:
        """The lease id in the backend."""
        return self._lease_id()

    @property
    def model(self) -> str:
        """The canonical model name."""
        return self._model

    @property
    def waited(self) -> float:
        """Seconds spent waiting for capacity."""
        return self._waited

    @property
    def granted_at(self) -> float:
        """When capacity was granted (the limiter clock's epoch seconds)."""
        return self._granted_at

    @property
    def priority(self) -> int:
        """The priority the request waited at."""
        return self._priority

    @property
    def cost(self) -> dict[str, int]:
        """The reserved amounts by metric (``requests``, ``input_tokens``, ...)."""
        return self._cost()

    @property
    def actual(self) -> dict[str, int]:
        """The real usage given to :meth:`settle` (empty until then)."""
        return self._actual_cost()

    @property
    def phase(self) -> str:
        """``granted``, ``sent``, ``settled`` or ``released``."""
        return self._phase

    @property
    def sent_at(self) -> float | None:
        """When the call was sent, if it was."""
        return self._sent_at

    @property
    def response_at(self) -> float | None:
        """When the response began, if recorded."""
        return self._response_at

    def mark_sent(self) -> None:
        """The call is leaving now: from here on it keeps its request count even if it fails."""
        self._mark_sent_at(self._clock.now())

    def mark_response_started(self) -> None:
        """The response began now: the server counted the call no later than this moment."""
        self._mark_response_at(self._clock.now())

    def _settled_in_lane(self, input_tokens: int | None, metrics: Mapping[str, int]) -> bool:
        """Settle a fast-lane grant given other metrics too (a transport's ``usd_micros``) in
        its lane, if none of this permit's limits meters them: the buckets end as the general
        way leaves them, and :attr:`actual` shows them. ``False``: take the general way."""
        gate = self._quick
        if gate is None:
            return False
        if self._phase == "settled" or self._phase == "released":
            return False  # the general way raises the PermitError
        for lim in self._limits:
            if lim.metric in metrics:
                return False
        actual = check_cost(metrics)  # a bad amount raises as the general way would
        if not gate.settle(self, input_tokens):
            return False
        if input_tokens is not None:
            actual["input_tokens"] = input_tokens
        self._actual = actual
        return True

    def _settle_args(self, input_tokens: int | None, metrics: Mapping[str, int]) -> tuple[Any, ...]:
        actual = dict(metrics)
        if input_tokens is not None:
            actual["input_tokens"] = input_tokens
        now = self._clock.now()  # one reading: the anchor (if no response time) and "now"
        by_limit, at = self._plan_settle(actual, now)
        return (self._scope, self._lease_id(), by_limit, at, now)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._describe()}>"
