"""Permits: what ``acquire`` returns. Granted -> sent -> settled, or granted -> released.

The async :class:`Permit` and the sync :class:`SyncPermit` are subclasses of one
:class:`~quotaflow._permit_state.PermitState` (the pure life cycle); they add the backend I/O.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, Final, cast, overload

from quotaflow._await import shielded
from quotaflow._permit_state import PermitState
from quotaflow.clock import Clock
from quotaflow.errors import ConfigError
from quotaflow.limits import Limit

if TYPE_CHECKING:
    from quotaflow._gate import LaneGate

__all__ = ["Permit", "SyncPermit"]

_SettleFn = Callable[[str, str, Mapping[str, int] | None, float, float], Any]
_ReleaseFn = Callable[[str, str, float], Any]


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


class _PermitBase(PermitState):
    """The state of one grant (:class:`~quotaflow._permit_state.PermitState`) and the backend
    calls that end it."""

    __slots__ = ("_clock", "_release_fn", "_settle_fn", "_settle_nowait")

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
        settle: _SettleFn,
        release: _ReleaseFn,
        settle_nowait: Callable[[str, str, Mapping[str, int] | None, float, float], bool]
        | None = None,
        quick: LaneGate | None = None,
        lease: int = 0,
        tokens: int = 0,
    ) -> None:
        PermitState.__init__(
            self,
            id,
            model,
            scope,
            metrics,
            limits,
            granted_at,
            waited,
            priority,
            quick,
            lease,
            tokens,
        )
        self._clock = clock
        self._settle_fn = settle
        self._release_fn = release
        # a backend's way to settle without waiting (e.g. queued to ride on its next call);
        # False: it cannot now, use ``settle``
        self._settle_nowait = settle_nowait

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

    def _settled_quickly(self, input_tokens: int | None) -> bool:
        """Settle a fast-lane grant the quick way (it never blocks); ``False``: this settle
        takes the general way."""
        gate = self._quick
        return gate is not None and gate.settle(self, input_tokens)

    def _settle_args(self, input_tokens: int | None, metrics: Mapping[str, int]) -> tuple[Any, ...]:
        actual = dict(metrics)
        if input_tokens is not None:
            actual["input_tokens"] = input_tokens
        now = self._clock.now()  # one reading: the anchor (if no response time) and "now"
        by_limit, at = self._plan_settle(actual, now)
        return (self._scope, self._lease_id(), by_limit, at, now)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._describe()}>"


class _Done:
    """A coroutine with nothing left to do, shared by every settle that is done when called.

    ``await`` takes an iterator that is already exhausted (one, shared), so it allocates
    nothing and never suspends. It is also a :class:`collections.abc.Coroutine` (``send``,
    ``throw``, ``close``), so ``asyncio.create_task(permit.settle())`` and
    ``task_group.start_soon(permit.settle)`` take it as they take a coroutine: it finishes at
    its first step, with ``None``.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return _EXHAUSTED

    def send(self, value: object) -> None:
        raise StopIteration

    def throw(self, typ: object, val: object = None, tb: object = None) -> None:
        """Raise the exception at once, as a coroutine that has not started would."""
        if isinstance(typ, BaseException):
            raise typ
        if isinstance(val, BaseException):
            raise val
        if isinstance(typ, type) and issubclass(typ, BaseException):
            raise typ() if val is None else typ(val)
        raise TypeError("throw() expects an exception")

    def close(self) -> None:
        return None

    def __reduce__(self) -> str:
        return "DONE"  # the one instance


_EXHAUSTED: Final = cast("Generator[Any, None, None]", iter(()))
DONE: Final = _Done()  # shared: it has no state


class Permit(_PermitBase):
    """A grant of capacity for one call (async).

    Use it as ``async with limiter.acquire(...) as permit:``. Mark the call as sent just before
    it leaves (:meth:`mark_sent`), then :meth:`settle` with the real usage. Leaving the block
    settles with the estimate if the call was sent (or the block ended normally), and releases
    everything if the block failed before sending.
    """

    __slots__ = ()

    @overload
    def settle(self, input_tokens: int, **metrics: int) -> Coroutine[Any, Any, None]: ...
    @overload
    def settle(self, input_tokens: None = None, **metrics: int) -> Coroutine[Any, Any, None]: ...
    def settle(self, input_tokens: object = None, **metrics: int) -> Coroutine[Any, Any, None]:
        """Replace the estimate with the real usage: less refunds, more charges. Once only.

        ``await permit.settle(...)``. The permit is settled when this is called; what is left
        to await is the backend's write, if it has one to make (Redis): a settle on the memory
        backend returns a coroutine with nothing left to do.

        Args:
            input_tokens: the real input tokens (``usageMetadata.promptTokenCount``).
            **metrics: real amounts of other metrics (e.g. ``images=2``).
        """
        tokens = _check_tokens(input_tokens)
        if not metrics and self._settled_quickly(tokens):
            return DONE
        args = self._settle_args(tokens, metrics)
        if self._settle_nowait is not None and self._settle_nowait(*args):
            return DONE
        result = self._settle_fn(*args)
        return DONE if result is None else shielded(result)

    def release(self) -> Coroutine[Any, Any, None]:
        """Return everything: the call never reached the server. No-op once settled.

        ``await permit.release()``; as with :meth:`settle`, the permit is released when this is
        called, and what is left to await is the backend's write, if any."""
        if self._plan_release():
            result = self._release_fn(self._scope, self._lease_id(), self._clock.now())
            if result is not None:
                return shielded(result)
        return DONE

    def _exit(self, failed: bool) -> Coroutine[Any, Any, None]:
        if self._phase == "settled" or self._phase == "released":
            return DONE
        if failed and self._phase == "granted":
            return self.release()
        return self.settle()


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
        if self._plan_release():
            self._release_fn(self._scope, self._lease_id(), self._clock.now())

    def _exit(self, failed: bool) -> None:
        if self._phase == "settled" or self._phase == "released":
            return
        if failed and self._phase == "granted":
            self.release()
        else:
            self.settle()
