"""What the async and the sync limiter share: scopes, cost vectors, errors, the fast-lane entry,
the waiting logic.

The drivers (``limiter.py``, ``sync.py``) only wait and do I/O; every decision is made here or in
the backend.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from quotaflow import context
from quotaflow.backends.base import Decision, Request
from quotaflow.clock import Clock, SystemClock
from quotaflow.errors import (
    CannotFitError,
    ConfigError,
    QuotaError,
    QuotaExhaustedError,
    QuotaflowError,
    QuotaTimeoutError,
    WouldBlockError,
)
from quotaflow.limits import Limit, check_cost
from quotaflow.quotas.book import PROBE, SEEN, SERVED, Learned, QuotaBook
from quotaflow.quotas.learned import Figure, LearnedCache, Origin, TimeScale, adapt_down, adapt_up
from quotaflow.quotas.pricing import Spend, SpendBook
from quotaflow.quotas.shares import (
    DEFAULT_SHARE,
    Share,
    agent_limits,
    agent_name_problem,
    floors_for,
)
from quotaflow.quotas.tiers import TierTable
from quotaflow.scheduler.buckets import Level
from quotaflow.scheduler.gate import LaneGate

__all__ = [
    "DimensionStatus",
    "Effect",
    "LimiterCore",
    "Op",
    "Subscriptions",
    "acquire_flow",
    "learn_flow",
    "scope_flow",
    "shares_figures",
]


@dataclass(frozen=True)
class DimensionStatus:
    """One limit of a model, as :meth:`Limiter.status` reports it."""

    name: str
    metric: str
    period: float
    limit: int
    used: int
    free: int
    in_flight: int
    next_return: float | None
    paused_until: float | None
    origin: Origin = field(default_factory=lambda: Origin("configured"))

    @classmethod
    def of(cls, lim: Limit, level: Level, origin: Origin | None = None) -> DimensionStatus:
        return cls(
            lim.name,
            lim.metric,
            lim.period,
            level.limit,
            level.used,
            level.free,
            level.in_flight,
            level.next_return,
            level.paused_until,
            origin or Origin("configured"),
        )


log = logging.getLogger("quotaflow")


def _tier_key(tier: object) -> str | None:
    if not isinstance(tier, str):
        return None  # a bad tier= is the quota book's to name
    key = tier.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    return f"tier{key}" if key.isdigit() else key


class LimiterCore:
    """Shared state and decisions of the async and sync limiters."""

    mode: str = "enforce"  # or "shadow": decide and record, never hold a call (_shadow.py)

    def __init__(
        self,
        *,
        tier: str | TierTable | None,
        quotas: Mapping[str, Sequence[Limit]] | None,
        overrides: Mapping[str, Mapping[str, int]] | None,
        unknown_model: Sequence[Limit] | None,
        headroom: float,
        project: str,
        clock: Clock | None,
        default_priority: int | str,
        shares: Mapping[str, Share] | None = None,
        scale: TimeScale | None = None,
        learned_cache: str | os.PathLike[str] | None = None,
        spend: Spend | bool | None = None,
        probe: int | None = 8,
    ) -> None:
        if not project or not isinstance(project, str) or (":" in project and " " in project):
            raise ConfigError(f"project={project!r}: give your Google Cloud project's name")
        self.scale = scale or TimeScale()
        self.spend: SpendBook | None = None
        if spend is not False:
            if spend is not None and spend is not True and not isinstance(spend, Spend):
                raise ConfigError(f"spend={spend!r}: give Spend(...), True, False or None")
            name = tier.tier if isinstance(tier, TierTable) else _tier_key(tier)
            self.spend = SpendBook(
                spend if isinstance(spend, Spend) else Spend(), name, self.scale.minute_seconds
            )
        if probe is not None and (
            isinstance(probe, bool) or not isinstance(probe, int) or probe < 1
        ):
            raise ConfigError(
                f"probe={probe!r}: give the calls in flight allowed per model before any of its "
                "figures is known (an int >= 1), or None for no cap"
            )
        self.book = QuotaBook(
            tier, quotas, overrides, unknown_model, headroom, scale=self.scale, spend=self.spend
        )
        self.book.probe = probe
        self._first_seen: dict[str, float] = {}
        self.project = project
        # scope keys are f"{namespace}{project}/{canonical}": the agents layer's budgets use
        # their own namespace, so no model name can name a budget's scope
        self.namespace = ""
        self.clock: Clock = clock or SystemClock()
        self.cache = LearnedCache(learned_cache) if learned_cache is not None else None
        if self.cache is not None:
            prefix = f"{project}/"
            for key, figures in self.cache.load(self.clock.now()).items():
                if key.startswith(prefix):
                    self.book.merge_shared(key[len(prefix) :], figures)
        # per canonical model without a request figure: when this process's requests went, for
        # the adaptive rule's first guess
        self._sent: dict[str, deque[float]] = {}
        self._polled: dict[str, float] = {}
        # how often a process reads what the fleet learned (backends that share figures)
        self.poll_every = min(1.0, self.scale.minute_seconds / 60.0)
        self.default_priority = context.priority_value(default_priority)
        # per model spelling: the way into the backend's fast lane (a backend with one, such
        # as memory, and no shares only)
        self.lanes: dict[str, LaneGate] = {}
        self.shares: dict[str, Share] = {}
        self.add_shares(shares or {})
        self._configured: dict[str, tuple[Limit, ...]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self._lock = threading.Lock()

    def add_shares(self, shares: Mapping[str, Share]) -> None:
        """Join ``shares`` to the limiter's (see :meth:`quotaflow.Limiter.add_shares`)."""
        if not isinstance(shares, Mapping):
            raise ConfigError(f"shares={shares!r}: give a mapping of agent name to Share(...)")
        for agent, share in shares.items():
            if not isinstance(agent, str) or not agent or "@" in agent:
                raise ConfigError(
                    f"shares[{agent!r}]: give agent names (no '@') mapped to Share(...) objects"
                )
            if not isinstance(share, Share):
                raise ConfigError(f"shares[{agent!r}]={share!r}: give a Share(...)")
            if self.shares.get(agent, share) != share:
                raise ConfigError(
                    f"shares[{agent!r}]: given twice, as {self.shares[agent]!r} and {share!r}; "
                    "give each agent one share"
                )
        if shares:
            self.shares.update(shares)
            self.lanes.clear()  # the fast lanes serve limiters without shares only

    def scope(self, model: str) -> tuple[str, str, tuple[Limit, ...], bool]:
        """``(scope key, canonical model, limits, needs configure)``."""
        canonical, limits = self.book.resolve(model)
        if self.shares:
            limits = limits + agent_limits(limits, self.shares)
        key = f"{self.namespace}{self.project}/{canonical}"
        return key, canonical, limits, self._configured.get(key) != limits

    def stale(self, model: str, limits: tuple[Limit, ...]) -> bool:
        """Whether ``limits`` (a grant's) are no longer ``model``'s limits."""
        try:
            return self.scope(model)[2] != limits
        except QuotaflowError:
            return False

    def configured(self, key: str, limits: tuple[Limit, ...]) -> None:
        self._configured[key] = limits

    def remember_lane(
        self, model: str, key: str, canonical: str, limits: tuple[Limit, ...], backend: Any
    ) -> None:
        """Let later acquires of ``model`` try the backend's fast lane first (a
        :class:`~quotaflow.scheduler.gate.LaneGate` in :attr:`lanes`)."""
        if (
            self.shares
            or not hasattr(backend, "settle_tokens")
            or not hasattr(getattr(backend, "lock", None), "take")
        ):
            return  # no lane, or a lock without the mutex calls the gate makes
        if any(lim.name in (SEEN, PROBE) for lim in limits):
            return  # the learning limits are charged on the full path only
        lane = backend.lane(key)
        if lane.scope_limits != frozenset(lim.name for lim in limits):
            return  # the scope has limits this limiter would not charge: the full rule only
        self.lanes[model] = LaneGate(
            self.lanes,
            model,
            key,
            canonical,
            limits,
            lane,
            backend,
            self.clock,
            self.default_priority,
        )

    def set_limit(self, model: str, name: str, amount: int) -> Limit | None:
        """Change one limit's amount (self-calibration); returns the old limit."""
        old = self.book.set_limit(model, name, amount)
        self.lanes.clear()  # the next acquire of each model reconfigures through the scope
        return old

    def learn(
        self, model: str, dimension: str, amount: int | None, quota_id: str, used: int | None
    ) -> tuple[Learned, int | None, Figure | None]:
        """Take what a 429 taught: ``amount`` (its ``quotaValue``) of ``dimension``, or, with
        ``amount=None``, the adaptive rule (``used``: what the dimension's bucket holds, if it
        has one). Returns what was done, the configured amount, and the figure to share."""
        now = self.clock.now()
        canonical, _ = self.book.resolve(model)
        if amount is None:
            held = self.book.figure(canonical, dimension)
            if (
                held is not None
                and held.kind == "adaptive"
                and not held.grown
                and now - held.at < self.scale.minute_seconds
            ):
                # one decrease per minute: the server's window still holds calls admitted
                # before the figure was set, so this 429 says nothing about the figure
                return "same", None, None
            guess = used is None  # only this process's count: a guess to grow from
            if used is None:
                sent = self._sent.get(canonical, ())
                used = sum(1 for t in sent if t > now - self.scale.minute_seconds)
            figure = adapt_down(used, now, quota_id, held)
            log.info(
                "%s: adaptive %s %d (%d served in the last minute%s)",
                canonical,
                dimension,
                figure.amount,
                used,
                ", this process only" if guess else "",
            )
        else:
            figure = Figure(amount, "learned", now, quota_id)
        result, configured = self.book.learn(canonical, dimension, figure)
        if result in ("same", "known"):
            return result, configured, None
        self.lanes.clear()
        self._save()
        return result, configured, figure

    def take_shared(self, model: str, shared: Mapping[str, str | bytes]) -> bool:
        """Merge the figures the fleet shares (JSON by dimension); ``True`` if any changed."""
        canonical, _ = self.book.resolve(model)
        now = self.clock.now()
        figures = {
            str(dim): fig.seen_at(now)
            for dim, text in shared.items()
            if (fig := Figure.from_json(text)) is not None
        }
        if figures and self.book.merge_shared(canonical, figures):
            log.info("%s: took figures the fleet learned: %s", canonical, sorted(figures))
            self.lanes.clear()
            self._save()
            return True
        return False

    def poll_due(self, key: str, now: float) -> bool:
        """Whether it is time to read the fleet's figures of ``key`` again."""
        last = self._polled.get(key)
        if last is not None and now - last < self.poll_every:
            return False
        self._polled[key] = now
        return True

    def grow_due(self, model: str) -> str | None:
        """The dimension of ``model`` whose adaptive figure has had its quiet minute."""
        canonical, _ = self.book.resolve(model)
        now = self.clock.now()
        for dim, fig in self.book.figures.get(canonical, {}).items():
            if adapt_up(fig, now, self.scale.minute_seconds) is not None:
                return dim
        return None

    def grow(self, model: str, dimension: str, used: int | None) -> tuple[str, Figure] | None:
        """The adaptive figure of ``dimension`` grown after a quiet minute, if the last minute
        used most of it (``used``: what its bucket holds): ``(dimension, figure)`` to share."""
        canonical, _ = self.book.resolve(model)
        now = self.clock.now()
        fig = self.book.figures.get(canonical, {}).get(dimension)
        if fig is None:
            return None
        if used is not None and used < 0.8 * fig.amount:
            # demand is below the figure: nothing to learn by growing; a minute starts again
            self.book.merge_shared(canonical, {dimension: replace(fig, at=now)})
            return None
        grown = adapt_up(fig, now, self.scale.minute_seconds)
        if grown is None:
            return None
        self.book.merge_shared(canonical, {dimension: grown})
        self.lanes.clear()
        self._save()
        return dimension, grown

    def _save(self) -> None:
        if self.cache is not None:
            self.cache.save({f"{self.project}/{m}": f for m, f in self.book.figures.items()})

    def request(
        self,
        model: str,
        limits: tuple[Limit, ...],
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
        deadline: float | None,
        nowait: bool,
        agent: str | None = None,
    ) -> tuple[Request, dict[str, int], int]:
        """The backend request, the cost by metric and the priority."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ConfigError(
                f"tokens={tokens!r}: give the input token estimate as an int >= 0 "
                "(round a float up with math.ceil)"
            )
        metrics = {"requests": 1, "input_tokens": tokens}
        if cost is not None and not isinstance(cost, Mapping):
            raise ConfigError(
                f"cost={cost!r}: give amounts by metric, e.g. {{'requests': 1, 'images': 2}}"
            )
        if cost:
            metrics.update(check_cost(cost))
        if any(lim.name == SEEN for lim in limits):
            metrics[SERVED] = 1
        if not any(lim.name == "rpm" for lim in limits):
            sent = self._sent.get(model)
            if sent is None:
                sent = self._sent[model] = deque()
            now = self.clock.now()
            sent.append(now)
            while sent and sent[0] <= now - self.scale.minute_seconds:
                sent.popleft()
        ctx_priority, ctx_timeout, ctx_agent = context.current()
        if agent is None:
            agent = ctx_agent
        elif agent_name_problem(agent) is not None:
            raise ConfigError(f"agent={agent!r}: {agent_name_problem(agent)}")
        prio = (
            context.priority_value(priority)
            if priority is not None
            else (ctx_priority if ctx_priority is not None else self.default_priority)
        )
        if deadline is not None and (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or math.isnan(deadline)
        ):
            raise ConfigError(
                f"deadline={deadline!r}: give a time of the limiter's clock (limiter.clock.now() "
                "+ seconds), or None"
            )
        if timeout is None:
            timeout = ctx_timeout
        if timeout is not None:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not timeout >= 0
            ):
                raise ConfigError(f"timeout={timeout!r}: give seconds >= 0 (or None to wait)")
            now = self.clock.now()
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        if self.shares:
            if agent is not None and agent not in self.shares and DEFAULT_SHARE in self.shares:
                agent = DEFAULT_SHARE  # every agent no share names: the default's, together
            by_limit = {
                lim.name: metrics.get(lim.metric, 0)
                for lim in limits
                if "@" not in lim.name or lim.name.endswith(f"@{agent}")
            }
            floors = floors_for(agent, limits, self.shares) or None
        else:
            by_limit = {lim.name: metrics.get(lim.metric, 0) for lim in limits}
            floors = None
        rid = self._prefix + str(next(self._ids))
        return Request(rid, by_limit, prio, deadline, nowait, floors), metrics, prio

    def error(self, decision: Decision, model: str) -> QuotaError:
        """The typed error for a refusal."""
        now = self.clock.now()
        dim = decision.dimension
        at = decision.at
        retry = None if at is None or math.isinf(at) else max(0.0, at - now)
        kw: dict[str, object] = {"model": model, "dimension": dim, "retry_after": retry}
        if decision.reason == "cannot_fit":
            over = decision.requested - decision.limit
            return CannotFitError(
                f"{model}: the request needs {decision.requested} on {dim!r} but the limit is "
                f"{decision.limit} ({over} over); it can never be admitted. Split the request "
                "or raise the limit (a higher tier, or overrides=...).",
                requested=decision.requested,
                limit=decision.limit,
                **kw,
            )
        if decision.reason == "exhausted":
            return QuotaExhaustedError(
                f"{model}: the {dim!r} quota ({decision.limit}) is spent until it resets "
                f"in {retry:.0f}s; retry after the reset, use another model, or raise the tier.",
                resets_at=at,
                **kw,  # type: ignore[arg-type]
            )
        if decision.reason == "timeout":
            when = "" if retry is None else f" (capacity on {dim!r} expected in {retry:.3f}s)"
            return QuotaTimeoutError(
                f"{model}: no room before the deadline{when}; allow a longer timeout=, "
                "raise the priority, or shed load.",
                resets_at=at,
                **kw,  # type: ignore[arg-type]
            )
        when = "only after a running call ends" if retry is None else f"in {retry:.3f}s"
        return WouldBlockError(
            f"{model}: no room right now on {dim or 'the line'!r}; try again {when}.",
            resets_at=at,
            **kw,  # type: ignore[arg-type]
        )

    def grant_fields(
        self,
        request: Request,
        model: str,
        scope: str,
        metrics: dict[str, int],
        limits: tuple[Limit, ...],
        started: float,
        prio: int,
    ) -> tuple[str, str, str, dict[str, int], tuple[Limit, ...], float, float, int]:
        """A granted request's fields of its permit: ``(id, model, scope, metrics, limits,
        granted_at, waited, priority)`` (see
        :class:`~quotaflow.scheduler.permit_state.PermitState`)."""
        now = self.clock.now()
        return request.id, model, scope, metrics, limits, now, now - started, prio

    def status(
        self, model: str, limits: tuple[Limit, ...], levels: Mapping[str, Level]
    ) -> dict[str, DimensionStatus]:
        origins = self.book.origins(model)
        return {
            lim.name: DimensionStatus.of(lim, levels[lim.name], origins.get(lim.name))
            for lim in limits
            if lim.name in levels
        }


@dataclass(slots=True)
class Effect:
    """One step the drivers carry out for :func:`acquire_flow`.

    ``op`` is a backend method (``submit``, ``dispatch``, ``cancel``), ``wait`` (sleep until a
    decision arrives or ``until``; the driver sends back the delivered decision or ``None``), or
    ``yield`` (let other tasks run briefly).
    """

    op: str
    until: float | None = None


def acquire_flow(request: Request, clock: Clock, first: Decision) -> Any:
    """The waiting logic of ``acquire``, written once; the async and sync drivers run it.

    A generator: it yields :class:`Effect` values and receives their results; it returns the
    final :class:`Decision` (granted or refused). ``first`` is what ``submit`` answered.
    """
    d = first
    spins = 0
    while d.outcome == "waiting":
        until = d.at
        if request.deadline is not None:
            until = request.deadline if until is None else min(until, request.deadline)
        new: Decision | None = yield Effect("wait", until)
        if new is not None:
            d = new
            continue
        now = clock.now()
        if request.deadline is not None and now >= request.deadline:
            won: Decision | None = yield Effect("cancel")
            if won is not None:
                return won
            return Decision(request.id, "refused", d.at, d.dimension, "timeout")
        new = yield Effect("dispatch")
        if new is not None:
            d, spins = new, 0
        elif d.at is not None and now >= d.at:
            spins += 1
            if spins > 3:  # not the head any more: wait to be told
                d = Decision(d.id, "waiting", None, d.dimension)
            else:
                yield Effect("yield")  # woke a hair early on a coarse clock
    return d


class Subscriptions:
    """The scopes a limiter listens to, written once for the async and the sync driver.

    Listening is per limiter object, configuring is per core: a limiter sharing its core with
    another (``SyncLimiter.sharing``) must subscribe even when the scope is already configured.
    """

    __slots__ = ("_backend", "_deliver", "_keys")

    def __init__(self, backend: Any, deliver: Callable[[Decision], None]) -> None:
        self._backend = backend
        self._deliver = deliver
        self._keys: set[str] = set()

    def ensure(self, key: str) -> None:
        """Listen to ``key`` if not already."""
        if key not in self._keys:
            self._backend.subscribe(key, self._deliver)
            self._keys.add(key)

    def close(self) -> None:
        """Stop listening to every scope."""
        for key in self._keys:
            self._backend.unsubscribe(key, self._deliver)
        self._keys.clear()


LEARNED_TTL = 86_400.0
"""Seconds a figure learned from the server is kept in a shared backend (and a cache file)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One backend call of :func:`scope_flow` or :func:`learn_flow`: ``backend.<name>(*args)``."""

    name: str
    args: tuple[Any, ...]


def shares_figures(backend: Any) -> bool:
    """Whether ``backend`` keeps learned figures for the fleet (``learned``/``learn``)."""
    return hasattr(backend, "learned") and hasattr(backend, "learn")


def scope_flow(
    core: LimiterCore, model: str, shared: bool
) -> Generator[Op, Any, tuple[str, str, tuple[Limit, ...]]]:
    """The scope of ``model``, configured with its current limits: what the fleet learned is
    read now and then, an adaptive figure grows after a quiet minute. Run by both limiters."""
    key, canonical, limits, fresh = core.scope(model)
    changed = False
    before = {lim.name for lim in limits}
    # while a model has no request figure, every call reads what the fleet learned (one more
    # round trip, against the burst of 429s a late figure costs); then once a second
    eager = SEEN in before
    if shared and (eager or core.poll_due(key, core.clock.now())):
        figures = yield Op("learned", (key,))
        changed = bool(figures) and core.take_shared(canonical, figures)
    due = core.grow_due(canonical) if canonical in core.book.figures else None
    if due is not None:
        levels = yield Op("status", (key, core.clock.now()))
        level = levels.get(due)
        grown = core.grow(canonical, due, level.used if level is not None else None)
        if grown is not None:
            changed = True
            if shared:
                yield Op("learn", (key, grown[0], grown[1].to_json(), LEARNED_TTL))
    if any(lim.name == PROBE for lim in limits):
        now = core.clock.now()
        if now - core._first_seen.setdefault(canonical, now) >= core.scale.minute_seconds:
            core.book.end_probe(canonical)  # a quiet minute: the model has room
            core.lanes.clear()
            changed = True
    if changed:
        key, canonical, limits, fresh = core.scope(model)
    if fresh:
        yield Op("configure", (key, limits, core.clock.now()))
        core.configured(key, limits)
    if changed:
        # a dimension the fleet adopted moments ago: paused as the process that learned it
        # paused it (the server was at its limit; the new bucket holds nothing of it)
        now = core.clock.now()
        for lim in limits:
            fig = core.book.figures.get(canonical, {}).get(lim.name)
            if (
                lim.name not in before
                and fig is not None
                and lim.period <= core.scale.minute_seconds
                and now < fig.at + lim.period
            ):
                yield Op("pause", (key, lim.name, fig.at + lim.period, now))
    return key, canonical, limits


def learn_flow(
    core: LimiterCore,
    model: str,
    dimension: str,
    amount: int | None,
    quota_id: str,
    shared: bool,
) -> Generator[Op, Any, tuple[Learned, int | None]]:
    """Take what a 429 taught (see :meth:`Limiter.learn`). Run by both limiters.

    The new limits are configured and a new dimension paused before the figure is shared: the
    calls of this process that start meanwhile see the figure at once."""
    key, canonical, limits = yield from scope_flow(core, model, False)
    used: int | None = None
    names = {lim.name for lim in limits}
    if amount is None and (dimension in names or SEEN in names):
        levels = yield Op("status", (key, core.clock.now()))
        level = levels.get(SEEN) or levels.get(dimension)
        # what the server served in the last minute: settled calls (in-flight ones may yet
        # be refused)
        used = max(0, level.used - level.in_flight) if level is not None else None
    result, configured, figure = core.learn(canonical, dimension, amount, quota_id, used)
    if figure is None:
        return result, configured
    if shared:  # first: the others pause it too when they take it
        yield Op("learn", (key, dimension, figure.to_json(), LEARNED_TTL))
    key, canonical, limits = yield from scope_flow(core, model, False)
    fresh = result == "adopted" or (result == "adapted" and figure.growing)
    lim = next((x for x in limits if x.name == dimension), None)
    if fresh and lim is not None and lim.period <= core.scale.minute_seconds:
        # the server is at its limit now and the new bucket holds nothing of it: admit nothing
        # on this dimension until whatever the server counted has left its window
        now = core.clock.now()
        yield Op("pause", (key, dimension, now + lim.period, now))
    return result, configured
