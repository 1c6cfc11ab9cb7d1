"""The sync twin of :class:`~quotaflow.limiter.Limiter`, for threaded code.

It runs the same :func:`~quotaflow._core.acquire_flow` and the same backend rules; only the
waiting differs (a ``threading.Event`` instead of an anyio event). A sync and an async limiter
can share one backend object in one process (``SyncLimiter.sharing(limiter)``).

Example:
    >>> from quotaflow import SyncLimiter
    >>> limiter = SyncLimiter(tier="tier1")
    >>> with limiter.acquire("gemini-2.5-flash", tokens=800) as permit:
    ...     permit.mark_sent()
    ...     permit.settle(input_tokens=790)
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, overload

from quotaflow import metrics as _metrics
from quotaflow._core import (
    DimensionStatus,
    Effect,
    LimiterCore,
    Op,
    Subscriptions,
    acquire_flow,
    learn_flow,
    scope_flow,
    shares_figures,
)
from quotaflow._learned import Origin, TimeScale
from quotaflow._quota_book import Learned
from quotaflow._shadow import check_mode
from quotaflow._waiting import SyncWaiter
from quotaflow.backends.base import Backend, Decision
from quotaflow.clock import Clock
from quotaflow.errors import ConfigError
from quotaflow.limiter import REENTERED, Limiter, _check_dimension, not_copyable, open_backend
from quotaflow.limits import Limit
from quotaflow.permit import SyncPermit
from quotaflow.pricing import Spend, SpendBook
from quotaflow.shares import Share, agent_name_problem
from quotaflow.tiers import TierTable

__all__ = ["SyncAcquire", "SyncLimiter"]


class SyncAcquire:
    """What :meth:`SyncLimiter.acquire` returns: ``with limiter.acquire(...) as permit:``.
    Leaving the block settles the permit with its estimate, or releases it if the block
    failed before the call was sent."""

    __slots__ = ("_args", "_limiter", "_permit")

    def __init__(self, limiter: SyncLimiter, args: tuple[Any, ...]) -> None:
        self._limiter = limiter
        self._args = args
        self._permit: SyncPermit | None = None

    def __enter__(self) -> SyncPermit:
        if self._permit is not None:
            raise RuntimeError(REENTERED)
        self._permit = permit = self._limiter._acquire(*self._args)
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


class SyncLimiter:
    """Admits calls within every limit of their model's quota, blocking the calling thread.

    Takes the same arguments as :class:`~quotaflow.limiter.Limiter`; the backend must offer
    synchronous methods (the memory backend does; the Redis backend has a sync client).
    """

    def __init__(
        self,
        tier: str | TierTable | None = "free",
        *,
        quotas: Mapping[str, Sequence[Limit]] | None = None,
        overrides: Mapping[str, Mapping[str, int]] | None = None,
        unknown_model: Sequence[Limit] | None = None,
        headroom: float = 0.0,
        project: str = "default",
        backend: Backend | str | None = None,
        clock: Clock | None = None,
        default_priority: int | str = "normal",
        shares: Mapping[str, Share] | None = None,
        minute_seconds: float = 60.0,
        day_seconds: float | None = None,
        learned_cache: str | os.PathLike[str] | None = None,
        probe: int | None = 8,
        spend: Spend | bool | None = None,
        mode: str | None = None,
        _core: LimiterCore | None = None,
    ) -> None:
        self._core = _core or LimiterCore(
            tier=tier,
            quotas=quotas,
            overrides=overrides,
            unknown_model=unknown_model,
            headroom=headroom,
            project=project,
            clock=clock,
            default_priority=default_priority,
            shares=shares,
            scale=TimeScale(minute_seconds, day_seconds),
            learned_cache=learned_cache,
            probe=probe,
            spend=spend,
        )
        if mode is not None or _core is None:
            self._core.mode = check_mode(mode or "enforce")
        self._lanes = self._core.lanes  # the fast lanes by model spelling (see _acquire)
        b: Any = open_backend(backend)
        sync_view = getattr(b, "sync", None)
        if sync_view is not None and inspect.iscoroutinefunction(getattr(b, "submit", None)):
            b = sync_view  # a backend with an async face and a sync twin (e.g. Redis)
        if not isinstance(b, Backend):
            raise ConfigError(f"{type(b).__name__} has no synchronous methods for SyncLimiter")
        self.backend: Backend = b
        self._shares_figures = shares_figures(b)
        self._waiters: dict[str, SyncWaiter] = {}
        self._listening = Subscriptions(self.backend, self._deliver)

    @classmethod
    def sharing(cls, limiter: Limiter) -> SyncLimiter:
        """A sync limiter on the same backend, tables and clock as ``limiter``."""
        return cls(backend=limiter.backend, _core=limiter._core)  # type: ignore[arg-type]

    @property
    def clock(self) -> Clock:
        """The limiter's clock."""
        return self._core.clock

    @property
    def mode(self) -> str:
        """``"enforce"`` (the default) or ``"shadow"``: decide and record, let every call
        through at once (see docs/observe.md)."""
        return getattr(self._core, "mode", "enforce")

    @property
    def project(self) -> str:
        """The Google Cloud project the quotas belong to."""
        return self._core.project

    @property
    def spend(self) -> SpendBook | None:
        """The prices and spend cap the transports meter with (``None``: spend not metered)."""
        return self._core.spend

    def quota(self, model: str) -> tuple[Limit, ...]:
        """The usable limits of ``model`` (headroom applied)."""
        return self._core.book.resolve(model)[1]

    def _deliver(self, decision: Decision) -> None:
        waiter = self._waiters.get(decision.id)
        if waiter is not None:
            waiter.deliver(decision)

    def _run(self, flow: Any) -> Any:
        result: Any = None
        while True:
            try:
                op: Op = flow.send(result)
            except StopIteration as stop:
                return stop.value
            result = getattr(self.backend, op.name)(*op.args)

    def _scope(self, model: str) -> tuple[str, str, tuple[Limit, ...]]:
        core = self._core
        key, canonical, limits = self._run(scope_flow(core, model, self._shares_figures))
        self._listening.ensure(key)
        if model not in core.lanes:
            core.remember_lane(model, key, canonical, limits, self.backend)
        return key, canonical, limits

    def __reduce__(self) -> tuple[object, ...]:
        raise not_copyable(self)

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
        model: str,
        tokens: int = 0,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        agent: str | None = None,
    ) -> SyncAcquire:
        """Block until every limit of ``model`` has room, and take it all at once:
        ``with limiter.acquire(...) as permit:``. The arguments and errors are those of
        :meth:`quotaflow.Limiter.acquire`."""
        return SyncAcquire(self, (model, tokens, cost, priority, timeout, deadline, False, agent))

    def acquire_nowait(
        self,
        model: str,
        tokens: int = 0,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        agent: str | None = None,
    ) -> SyncPermit:
        """Take room now or raise :class:`~quotaflow.errors.WouldBlockError`."""
        return self._acquire(model, tokens, cost, priority, None, None, True, agent)

    try_acquire = acquire_nowait

    def _acquire(
        self,
        model: str,
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
        deadline: float | None,
        nowait: bool,
        agent: str | None = None,
    ) -> SyncPermit:
        """The acquire: the model's fast lane when it grants at once (nobody waits and every
        limit has room), else the scope's line, waiting for the grant."""
        gate = self._lanes.get(model) if type(model) is str else None
        if gate is not None and (agent is None or agent_name_problem(agent) is None):
            fast = gate.grant(SyncPermit, tokens, cost, priority, timeout, deadline)
            if fast is not None:
                return fast
        while True:
            permit = self._acquire_once(
                model, tokens, cost, priority, timeout, deadline, nowait, agent
            )
            if not self._core.stale(model, permit._limits):
                return permit
            # the model's limits changed while it waited: ask again under the new ones
            permit.release()

    def _acquire_once(
        self,
        model: str,
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
        deadline: float | None,
        nowait: bool,
        agent: str | None = None,
    ) -> SyncPermit:
        core, clock, b = self._core, self.clock, self.backend
        key, canonical, limits = self._scope(model)
        req, metrics, prio = core.request(
            canonical, limits, tokens, cost, priority, timeout, deadline, nowait, agent
        )
        started = clock.now()
        waiter = SyncWaiter()
        self._waiters[req.id] = waiter
        done = False
        try:
            first: Decision = b.submit(key, req, started)
            flow = acquire_flow(req, clock, first)
            result: Any = None
            if first.outcome == "waiting" and _metrics.ON:
                _metrics.waiting_on(req.id, first.dimension)
            while first.outcome == "waiting":
                try:
                    effect: Effect = flow.send(result)
                except StopIteration as stop:
                    first = stop.value
                    break
                if effect.op == "wait":
                    waiter.wait(clock, effect.until)
                    result = waiter.take()
                elif effect.op == "yield":
                    time.sleep(0.001)
                    result = None
                elif effect.op == "cancel":
                    result = b.cancel(key, req.id, clock.now())
                else:  # dispatch
                    b.dispatch(key, clock.now())
                    result = waiter.take()
            done = True
            if first.outcome == "refused":
                raise core.error(first, canonical)
        finally:
            self._waiters.pop(req.id, None)
            if not done:
                won = b.cancel(key, req.id, clock.now())
                if won is not None:
                    b.release(key, req.id, clock.now())
        fields = core.grant_fields(req, canonical, key, metrics, limits, started, prio)
        return SyncPermit(*fields, clock, b.settle, b.release)

    def status(self, model: str) -> dict[str, DimensionStatus]:
        """Per dimension: limit, used, free, in flight, and when capacity returns."""
        key, _, limits = self._scope(model)
        return self._core.status(model, limits, self.backend.status(key, self.clock.now()))

    def waiting(self, model: str) -> int:
        """How many calls wait for ``model``."""
        return self.backend.waiting(self._scope(model)[0])

    def pause(self, model: str, dimension: str, until: float) -> None:
        """Admit nothing on ``dimension`` of ``model`` before ``until``."""
        key, _, limits = self._scope(model)
        _check_dimension(model, dimension, limits)
        self.backend.pause(key, dimension, until, self.clock.now())

    def exhaust(self, model: str, dimension: str) -> float | None:
        """Mark a day quota of ``model`` spent until its reset."""
        key, _, limits = self._scope(model)
        _check_dimension(model, dimension, limits)
        return self.backend.exhaust(key, dimension, self.clock.now())

    def set_limit(self, model: str, dimension: str, amount: int) -> int | None:
        """Change one limit's amount; see :meth:`Limiter.set_limit`."""
        old = self._core.set_limit(model, dimension, amount)
        if old is None:
            return None
        self._scope(model)
        return old.amount

    def learn(
        self, model: str, dimension: str, amount: int | None, *, quota_id: str = ""
    ) -> tuple[Learned, int | None]:
        """Take what a 429 taught; see :meth:`Limiter.learn`."""
        result: tuple[Learned, int | None] = self._run(
            learn_flow(self._core, model, dimension, amount, quota_id, self._shares_figures)
        )
        return result

    def origins(self, model: str) -> dict[str, Origin]:
        """Per dimension of ``model``: where its figure comes from."""
        return self._core.book.origins(model)

    def close(self) -> None:
        """Stop listening to the backend (a shared backend outlives this limiter)."""
        self._listening.close()

    def __repr__(self) -> str:
        return f"SyncLimiter(project={self._core.project!r}, backend={self.backend!r})"
