"""Permits: what ``acquire`` returns. Granted -> sent -> settled, or granted -> released.

The async :class:`Permit` and the sync :class:`SyncPermit` are subclasses of one
:class:`~quotaflow._permit_state.PermitState` (the pure life cycle); they add the backend I/O.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from quotaflow._permit_state import PermitState
from quotaflow.errors import ConfigError
from quotaflow.limits import check_cost

if TYPE_CHECKING:
    pass

__all__ = ["Permit", "SyncPermit"]


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


def _bad_tokens(input_tokens: object) -> ConfigError:
    """The error of a settle given something other than an amount (``"5"``, ``True``, ``-1``
    are refused, not converted)."""
    return ConfigError(
        f"input_tokens={input_tokens!r}: give the real input token count as an int >= 0 "
        "(usageMetadata.promptTokenCount), or None to keep the estimate"
    )


class _PermitBase(PermitState):
    """The state of one grant (:class:`~quotaflow._permit_state.PermitState`) and the backend
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


class Permit(_PermitBase):
    """A grant of capacity for one call (async).

    Use it as ``async with limiter.acquire(...) as permit:``. Mark the call as sent just before
    it leaves (:meth:`mark_sent`), then :meth:`settle` with the real usage. Leaving the block
    settles with the estimate if the call was sent (or the block ended normally), and releases
    everything if the block failed before sending.
    """

    __slots__ = ()

    async def settle(self, input_tokens: int | None = None, **metrics: int) -> None:
        """Replace the estimate with the real usage: less refunds, more charges. Once only.

        ``await permit.settle(...)``. A backend across a network (Redis) writes the settle where
        no cancellation of the caller reaches it: what the server counted is written down.

        Args:
            input_tokens: the real input tokens (``usageMetadata.promptTokenCount``).
            **metrics: real amounts of other metrics (e.g. ``images=2``).
        """
        left = self._settle_now(input_tokens, metrics)
        if left is not None:
            with anyio.CancelScope(shield=True):
                await left

    async def release(self) -> None:
        """Return everything: the call never reached the server. No-op once settled.

        ``await permit.release()``; as :meth:`settle`, a backend's write is shielded from the
        caller's cancellation."""
        left = self._release_now()
        if left is not None:
            with anyio.CancelScope(shield=True):
                await left

    def _settle_now(self, input_tokens: int | None, metrics: Mapping[str, int]) -> Any:
        """What :meth:`settle` does at once (checks, plans, the lane or the backend's call);
        returns the backend's write left to await, or ``None``."""
        if input_tokens is not None and (type(input_tokens) is not int or input_tokens < 0):
            raise _bad_tokens(input_tokens)
        gate = self._quick
        if gate is not None:
            if not metrics:
                if gate.settle(self, input_tokens):
                    return None
            elif self._settled_in_lane(input_tokens, metrics):
                return None
        args = self._settle_args(input_tokens, metrics)
        if self._settle_nowait is not None and self._settle_nowait(*args):
            return None
        return self._settle_fn(*args)

    def _release_now(self) -> Any:
        """What :meth:`release` does at once; returns the backend's write left, or ``None``."""
        if self._plan_release():
            return self._release_fn(self._scope, self._lease_id(), self._clock.now())
        return None

    async def _exit(self, failed: bool) -> None:
        if self._phase == "settled" or self._phase == "released":
            return
        if failed and self._phase == "granted":
            await self.release()
        else:
            await self.settle()


class SyncPermit(_PermitBase):
    """The sync twin of :class:`Permit`, for threaded code."""

    __slots__ = ()

    def settle(self, input_tokens: int | None = None, **metrics: int) -> None:
        """Replace the estimate with the real usage: less refunds, more charges. Once only."""
        if input_tokens is not None and (type(input_tokens) is not int or input_tokens < 0):
            raise _bad_tokens(input_tokens)
        gate = self._quick
        if gate is not None:
            if not metrics:
                if gate.settle(self, input_tokens):
                    return
            elif self._settled_in_lane(input_tokens, metrics):
                return
        self._settle_fn(*self._settle_args(input_tokens, metrics))

    def release(self) -> None:
        """Return everything: the call never reached the server. No-op once settled."""
        if self._plan_release():
            self._release_fn(self._scope, self._lease_id(), self._clock.now())

    def _exit(self, failed: bool) -> None:
        if self._phase == "settled" or self._phase == "released":
            return
        if failed and self._phase == "granted":
            self.release()
        else:
            self.settle()
