"""The public async limiter: ties tier tables, a backend and the waiting together.

``scripts/unasync.py`` generates the sync limiter (``quotaflow/sync.py``) from this module.

Example:
    >>> import anyio, quotaflow
    >>> async def main() -> None:
    ...     limiter = quotaflow.Limiter(tier="tier1")
    ...     async with limiter.acquire("gemini-2.5-flash", tokens=1200) as permit:
    ...         permit.mark_sent()
    ...         ...  # make the call
    ...         await permit.settle(input_tokens=1187)
    >>> anyio.run(main)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, overload

from quotaflow._acquiring import Acquiring
from quotaflow._limiter_base import AsyncClosing, LimiterBase
from quotaflow._limiter_common import (
    SharesCore,
    check_dimension,
    measure_grant,
    measure_refusal,
    open_backend,
)
from quotaflow.backends.base import AsyncBackend, Backend, Decision
from quotaflow.clock import Clock
from quotaflow.errors import QuotaError
from quotaflow.limits import Limit
from quotaflow.observe import metrics as _metrics
from quotaflow.observe.shadow import check_mode
from quotaflow.permit import Permit
from quotaflow.quotas.book import Learned
from quotaflow.quotas.learned import Origin, TimeScale
from quotaflow.quotas.pricing import Spend
from quotaflow.quotas.shares import Share, agent_name_problem
from quotaflow.quotas.tiers import TierTable
from quotaflow.scheduler.core import (
    DimensionStatus,
    Effect,
    LimiterCore,
    Op,
    acquire_flow,
    learn_flow,
    scope_flow,
)
from quotaflow.scheduler.synchronization import TIMED_OUT, AsyncOps, async_shield, async_sleep
from quotaflow.scheduler.waiting import AsyncWaiter

__all__ = [
    "Acquiring",
    "Limiter",
    # unasync: async-only
    "open_backend",
    # unasync: end
]


class Limiter(AsyncClosing, LimiterBase):
    """Admits calls to Gemini models within every limit of their quota (async, on anyio).

    Args:
        tier: a usage tier shipped in ``tier_tables/`` (``"free"``, ``"tier1"``, ``"tier2"``,
            ``"tier3"``), your own :class:`~quotaflow.quotas.tiers.TierTable`, or ``None`` to use
            only ``quotas``.
        quotas: limits per model, replacing the tier table's for those models; any dimension
            (``Limit("ipm", 10, 60, metric="images")``) and any period.
        overrides: change single figures of the tier table: ``{"gemini-2.5-flash": {"rpm": 5}}``.
            The ``QUOTAFLOW_LIMITS`` environment variable applies on top.
        unknown_model: limits for models that are in no table (otherwise they raise).
        headroom: fraction of every limit kept free (e.g. ``0.05``).
        project: the Google Cloud project; Gemini meters per (project, model), never per key.
        backend: ``None`` or ``"memory://"`` (this process), a ``redis://`` URL, or an object.
        clock: a :class:`~quotaflow.clock.Clock`; tests pass a ``ManualClock``.
        default_priority: priority of calls that name none (``"normal"``).
        shares: per agent, a :class:`~quotaflow.quotas.shares.Share` of each model's rolling limits
            (a ceiling, a floor).
        minute_seconds: how long Gemini's "minute" is here: 60 (real) or a compressed one for
            tests against the emulator (its setting of the same name). It applies to the tier
            tables' rpm/tpm, learned per-minute figures and the adaptive rate; ``quotas=``
            keep the periods they name.
        day_seconds: a compressed day for rpd/tpd (``None``: the Pacific calendar day).
        learned_cache: a JSON file keeping the figures learned from 429s across restarts.
        probe: calls in flight allowed per model with no figure at all (in the whole fleet,
            with a shared backend), until the server names one or a quiet minute passes;
            ``None``: no cap. It keeps the first 429s, which teach the figures, few.
        spend: prices and the rolling spend cap (a :class:`~quotaflow.quotas.pricing.Spend`);
        default:
            the shipped prices and the tier's cap; ``False``: spend is not metered.
        mode: ``"enforce"`` (default) or ``"shadow"``: the transports decide every call as
            usual and record what they would have done (waits, refusals) in metrics, the audit
            log and ``response.extensions["quotaflow"].shadow``, but let every call through at
            once: for trialling limits and policies before enforcing them.
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
        backend: Backend | AsyncBackend | str | None = None,
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
        self._ops = ops = AsyncOps(opened := open_backend(backend))
        self._owned = opened if isinstance(backend, str) else None  # closed by aclose()
        self.backend = ops.backend
        self._waiters: dict[str, AsyncWaiter | None] = {}
        self._listen()
        # unasync: async-only
        if ops.may_stall and self._shares_figures:  # the fleet's figures: read alongside
            self._later = self._poll_later
        # unasync: end

    @classmethod
    def sharing(cls, limiter: SharesCore) -> Limiter:
        """A limiter on the same backend, tables and clock as ``limiter``:
        ``SyncLimiter.sharing(limiter)`` gives the threads of an async application the same
        quota state (through the sync twin of a backend with one, such as Redis)."""
        return cls(backend=limiter.backend, _core=limiter._core)

    async def _run(self, flow: Any) -> Any:
        result: Any = None
        while True:
            try:
                op: Op = flow.send(result)
            except StopIteration as stop:
                return stop.value
            result = await self._ops.call(op.name, *op.args)

    async def _scope(self, model: str, later: Any = None) -> tuple[str, str, tuple[Limit, ...]]:
        core = self._core
        flow = scope_flow(core, model, self._shares_figures, later)
        key, canonical, limits = await self._run(flow)
        self._listening.ensure(key)
        if model not in core.lanes:
            core.remember_lane(model, key, canonical, limits, self.backend)
        if _metrics.ON:  # the gauges watch (limiter, model) from here on
            _metrics.seen(self, model)
        return key, canonical, limits

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
    ) -> Acquiring[Permit]: ...
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
    ) -> Acquiring[Permit]: ...
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
    ) -> Acquiring[Permit]:
        """Wait for room on every limit of ``model``'s quota and take it all at once.

        ``async with limiter.acquire(...) as permit:``; leaving the block settles the permit
        (see :class:`Acquiring`).

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
        return Acquiring(
            self._acquire, (model, tokens, cost, priority, timeout, deadline, False, agent)
        )

    async def acquire_nowait(
        self,
        model: str,
        tokens: int = 0,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        agent: str | None = None,
    ) -> Permit:
        """Take room now or raise :class:`~quotaflow.errors.WouldBlockError` (with
        ``retry_after``). Never waits; passes waiters in line only as backfilling allows (when
        no waiter ahead would start later for it)."""
        return await self._acquire(model, tokens, cost, priority, None, None, True, agent)

    try_acquire = acquire_nowait

    async def _acquire(
        self,
        model: str,
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
        deadline: float | None,
        nowait: bool,
        agent: str | None = None,
    ) -> Permit:
        """The acquire: the model's fast lane when it grants at once (nobody waits and every
        limit has room), else the scope's line, waiting for the grant."""
        gate = self._lanes.get(model) if type(model) is str else None
        if gate is not None and (agent is None or agent_name_problem(agent) is None):
            fast = gate.grant(Permit, tokens, cost, priority, timeout, deadline)
            if fast is not None:
                if _metrics.ON and _metrics.reaching():
                    measure_grant(self, model, fast, agent)
                return fast
        try:
            while True:
                permit = await self._acquire_once(
                    model, tokens, cost, priority, timeout, deadline, nowait, agent
                )
                if not self._core.stale(model, permit._limits):
                    break
                # its limits changed meanwhile (a figure learned): it asks again under them
                await permit.release()
        except QuotaError as exc:
            if _metrics.ON:
                measure_refusal(self, model, exc, agent)
            raise
        if _metrics.ON:
            measure_grant(self, model, permit, agent)
        return permit

    async def _acquire_once(
        self,
        model: str,
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
        deadline: float | None,
        nowait: bool,
        agent: str | None = None,
    ) -> Permit:
        core, clock, ops = self._core, self.clock, self._ops
        key, canonical, limits = await self._scope(model, self._later)
        req, metrics, prio = core.request(
            canonical, limits, tokens, cost, priority, timeout, deadline, nowait, agent
        )
        started = clock.now()
        waiters = self._waiters
        waiters[req.id] = None  # decisions that arrive before the waiter exists are kept
        done = False
        try:
            first: Decision = await ops.within(req.deadline, clock, "submit", key, req, started)
            if first is TIMED_OUT:  # the backend did not answer in time (it may have queued
                # the request: the cancel below takes it back)
                raise core.error(Decision(req.id, "refused", None, "", "timeout"), canonical)
            result: Any = None
            waiter: AsyncWaiter | None = None
            if first.outcome == "waiting":  # the flow only when it waits (a grant is the rule)
                flow = acquire_flow(req, clock, first)
                if _metrics.ON:
                    _metrics.waiting_on(req.id, first.dimension)
            while first.outcome == "waiting":
                try:
                    effect: Effect = flow.send(result)
                except StopIteration as stop:
                    first = stop.value
                    break
                if effect.op == "wait":
                    if waiter is None:
                        waiter = AsyncWaiter()
                        with self._early_lock:
                            early = self._early.pop(req.id, None)
                            waiters[req.id] = waiter
                        if early is not None:
                            waiter.deliver(early)
                    await waiter.wait(clock, effect.until)
                    result = waiter.take()
                elif effect.op == "yield":
                    await async_sleep(0.001)
                    result = None
                elif effect.op == "cancel":
                    with async_shield():
                        result = await ops.call("cancel", key, req.id, clock.now())
                else:  # dispatch
                    await ops.within(req.deadline, clock, "dispatch", key, clock.now())
                    result = waiter.take() if waiter is not None else None
            done = True
            if first.outcome == "refused":
                raise core.error(first, canonical)
        finally:
            waiters.pop(req.id, None)
            self._early.pop(req.id, None)
            if not done:
                with async_shield():
                    won = await ops.call("cancel", key, req.id, clock.now())
                    if won is not None:
                        await ops.call("release", key, req.id, clock.now())
        fields = core.grant_fields(req, canonical, key, metrics, limits, started, prio)
        return Permit(*fields, clock, *ops.ends)

    async def status(self, model: str) -> dict[str, DimensionStatus]:
        """Per dimension: limit, used, free, in flight, and when capacity returns."""
        key, _, limits = await self._scope(model)
        levels = await self._ops.call("status", key, self.clock.now())
        return self._core.status(model, limits, levels)

    async def waiting(self, model: str) -> int:
        """How many calls wait for ``model`` (in every process sharing the backend)."""
        key, _, _ = await self._scope(model)
        return int(await self._ops.call("waiting", key))

    async def pause(self, model: str, dimension: str, until: float) -> None:
        """Admit nothing on ``dimension`` of ``model`` before ``until`` (e.g. from a 429)."""
        key, _, limits = await self._scope(model)
        check_dimension(model, dimension, limits)
        await self._ops.call("pause", key, dimension, until, self.clock.now())

    async def exhaust(self, model: str, dimension: str) -> float | None:
        """Mark a day quota of ``model`` spent until its reset (e.g. from a per-day 429)."""
        key, _, limits = await self._scope(model)
        check_dimension(model, dimension, limits)
        resets: float | None = await self._ops.call("exhaust", key, dimension, self.clock.now())
        return resets

    async def set_limit(self, model: str, dimension: str, amount: int) -> int | None:
        """Change one limit's amount (e.g. lowered to the server's ``quotaValue``).

        Returns the previous amount, or ``None`` if the model has no such dimension.
        """
        old = self._core.set_limit(model, dimension, amount)
        if old is None:
            return None
        await self._scope(model)
        return old.amount

    async def learn(
        self, model: str, dimension: str, amount: int | None, *, quota_id: str = ""
    ) -> tuple[Learned, int | None]:
        """Take what a 429 taught about ``dimension`` of ``model`` (the transports call this).

        ``amount`` (the 429's ``quotaValue``) is adopted at once if the model has no figure
        for the dimension (with Gemini's period for it: per minute rolling, per day the
        Pacific day), lowers a higher figure, and is kept out if the configured figure is lower
        (``"higher"``: a tier upgrade to confirm). ``amount=None`` (a 429 that names no figure)
        applies the adaptive rule: the figure becomes a little under what was admitted in the
        last minute, and grows again while no 429 comes. With a backend that shares figures
        (memory, Redis) the fleet learns once. A new figure pauses its dimension for one
        window, since the server is at its limit and the new bucket holds nothing yet.

        Returns ``(what was done, the configured amount or None)``; what was done is
        ``adopted``, ``lowered``, ``higher``, ``same``, ``adapted`` or ``known`` (an adaptive
        figure is not needed: the dimension has a figure).
        """
        result: tuple[Learned, int | None] = await self._run(
            learn_flow(self._core, model, dimension, amount, quota_id, self._shares_figures)
        )
        return result

    def origins(self, model: str) -> dict[str, Origin]:
        """Per dimension of ``model``: where its figure comes from (table, override,
        configured, learned, adaptive)."""
        return self._core.book.origins(model)
