"""The limiters' front doors: ``acquire`` and the awaitable or context manager it returns.

:class:`LimiterFront` and :class:`SyncLimiterFront` are the compiled base classes of
:class:`~quotaflow.limiter.Limiter` and :class:`~quotaflow.sync.SyncLimiter`. Their ``acquire``
returns a :class:`LaneAcquire` (an awaitable and async context manager) or a
:class:`SyncAcquire` (a context manager), which try the model's
:class:`~quotaflow._gate.LaneGate` first and otherwise run the limiter's full ``_acquire``.
Only the front door is compiled; the full acquire, which waits, stays interpreted (see the
README's design section).

Compiled with mypyc when a wheel is built (see ``hatch_build.py``), like :mod:`quotaflow._gate`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, overload

from quotaflow._await import acquired
from quotaflow._gate import LaneGate
from quotaflow.permit import DONE, Permit, SyncPermit
from quotaflow.shares import agent_name_problem

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # pragma: no cover - only the compiler reads it; not needed at run time

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


__all__ = [
    "Acquire",
    "CallAcquire",
    "LaneAcquire",
    "LimiterFront",
    "SyncAcquire",
    "SyncLimiterFront",
]


_REENTERED = (
    "this acquire(...) is already in use by a with block: call limiter.acquire(...) again for "
    "another permit"
)


def _not_copyable(limiter: object) -> TypeError:
    return TypeError(
        f"a {type(limiter).__name__} cannot be copied or pickled: share the object (it is "
        "safe across tasks and threads), or build another with the same arguments "
        "(backend= shares the quota state)"
    )


class _Exits(Protocol):
    def _exit(self, failed: bool) -> Awaitable[None]: ...


_P = TypeVar("_P", bound=_Exits)
_T = TypeVar("_T")


def _ready(permit: _T) -> Generator[Any, None, _T]:
    """What ``await`` iterates for a permit granted at once: it ends at its first step, and a
    compiled generator returns its value without a ``StopIteration``."""
    return permit
    yield  # type: ignore[unreachable]  # a generator


class Acquire(Generic[_P]):
    """``async with x.acquire(...) as permit`` or ``permit = await x.acquire(...)``.

    Awaiting it is what a subclass defines: :class:`CallAcquire` awaits a coroutine function,
    :class:`LaneAcquire` tries a fast lane first. Either keeps the permit it returns for the
    block's exit, which calls ``permit._exit``. None of these methods awaits (see
    :mod:`quotaflow._await`): they return what the caller's coroutine awaits.
    """

    def __init__(self) -> None:
        self._permit: _P | None = None

    def __await__(self) -> Generator[Any, None, _P]:
        raise NotImplementedError

    def __aenter__(self) -> Awaitable[_P]:
        if self._permit is not None:
            raise RuntimeError(_REENTERED)
        return self  # ``async with`` awaits it: __await__ keeps the permit for __aexit__

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        permit, self._permit = self._permit, None
        if permit is None:
            return DONE
        return permit._exit(exc_type is not None)


class CallAcquire(Acquire[_P]):
    """:class:`Acquire` of a coroutine function ``fn(*args)``."""

    def __init__(self, fn: Callable[..., Awaitable[_P]], args: tuple[Any, ...]) -> None:
        self._permit = None
        self._fn = fn
        self._args = args

    def __await__(self) -> Generator[Any, None, _P]:
        return acquired(self, self._fn(*self._args)).__await__()


class LaneAcquire(Acquire[Permit]):
    """:class:`Acquire` of :meth:`LimiterFront.acquire`: the model's :class:`LaneGate` first,
    else the limiter's full ``_acquire``. It keeps the arguments in fields (no tuple, no bound
    method until the full way needs one)."""

    def __init__(
        self,
        front: LimiterFront,
        model: object,
        tokens: object,
        cost: object,
        priority: object,
        timeout: object,
        deadline: object,
        agent: object,
    ) -> None:
        self._permit = None
        self._front = front
        self._model = model
        self._tokens = tokens
        self._cost = cost
        self._priority = priority
        self._timeout = timeout
        self._deadline = deadline
        self._agent = agent

    def __await__(self) -> Generator[Any, None, Permit]:
        front = self._front
        model = self._model
        agent = self._agent
        if type(model) is str and front._lanes and (agent is None or _named(agent)):
            gate = front._lanes.get(model)
            if gate is not None:
                permit = gate.grant(
                    self._tokens, self._cost, self._priority, self._timeout, self._deadline
                )
                if permit is not None:
                    self._permit = permit
                    return _ready(permit)
        full = front._acquire(
            model,
            self._tokens,
            self._cost,
            self._priority,
            self._timeout,
            self._deadline,
            False,
            self._agent,
        )
        return acquired(self, full).__await__()


def _named(agent: object) -> bool:
    # a bad agent name takes the full way, which raises the ConfigError naming it
    return agent_name_problem(agent) is None


@mypyc_attr(allow_interpreted_subclasses=True)
class LimiterFront:
    """The compiled front door of :class:`~quotaflow.limiter.Limiter` (its base class).

    ``acquire`` is called once per request: compiled, it builds a :class:`LaneAcquire` without
    running interpreted code. Everything else of the limiter (the full ``_acquire``, the
    waiting) is the interpreted subclass's.
    """

    def __init__(self, lanes: dict[str, LaneGate]) -> None:
        self._lanes = lanes  # the core's gates by model spelling (cleared, never replaced)

    def __reduce__(self) -> tuple[object, ...]:
        raise _not_copyable(self)

    @overload
    def acquire(
        self,
        model: str,
        tokens: int,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        agent: str | None = None,
    ) -> Acquire[Permit]: ...
    @overload
    def acquire(
        self,
        model: str,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        agent: str | None = None,
    ) -> Acquire[Permit]: ...
    def acquire(
        self,
        model: object,
        tokens: object = 0,
        *,
        cost: object = None,
        priority: object = None,
        timeout: object = None,
        deadline: object = None,
        agent: object = None,
    ) -> Acquire[Permit]:
        """Wait for room on every limit of ``model``'s quota and take it all at once.

        ``async with limiter.acquire(...) as permit:`` or ``permit = await
        limiter.acquire(...)``.

        Args:
            model: as you write it (``"gemini-2.5-flash"``, ``"models/gemini-2.5-flash"``).
            tokens: the input token estimate (counted against TPM/TPD).
            cost: amounts of other metrics (``{"images": 1}``), or ``{"requests": n}``.
            priority: a level name or int; defaults to ``quotaflow.priority(...)`` or the
                limiter's default.
            timeout: seconds to wait at most; ``deadline``: the same as an absolute time of
                the limiter's clock. If the computed wait is longer, raises at once.
            agent: the agent making the call (defaults to ``quotaflow.agent(...)``); its
                share (ceiling, floor) applies.

        Raises:
            CannotFitError: the request is larger than a limit.
            QuotaExhaustedError: a day quota is spent.
            QuotaTimeoutError: no room before the deadline.
            ConfigError: an argument of the wrong type or value (named in the message).
        """
        return LaneAcquire(self, model, tokens, cost, priority, timeout, deadline, agent)

    def _acquire(
        self,
        model: Any,
        tokens: Any,
        cost: Any,
        priority: Any,
        timeout: Any,
        deadline: Any,
        nowait: bool,
        agent: Any = None,
    ) -> Awaitable[Permit]:
        """The full acquire: the subclass's (it checks every argument, and waits)."""
        raise NotImplementedError


class SyncAcquire:
    """``with limiter.acquire(...) as permit`` of :class:`SyncLimiterFront`: the model's
    :class:`LaneGate` first, else the limiter's full ``_acquire``. Leaving the block calls
    ``permit._exit`` (settle with the estimate, or release if the block failed unsent)."""

    def __init__(
        self,
        front: SyncLimiterFront,
        model: object,
        tokens: object,
        cost: object,
        priority: object,
        timeout: object,
        deadline: object,
        agent: object,
    ) -> None:
        self._permit: SyncPermit | None = None
        self._front = front
        self._model = model
        self._tokens = tokens
        self._cost = cost
        self._priority = priority
        self._timeout = timeout
        self._deadline = deadline
        self._agent = agent

    def __enter__(self) -> SyncPermit:
        if self._permit is not None:
            raise RuntimeError(_REENTERED)
        front = self._front
        model = self._model
        permit: SyncPermit | None = None
        agent = self._agent
        if type(model) is str and front._lanes and (agent is None or _named(agent)):
            gate = front._lanes.get(model)
            if gate is not None:
                permit = gate.grant_sync(
                    self._tokens, self._cost, self._priority, self._timeout, self._deadline
                )
        if permit is None:
            permit = front._acquire(
                model,
                self._tokens,
                self._cost,
                self._priority,
                self._timeout,
                self._deadline,
                False,
                self._agent,
            )
        self._permit = permit
        return permit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            permit._exit(exc_type is not None)


@mypyc_attr(allow_interpreted_subclasses=True)
class SyncLimiterFront:
    """The compiled front door of :class:`~quotaflow.sync.SyncLimiter` (its base class), as
    :class:`LimiterFront` is the async limiter's."""

    def __init__(self, lanes: dict[str, LaneGate]) -> None:
        self._lanes = lanes  # the core's gates by model spelling (cleared, never replaced)

    def __reduce__(self) -> tuple[object, ...]:
        raise _not_copyable(self)

    @overload
    def acquire(
        self,
        model: str,
        tokens: int,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        agent: str | None = None,
    ) -> SyncAcquire: ...
    @overload
    def acquire(
        self,
        model: str,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        agent: str | None = None,
    ) -> SyncAcquire: ...
    def acquire(
        self,
        model: object,
        tokens: object = 0,
        *,
        cost: object = None,
        priority: object = None,
        timeout: object = None,
        deadline: object = None,
        agent: object = None,
    ) -> SyncAcquire:
        """Block until every limit of ``model`` has room, and take it all at once:
        ``with limiter.acquire(...) as permit:``. The arguments and errors are those of
        :meth:`quotaflow.Limiter.acquire`."""
        return SyncAcquire(self, model, tokens, cost, priority, timeout, deadline, agent)

    def _acquire(
        self,
        model: Any,
        tokens: Any,
        cost: Any,
        priority: Any,
        timeout: Any,
        deadline: Any,
        nowait: bool,
        agent: Any = None,
    ) -> SyncPermit:
        """The full acquire: the subclass's (it checks every argument)."""
        raise NotImplementedError
