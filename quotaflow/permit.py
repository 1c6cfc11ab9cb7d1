"""Permits: what ``acquire`` returns. Granted -> sent -> settled, or granted -> released.

The async :class:`Permit` and the sync :class:`SyncPermit` are thin shells over one
:class:`~quotaflow._permit_state.PermitState`; they only do the backend I/O.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, overload

import anyio

from quotaflow._permit_state import PermitState
from quotaflow.clock import Clock
from quotaflow.errors import ConfigError

__all__ = ["Permit", "SyncPermit"]

_SettleFn = Callable[[str, str, Mapping[str, int] | None, float, float], Any]
_ReleaseFn = Callable[[str, str, float], Any]


def _on_drop(state: PermitState, clock: Clock, settle: _SettleFn, release: _ReleaseFn) -> None:
    """A permit garbage-collected without settle/release: nothing may stay held for ever.

    Only for backends whose operations never block (memory): a finalizer must not do I/O. A
    remote backend's lease expires on its own (e.g. Redis, after ``lease_ttl``).
    """
    if not getattr(getattr(release, "__self__", None), "nonblocking", False):
        return
    now = clock.now()
    if state.phase == "granted":
        state.phase = "released"
        result = release(state.scope, state.id, now)
    elif state.phase == "sent":
        state.phase = "settled"
        at = state.response_at if state.response_at is not None else now
        result = settle(state.scope, state.id, None, at, now)
    else:
        return
    if inspect.iscoroutine(result):  # pragma: no cover - nonblocking backends are sync
        result.close()


def _check_tokens(input_tokens: object) -> int | None:
    """``input_tokens`` as an amount, or the ConfigError naming it. The settle methods take it as
    ``object`` (their overloads say ``int | None``): a compiled build would otherwise check and
    convert it before this runs (a TypeError for ``"5"``, 1 for ``True``)."""
    if input_tokens is None:
        return None
    if type(input_tokens) is not int or not isinstance(input_tokens, int) or input_tokens < 0:
        raise ConfigError(
            f"input_tokens={input_tokens!r}: give the real input token count as an int >= 0 "
            "(usageMetadata.promptTokenCount), or None to keep the estimate"
        )
    return input_tokens


class _PermitBase:
    __slots__ = ("_clock", "_release_fn", "_settle_fn", "_settle_nowait", "_state")

    def __init__(
        self,
        state: PermitState,
        clock: Clock,
        settle: _SettleFn,
        release: _ReleaseFn,
        settle_nowait: Callable[[str, str, Mapping[str, int] | None, float, float], bool]
        | None = None,
    ) -> None:
        self._state = state
        self._clock = clock
        self._settle_fn = settle
        self._release_fn = release
        # a backend's way to settle without waiting (e.g. queued to ride on its next call);
        # False: it cannot now, use ``settle``
        self._settle_nowait = settle_nowait

    def __del__(self) -> None:
        # cheaper than a weakref.finalize per permit on the hot path: a phase check at dealloc
        if self._state.phase in ("granted", "sent"):
            with contextlib.suppress(Exception):  # a finalizer must never raise
                _on_drop(self._state, self._clock, self._settle_fn, self._release_fn)

    @property
    def id(self) -> str:
        """The lease id in the backend."""
        return self._state.id

    @property
    def model(self) -> str:
        """The canonical model name."""
        return self._state.model

    @property
    def waited(self) -> float:
        """Seconds spent waiting for capacity."""
        return self._state.waited

    @property
    def granted_at(self) -> float:
        """When capacity was granted (the limiter clock's epoch seconds)."""
        return self._state.granted_at

    @property
    def priority(self) -> int:
        """The priority the request waited at."""
        return self._state.priority

    @property
    def cost(self) -> dict[str, int]:
        """The reserved amounts by metric (``requests``, ``input_tokens``, ...)."""
        return dict(self._state.metrics)

    @property
    def actual(self) -> dict[str, int]:
        """The real usage given to :meth:`settle` (empty until then)."""
        return dict(self._state.actual or {})

    @property
    def phase(self) -> str:
        """``granted``, ``sent``, ``settled`` or ``released``."""
        return self._state.phase

    @property
    def sent_at(self) -> float | None:
        """When the call was sent, if it was."""
        return self._state.sent_at

    @property
    def response_at(self) -> float | None:
        """When the response began, if recorded."""
        return self._state.response_at

    def mark_sent(self) -> None:
        """The call is leaving now: from here on it keeps its request count even if it fails."""
        self._state.mark_sent(self._clock.now())

    def mark_response_started(self) -> None:
        """The response began now: the server counted the call no later than this moment."""
        self._state.mark_response(self._clock.now())

    def _settled_quickly(self, input_tokens: int | None) -> bool:
        """Settle a fast-lane grant the quick way (it never blocks); ``False``: this settle
        takes the general way."""
        gate = self._state.quick
        return gate is not None and gate.settle(self._state, input_tokens)

    def _settle_args(self, input_tokens: int | None, metrics: Mapping[str, int]) -> tuple[Any, ...]:
        actual = dict(metrics)
        if input_tokens is not None:
            actual["input_tokens"] = input_tokens
        now = self._clock.now()  # one reading: the anchor (if no response time) and "now"
        by_limit, at = self._state.plan_settle(actual, now)
        return (self._state.scope, self._state.id, by_limit, at, now)

    def __repr__(self) -> str:
        s = self._state
        return (
            f"<{type(self).__name__} {s.id} model={s.model!r} phase={s.phase} "
            f"cost={s.metrics} waited={s.waited:.3f}s>"
        )


class Permit(_PermitBase):
    """A grant of capacity for one call (async).

    Use it as ``async with limiter.acquire(...) as permit:``. Mark the call as sent just before
    it leaves (:meth:`mark_sent`), then :meth:`settle` with the real usage. Leaving the block
    settles with the estimate if the call was sent (or the block ended normally), and releases
    everything if the block failed before sending.
    """

    __slots__ = ()

    @overload
    async def settle(self, input_tokens: int, **metrics: int) -> None: ...
    @overload
    async def settle(self, input_tokens: None = None, **metrics: int) -> None: ...
    async def settle(self, input_tokens: object = None, **metrics: int) -> None:
        """Replace the estimate with the real usage: less refunds, more charges. Once only.

        Args:
            input_tokens: the real input tokens (``usageMetadata.promptTokenCount``).
            **metrics: real amounts of other metrics (e.g. ``images=2``).
        """
        tokens = _check_tokens(input_tokens)
        if not metrics and self._settled_quickly(tokens):
            return
        args = self._settle_args(tokens, metrics)
        if self._settle_nowait is not None and self._settle_nowait(*args):
            return
        result = self._settle_fn(*args)
        if result is not None:
            with anyio.CancelScope(shield=True):
                await result

    async def release(self) -> None:
        """Return everything: the call never reached the server. No-op once settled."""
        if self._state.plan_release():
            result = self._release_fn(self._state.scope, self._state.id, self._clock.now())
            if result is not None:
                with anyio.CancelScope(shield=True):
                    await result

    async def _exit(self, failed: bool) -> None:
        if self._state.phase in ("settled", "released"):
            return
        if failed and self._state.phase == "granted":
            await self.release()
        else:
            await self.settle()


class SyncPermit(_PermitBase):
    """The sync twin of :class:`Permit`, for threaded code."""

    __slots__ = ()

    @overload
    def settle(self, input_tokens: int, **metrics: int) -> None: ...
    @overload
    def settle(self, input_tokens: None = None, **metrics: int) -> None: ...
    def settle(self, input_tokens: object = None, **metrics: int) -> None:
        """Replace the estimate with the real usage: less refunds, more charges. Once only."""
        tokens = _check_tokens(input_tokens)
        if not metrics and self._settled_quickly(tokens):
            return
        self._settle_fn(*self._settle_args(tokens, metrics))

    def release(self) -> None:
        """Return everything: the call never reached the server. No-op once settled."""
        if self._state.plan_release():
            self._release_fn(self._state.scope, self._state.id, self._clock.now())

    def _exit(self, failed: bool) -> None:
        if self._state.phase in ("settled", "released"):
            return
        if failed and self._state.phase == "granted":
            self.release()
        else:
            self.settle()
