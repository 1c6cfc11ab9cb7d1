"""What the async and the sync limiter share: quota lookup, cost vectors, errors, permits.

The drivers (``limiter.py``, ``sync.py``) only wait and do I/O; every decision is made here or in
the backend.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from quotaflow import context
from quotaflow.backends.base import Decision, Request
from quotaflow.buckets import Level
from quotaflow.clock import Clock, SystemClock
from quotaflow.context import current_priority as _current_priority
from quotaflow.errors import (
    CannotFitError,
    ConfigError,
    PermitError,
    QuotaError,
    QuotaExhaustedError,
    QuotaTimeoutError,
    UnknownModelError,
    WouldBlockError,
)
from quotaflow.limits import RPD, RPM, TPD, TPM, Limit, check_cost, check_quota
from quotaflow.shares import Share, agent_limits, floors_for
from quotaflow.tiers import ModelLimits, TierTable, load_tier

__all__ = [
    "DimensionStatus",
    "Effect",
    "LimiterCore",
    "PermitState",
    "QuotaBook",
    "Subscriptions",
    "acquire_flow",
]


def limits_from_table(entry: ModelLimits) -> tuple[Limit, ...]:
    """Gemini's dimensions of one tier-table entry as limits (absent figures: no limit)."""
    out: list[Limit] = []
    if entry.rpm is not None:
        out.append(RPM(entry.rpm))
    if entry.tpm is not None:
        out.append(TPM(entry.tpm))
    if entry.rpd is not None:
        out.append(RPD(entry.rpd))
    if entry.tpd is not None:
        out.append(TPD(entry.tpd))
    return tuple(out)


class QuotaBook:
    """Resolves a model name to its canonical name and its limits (headroom applied)."""

    def __init__(
        self,
        tier: str | TierTable | None,
        quotas: Mapping[str, Sequence[Limit]] | None,
        overrides: Mapping[str, Mapping[str, int]] | None,
        unknown_model: Sequence[Limit] | None,
        headroom: float,
        use_env: bool = True,
    ) -> None:
        if not 0.0 <= headroom < 1.0:
            raise ConfigError(
                f"headroom={headroom!r}: give the fraction of each limit to keep free, "
                "0 <= headroom < 1 (e.g. 0.05)"
            )
        table: TierTable | None
        if tier is None:
            table = None
        elif isinstance(tier, TierTable):
            table = tier
        else:
            table = load_tier(tier)
        if table is not None:
            if overrides:
                table = table.with_overrides(overrides)
            if use_env:
                table = table.with_env_overrides(os.environ)
        elif overrides:
            raise ConfigError("overrides=... needs a tier table: pass tier='free' (or another)")
        self.table = table
        self.headroom = headroom
        self._quotas = {self._plain(k): check_quota(v) for k, v in (quotas or {}).items()}
        self._unknown = check_quota(unknown_model) if unknown_model is not None else None
        self._cache: dict[str, tuple[str, tuple[Limit, ...]]] = {}
        self._canonical: dict[str, tuple[str, tuple[Limit, ...]]] = {}
        self._calibrated: dict[str, dict[str, int]] = {}

    @staticmethod
    def _plain(name: str) -> str:
        return name[len("models/") :] if name.startswith("models/") else name

    def _scale(self, limits: tuple[Limit, ...]) -> tuple[Limit, ...]:
        if not self.headroom:
            return limits
        return tuple(lim.scaled(1.0 - self.headroom) for lim in limits)

    def resolve(self, model: str) -> tuple[str, tuple[Limit, ...]]:
        """``(canonical name, limits)`` for ``model``; raises UnknownModelError."""
        hit = self._cache.get(model)
        if hit is not None:
            return hit
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"model={model!r}: give a model name such as 'gemini-2.5-flash'")
        plain = self._plain(model.strip())
        if plain in self._quotas:
            out = (plain, self._scale(self._quotas[plain]))
        else:
            try:
                if self.table is None:
                    raise UnknownModelError(model, self._close(plain))
                canonical, entry = self.table.resolve(model)
                out = (canonical, self._scale(limits_from_table(entry)))
            except UnknownModelError as exc:
                if self._unknown is None:
                    if self._quotas:
                        raise UnknownModelError(
                            model, self._close(plain) or exc.suggestions
                        ) from None
                    raise
                out = (plain, self._scale(self._unknown))
        canonical = out[0]
        first = self._canonical.setdefault(canonical, out)
        if first[1] == out[1]:
            out = first  # every spelling of a model shares one tuple of limits
        calibrated = self._calibrated.get(canonical)
        if calibrated:
            out = (
                canonical,
                tuple(
                    lim.with_amount(calibrated[lim.name]) if lim.name in calibrated else lim
                    for lim in out[1]
                ),
            )
        self._cache[model] = out
        return out

    def _close(self, name: str) -> list[str]:
        import difflib

        return difflib.get_close_matches(name, list(self._quotas), n=3, cutoff=0.5)

    def set_limit(self, model: str, name: str, amount: int) -> Limit | None:
        """Change one limit's amount (self-calibration); returns the old limit."""
        canonical, limits = self.resolve(model)
        old = next((lim for lim in limits if lim.name == name), None)
        if old is None:
            return None
        # kept per canonical model, so that every spelling resolved later sees it too
        self._calibrated.setdefault(canonical, {})[name] = amount
        for key, value in list(self._cache.items()):
            if value[0] == canonical:
                del self._cache[key]
        return old


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

    @classmethod
    def of(cls, lim: Limit, level: Level) -> DimensionStatus:
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
        )


PermitPhase = Literal["granted", "sent", "settled", "released"]


@dataclass(slots=True)
class PermitState:
    """The life of a permit: granted -> sent -> settled, or granted -> released. Pure."""

    id: str
    model: str
    scope: str
    metrics: dict[str, int]  # by metric
    limits: tuple[Limit, ...]
    granted_at: float
    waited: float
    priority: int
    # for grants of a fast lane: the backend's ``settle_tokens`` (see MemoryBackend)
    quick: Callable[[str, str, int | None, float, float], None] | None
    phase: PermitPhase = "granted"
    sent_at: float | None = None
    response_at: float | None = None
    actual: dict[str, int] | None = None  # the real usage given to settle, by metric

    def mark_sent(self, now: float) -> None:
        if self.phase in ("settled", "released"):
            raise PermitError(f"permit {self.id} is already {self.phase}; acquire a new one")
        if self.sent_at is None:
            self.sent_at = now
        self.phase = "sent"

    def mark_response(self, now: float) -> None:
        self.mark_sent(now)
        if self.response_at is None:
            self.response_at = now

    def plan_settle(
        self, actual_metrics: Mapping[str, int], now: float
    ) -> tuple[dict[str, int] | None, float]:
        """The actual cost by limit name (``None``: as granted) and the anchor time."""
        if self.phase in ("settled", "released"):
            raise PermitError(
                f"permit {self.id} is already {self.phase}: settle() runs once per call"
            )
        actual_metrics = check_cost(actual_metrics)
        self.sent_at = self.sent_at if self.sent_at is not None else now
        self.phase = "settled"
        self.actual = dict(actual_metrics)
        at = self.response_at if self.response_at is not None else now
        if not actual_metrics:
            return None, at
        by_limit = {
            lim.name: actual_metrics[lim.metric]
            for lim in self.limits
            if lim.metric in actual_metrics
        }
        return by_limit, at

    def plan_quick_settle(self, input_tokens: int | None, now: float) -> float | None:
        """:meth:`plan_settle` for a lane grant settled with input tokens only; returns the
        anchor time, or ``None`` if this settle needs the full way (it then raises or plans)."""
        if self.quick is None or self.phase in ("settled", "released"):
            return None
        if input_tokens is not None:
            if input_tokens.__class__ is not int or input_tokens < 0:
                return None
            self.actual = {"input_tokens": input_tokens}
        if self.sent_at is None:
            self.sent_at = now
        self.phase = "settled"
        return self.response_at if self.response_at is not None else now

    def plan_release(self) -> bool:
        """True if the lease must be returned (the call never reached the server)."""
        if self.phase in ("settled", "released"):
            return False
        if self.phase == "sent":
            raise PermitError(
                f"permit {self.id} was sent: a call that reached the server keeps its request "
                "count; use settle() instead of release()"
            )
        self.phase = "released"
        return True


class LimiterCore:
    """Shared state and decisions of the async and sync limiters."""

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
    ) -> None:
        if not project or not isinstance(project, str) or (":" in project and " " in project):
            raise ConfigError(f"project={project!r}: give your Google Cloud project's name")
        self.book = QuotaBook(tier, quotas, overrides, unknown_model, headroom)
        self.project = project
        self.clock: Clock = clock or SystemClock()
        self.default_priority = context.priority_value(default_priority)
        self.shares: dict[str, Share] = dict(shares or {})
        for agent, share in self.shares.items():
            if not agent or "@" in agent or not isinstance(share, Share):
                raise ConfigError(
                    f"shares[{agent!r}]: give agent names (no '@') mapped to Share(...) objects"
                )
        self._configured: dict[str, tuple[Limit, ...]] = {}
        # per model spelling: what the fast path needs (see `fast_state`); a backend with a
        # fast lane (memory) and no shares only
        self.lanes: dict[str, tuple[str, str, tuple[Limit, ...], Any, Any, Any, int]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self._lock = threading.Lock()

    def scope(self, model: str) -> tuple[str, str, tuple[Limit, ...], bool]:
        """``(scope key, canonical model, limits, needs configure)``."""
        canonical, limits = self.book.resolve(model)
        if self.shares:
            limits = limits + agent_limits(limits, self.shares)
        key = f"{self.project}/{canonical}"
        return key, canonical, limits, self._configured.get(key) != limits

    def configured(self, key: str, limits: tuple[Limit, ...]) -> None:
        self._configured[key] = limits

    def remember_lane(
        self, model: str, key: str, canonical: str, limits: tuple[Limit, ...], backend: Any
    ) -> None:
        """Let later acquires of ``model`` try the backend's fast lane first."""
        if self.shares or not hasattr(backend, "settle_tokens"):
            return
        lane = backend.lane(key)
        version = lane.version
        if lane.scope_limits != frozenset(lim.name for lim in limits):
            return  # the scope has limits this limiter would not charge: the full rule only
        self.lanes[model] = (
            key,
            canonical,
            limits,
            lane,
            backend.lock,
            backend.settle_tokens,
            version,
        )

    def set_limit(self, model: str, name: str, amount: int) -> Limit | None:
        """Change one limit's amount (self-calibration); returns the old limit."""
        old = self.book.set_limit(model, name, amount)
        self.lanes.clear()  # the next acquire of each model reconfigures through the scope
        return old

    def fast_state(
        self,
        model: str,
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
    ) -> PermitState | None:
        """The permit of a request the fast lane grants at once, or ``None`` (take the line).

        Only for plain requests (one request, ``tokens`` input tokens, no other cost; the
        transports' ``cost={"requests": 1}`` is the same): where nobody waits and
        the lane's bounds say it fits, the exact rule would grant it too, so neither priority
        nor a deadline can change the outcome.
        """
        hit = self.lanes.get(model)
        if (
            hit is None
            or (
                cost is not None
                and (
                    len(cost) != 1
                    or cost.get("requests").__class__ is not int
                    or cost["requests"] != 1
                )
            )
            or tokens.__class__ is not int
            or tokens < 0
            or (timeout is not None and not timeout >= 0)
        ):
            return None
        key, canonical, limits, lane, lock, quick, version = hit
        if lane.version != version:  # the scope's limits changed: look again (full path)
            self.lanes.pop(model, None)
            return None
        if priority is None:
            prio = _current_priority()
            if prio is None:
                prio = self.default_priority
        else:
            prio = context.priority_value(priority)
        rid = self._prefix + str(next(self._ids))
        now = self.clock.now()
        with lock:
            if not lane.take(rid, tokens, now):
                return None
        return PermitState(
            rid,
            canonical,
            key,
            {"requests": 1, "input_tokens": tokens},
            limits,
            now,
            0.0,
            prio,
            quick,
        )

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
        if cost:
            metrics.update(check_cost(cost))
        ctx_priority, ctx_timeout, ctx_agent = context.current()
        if agent is None:
            agent = ctx_agent
        prio = (
            context.priority_value(priority)
            if priority is not None
            else (ctx_priority if ctx_priority is not None else self.default_priority)
        )
        if timeout is None:
            timeout = ctx_timeout
        if timeout is not None:
            if not timeout >= 0:
                raise ConfigError(f"timeout={timeout!r}: give seconds >= 0 (or None to wait)")
            now = self.clock.now()
            deadline = now + timeout if deadline is None else min(deadline, now + timeout)
        if self.shares:
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

    def permit_state(
        self,
        request: Request,
        model: str,
        scope: str,
        metrics: dict[str, int],
        limits: tuple[Limit, ...],
        started: float,
        prio: int,
    ) -> PermitState:
        now = self.clock.now()
        return PermitState(
            request.id,
            model,
            scope,
            metrics,
            limits,
            now,
            now - started,
            prio,
            None,
        )

    def status(
        self, limits: tuple[Limit, ...], levels: Mapping[str, Level]
    ) -> dict[str, DimensionStatus]:
        return {
            lim.name: DimensionStatus.of(lim, levels[lim.name])
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
