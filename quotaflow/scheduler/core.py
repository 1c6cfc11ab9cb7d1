"""What the async and the sync limiter share: :class:`LimiterCore`, the state and decisions
behind both (scopes, cost vectors, errors, the fast-lane entry, what a 429 taught).

The flows both drivers run (:func:`acquire_flow`, :func:`scope_flow`, :func:`learn_flow`) live
in :mod:`quotaflow.scheduler.flows`; this module re-exports them.

The drivers (``limiter.py``, ``sync.py``) only wait and do I/O; every decision is made here or in
the backend.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from quotaflow import context
from quotaflow.backends.base import Decision, Request
from quotaflow.clock import Clock, SystemClock
from quotaflow.errors import (
    ConfigError,
    QuotaError,
    QuotaflowError,
)
from quotaflow.limits import Limit
from quotaflow.quotas.book import PROBE, SEEN, SERVED, Learned, QuotaBook
from quotaflow.quotas.learned import Figure, LearnedCache, TimeScale, adapt_down, adapt_up
from quotaflow.quotas.pricing import Spend, SpendBook
from quotaflow.quotas.shares import (
    DEFAULT_SHARE,
    Share,
    agent_limits,
    agent_name_problem,
    floors_for,
)
from quotaflow.quotas.tiers import TierTable
from quotaflow.scheduler.arguments import LimitsShape, call_deadline, call_metrics, limits_shape
from quotaflow.scheduler.buckets import Level
from quotaflow.scheduler.flows import (
    LEARNED_TTL,
    Effect,
    Op,
    Subscriptions,
    acquire_flow,
    learn_flow,
    poll_flow,
    scope_flow,
    shares_figures,
)
from quotaflow.scheduler.gate import LaneGate
from quotaflow.scheduler.refusals import refusal_error
from quotaflow.scheduler.status import DimensionStatus

__all__ = [
    "LEARNED_TTL",
    "DimensionStatus",
    "Effect",
    "LimiterCore",
    "Op",
    "Subscriptions",
    "acquire_flow",
    "learn_flow",
    "poll_flow",
    "scope_flow",
    "shares_figures",
]


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
        if self.spend is not None:
            self.spend.clock = self.clock  # the day whose prices apply
        self.cache = LearnedCache(learned_cache) if learned_cache is not None else None
        if self.cache is not None:
            prefix = f"{project}/"
            for key, figures in self.cache.load(self.clock.now()).items():
                if key.startswith(prefix):
                    self.book.merge_shared(key[len(prefix) :], figures)
        # per canonical model without a request figure: when this process's requests went, for
        # the adaptive rule's first guess
        self._sent: dict[str, deque[float]] = {}
        self._shapes: dict[int, LimitsShape] = {}  # by id of the limits (see limits_shape)
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
        metrics = call_metrics(tokens, cost)
        shape = self._shapes.get(id(limits))
        if shape is None or shape[0] is not limits:
            shape = limits_shape(limits)
            if not self.shares:  # with shares, scope() makes the tuple anew on every call
                if len(self._shapes) > 64:
                    self._shapes.clear()
                self._shapes[id(limits)] = shape
        if shape[1]:
            metrics[SERVED] = 1
        if not shape[2]:
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
        if timeout is None:
            timeout = ctx_timeout
        deadline = call_deadline(deadline, timeout, self.clock)
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
            by_limit = {name: metrics.get(metric, 0) for name, metric in shape[3]}
            floors = None
        rid = self._prefix + str(next(self._ids))
        return Request(rid, by_limit, prio, deadline, nowait, floors), metrics, prio

    def error(self, decision: Decision, model: str) -> QuotaError:
        """The typed error for a refusal."""
        return refusal_error(decision, model, self.clock.now())

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
