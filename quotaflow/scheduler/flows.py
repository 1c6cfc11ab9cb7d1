"""The generator flows both limiters run: the waiting of ``acquire`` (:func:`acquire_flow`),
configuring a model's scope (:func:`scope_flow`) and taking what a 429 taught
(:func:`learn_flow`), and the scopes a limiter listens to (:class:`Subscriptions`).

A flow yields the effects and backend calls it needs and receives their results; the async
and the sync driver carry them out, so the logic is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quotaflow.backends.base import Decision, Request
from quotaflow.clock import Clock
from quotaflow.limits import Limit
from quotaflow.quotas.book import PROBE, SEEN, Learned
from quotaflow.quotas.pricing import SPEND_SCOPE

if TYPE_CHECKING:
    from quotaflow.scheduler.core import LimiterCore

__all__ = [
    "LEARNED_TTL",
    "Effect",
    "Op",
    "Subscriptions",
    "acquire_flow",
    "learn_flow",
    "poll_flow",
    "scope_flow",
    "shares_figures",
]


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
    core: LimiterCore, model: str, shared: bool, later: Callable[[str], bool] | None = None
) -> Generator[Op, Any, tuple[str, str, tuple[Limit, ...]]]:
    """The scope of ``model``, configured with its current limits: what the fleet learned is
    read now and then, an adaptive figure grows after a quiet minute. Run by both limiters.

    ``later(model)``, if given, may take a due read of the fleet's figures off the call's path
    (``True``: it runs :func:`poll_flow` alongside; the call goes on with the limits it has,
    and a grant under limits that changed meanwhile is asked again, see ``Limiter.acquire``).
    """
    key, canonical, limits, fresh = core.scope(model)
    changed = False
    before = {lim.name for lim in limits}
    # while a model has no request figure, every call reads what the fleet learned (one more
    # round trip, against the burst of 429s a late figure costs); then once a second. A
    # scope the server never meters (spend) has nothing to read
    eager = SEEN in before
    if (
        shared
        and canonical != SPEND_SCOPE
        and (eager or core.poll_due(key, core.clock.now()))
        and (eager or later is None or not later(model))
    ):
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
        yield from _pause_adopted(core, key, canonical, limits, before)
    return key, canonical, limits


def poll_flow(core: LimiterCore, model: str) -> Generator[Op, Any, None]:
    """Read what the fleet learned for ``model`` and take it (the read :func:`scope_flow`
    leaves to ``later``)."""
    key, canonical, limits, _ = core.scope(model)
    before = {lim.name for lim in limits}
    figures = yield Op("learned", (key,))
    if figures and core.take_shared(canonical, figures):
        key, canonical, limits, fresh = core.scope(model)
        if fresh:
            yield Op("configure", (key, limits, core.clock.now()))
            core.configured(key, limits)
        yield from _pause_adopted(core, key, canonical, limits, before)


def _pause_adopted(
    core: LimiterCore, key: str, canonical: str, limits: tuple[Limit, ...], before: set[str]
) -> Generator[Op, Any, None]:
    """A dimension the fleet adopted moments ago: paused as the process that learned it
    paused it (the server was at its limit; the new bucket holds nothing of it)."""
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
