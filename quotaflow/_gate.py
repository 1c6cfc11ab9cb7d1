"""The fast path of ``acquire`` and ``settle``: a limiter's gate into a scope's fast lane.

A :class:`LaneGate` belongs to one limiter and one spelling of a model. When nobody waits, it
grants a plain request (one request, its input tokens) through the backend's
:class:`~quotaflow._lane.FastLane` with a few integer steps (atomic where compiled, else under
the backend's mutex), and settles it the same way. Anything else (a cost of other metrics, a
lane that is closed or too small, a changed set of limits) returns ``None`` or ``False`` and
the caller takes the general way, which makes the same decision: the lane only answers when
the exact rule would answer the same.

:class:`LimiterFront` is the limiter's compiled base class: its ``acquire`` returns a
:class:`LaneAcquire`, an awaitable and async context manager that tries the gate first and
otherwise runs the limiter's full acquire.

This module, :mod:`quotaflow._lane`, :mod:`quotaflow._permit_state` and :mod:`quotaflow.permit`
are compiled with mypyc when a wheel is built (see ``hatch_build.py``); the same source runs
as plain Python where no compiler is available. Keep them to typed code that mypyc compiles:
no monkeypatching, no dynamic attributes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from time import monotonic
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, overload

from quotaflow._lane import ATOMIC, FastLane
from quotaflow._permit_state import PermitState
from quotaflow.clock import Clock, SystemClock
from quotaflow.context import _priority
from quotaflow.context import priority_value as _priority_value
from quotaflow.limits import Limit
from quotaflow.permit import Permit, SyncPermit

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # pragma: no cover - only the compiler reads it; not needed at run time

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Any:  # type: ignore[misc]
        return lambda cls: cls


__all__ = [
    "Acquire",
    "CallAcquire",
    "LaneAcquire",
    "LaneGate",
    "LimiterFront",
    "SyncAcquire",
    "SyncLimiterFront",
]


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
        # the backend's mutex (a MemoryBackend.Mutex), called without a lookup per call
        self.lock_acquire: Callable[[], Any] = backend.lock.take
        self.lock_release: Callable[[None], None] = backend.lock.give
        # work queued while the mutex was held (dropped permits), for its holder to do after
        self.deferred: Any = getattr(backend.lock, "deferred", None)
        self.drain: Callable[[], None] | None = getattr(backend.lock, "drain", None)
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

    def admit(
        self, tokens: object, cost: object, priority: object, timeout: object, deadline: object
    ) -> int | None:
        """The priority of a request the lane may serve, or ``None`` (the full way).

        Only plain requests: one request (``cost`` ``None`` or ``{"requests": 1}``, the
        transports' form) and ``tokens`` input tokens. Where nobody waits and the lane's bounds
        say it fits, the exact rule would grant it too, so neither priority nor a deadline can
        change the outcome; bad input goes the full way, which names the error (so the
        arguments are typed ``object``: a compiled build must not raise a TypeError of its own).
        """
        if cost is not None and not (
            isinstance(cost, dict)
            and len(cost) == 1
            and type(cost.get("requests")) is int
            and cost["requests"] == 1
        ):
            return None
        if type(tokens) is not int or not isinstance(tokens, int) or tokens < 0:
            return None
        if timeout is not None and not (
            (type(timeout) is float or type(timeout) is int)
            and isinstance(timeout, (int, float))
            and timeout >= 0
        ):
            return None
        if deadline is not None and (
            (type(deadline) is not float and type(deadline) is not int) or deadline != deadline
        ):
            return None  # not a number, or NaN: the full way names it
        if self.lane.version != self.version:  # the scope's limits changed: look again
            if self.gates.get(self.model) is self:
                del self.gates[self.model]
            return None
        if priority is None:
            prio = _priority.get()
            return self.default_priority if prio is None else prio
        if type(priority) is int and isinstance(priority, int):
            return priority
        if isinstance(priority, str):
            return _priority_value(priority)  # raises as the full way would
        return None  # a bad value: the full way names it

    def unlock(self) -> None:
        """Give the mutex back, and do what was queued while it was held."""
        self.lock_release(None)
        if self.deferred and self.drain is not None:
            self.drain()

    def take(self, tokens: int, now: float) -> int:
        """A lane lease of one request and ``tokens`` input tokens, or 0 (the full way)."""
        if ATOMIC:
            return self.lane.take(tokens, now, self.version)
        self.lock_acquire()
        try:
            return self.lane.take(tokens, now, self.version)
        finally:
            self.unlock()

    def grant(
        self, tokens: object, cost: object, priority: object, timeout: object, deadline: object
    ) -> Permit | None:
        """An async :class:`~quotaflow.permit.Permit` if the lane grants the request at once
        (see :meth:`admit`), else ``None``."""
        prio = self.admit(tokens, cost, priority, timeout, deadline)
        if prio is None:
            return None
        amount: int = tokens  # type: ignore[assignment]  # admit() checked it
        now = self.now()
        lease = self.take(amount, now)
        if not lease:
            return None
        return Permit(
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
            amount,
        )

    def grant_sync(
        self, tokens: object, cost: object, priority: object, timeout: object, deadline: object
    ) -> SyncPermit | None:
        """:meth:`grant` as a :class:`~quotaflow.permit.SyncPermit`."""
        prio = self.admit(tokens, cost, priority, timeout, deadline)
        if prio is None:
            return None
        amount: int = tokens  # type: ignore[assignment]  # admit() checked it
        now = self.now()
        lease = self.take(amount, now)
        if not lease:
            return None
        return SyncPermit(
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
            amount,
        )

    def settle(self, state: PermitState, input_tokens: int | None) -> bool:
        """Settle a grant of this gate with its real input tokens (``None``: as granted);
        ``False``: this settle takes the general way (which raises or plans it)."""
        now = self.now()
        at = state._plan_quick_settle(input_tokens, now)
        if at is None:
            return False
        if ATOMIC:
            done = self.lane.settle(state._lease, None, input_tokens, at, now)
        else:
            self.lock_acquire()
            try:
                done = self.lane.settle(state._lease, None, input_tokens, at, now)
            finally:
                self.unlock()
        if not done:  # the lane closed since: the backend writes it into the buckets
            self.settle_tokens(self.key, state._lease_id(), input_tokens, at, now)
        return True


class _Exits(Protocol):
    async def _exit(self, failed: bool) -> None: ...


_P = TypeVar("_P", bound=_Exits)


class Acquire(Generic[_P]):
    """``async with x.acquire(...) as permit`` or ``permit = await x.acquire(...)``.

    Leaving the block calls ``permit._exit``. Awaiting it is what a subclass defines:
    :class:`CallAcquire` awaits a coroutine function, :class:`LaneAcquire` tries a fast lane
    first.
    """

    def __init__(self) -> None:
        self._permit: _P | None = None

    def __await__(self) -> Generator[Any, None, _P]:
        raise NotImplementedError
        yield  # type: ignore[unreachable]  # a generator, as the subclasses'

    async def __aenter__(self) -> _P:
        self._permit = await self
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._permit is not None:
            await self._permit._exit(failed=exc_type is not None)


class CallAcquire(Acquire[_P]):
    """:class:`Acquire` of a coroutine function ``fn(*args)``."""

    def __init__(self, fn: Callable[..., Awaitable[_P]], args: tuple[Any, ...]) -> None:
        self._permit = None
        self._fn = fn
        self._args = args

    def __await__(self) -> Generator[Any, None, _P]:
        return (yield from self._fn(*self._args).__await__())


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
        if type(model) is str and front._lanes:
            gate = front._lanes.get(model)
            if gate is not None:
                permit = gate.grant(
                    self._tokens, self._cost, self._priority, self._timeout, self._deadline
                )
                if permit is not None:
                    return permit
        return (
            yield from front._acquire(
                model,
                self._tokens,
                self._cost,
                self._priority,
                self._timeout,
                self._deadline,
                False,
                self._agent,
            ).__await__()
        )


@mypyc_attr(allow_interpreted_subclasses=True)
class LimiterFront:
    """The compiled front door of :class:`~quotaflow.limiter.Limiter` (its base class).

    ``acquire`` is called once per request: compiled, it builds a :class:`LaneAcquire` without
    running interpreted code. Everything else of the limiter (the full ``_acquire``, the
    waiting) is the interpreted subclass's; only this class and the awaitable are compiled.
    """

    def __init__(self, lanes: dict[str, LaneGate]) -> None:
        self._lanes = lanes  # the core's gates by model spelling (cleared, never replaced)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            f"a {type(self).__name__} cannot be copied or pickled: share the object (it is "
            "safe across tasks and threads), or build another with the same arguments "
            "(backend= shares the quota state)"
        )

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

    async def _acquire(
        self,
        model: Any,
        tokens: Any,
        cost: Any,
        priority: Any,
        timeout: Any,
        deadline: Any,
        nowait: bool,
        agent: Any = None,
    ) -> Permit:
        """The full acquire: the subclass's (it checks every argument)."""
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
        front = self._front
        model = self._model
        permit: SyncPermit | None = None
        if type(model) is str and front._lanes:
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
        permit = self._permit
        if permit is not None:
            permit._exit(exc_type is not None)


@mypyc_attr(allow_interpreted_subclasses=True)
class SyncLimiterFront:
    """The compiled front door of :class:`~quotaflow.sync.SyncLimiter` (its base class), as
    :class:`LimiterFront` is the async limiter's."""

    def __init__(self, lanes: dict[str, LaneGate]) -> None:
        self._lanes = lanes  # the core's gates by model spelling (cleared, never replaced)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError(
            f"a {type(self).__name__} cannot be copied or pickled: share the object (it is "
            "safe across tasks and threads), or build another with the same arguments "
            "(backend= shares the quota state)"
        )

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
