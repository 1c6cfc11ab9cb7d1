"""The checks of an acquire's arguments: the cost of a call by metric (``tokens=``,
``cost=``) and its deadline (``deadline=``, ``timeout=``), each refused with a
:class:`~quotaflow.errors.ConfigError` naming the argument and the fix."""

from __future__ import annotations

import math
from collections.abc import Mapping

from quotaflow.clock import Clock
from quotaflow.errors import ConfigError
from quotaflow.limits import Limit, check_cost
from quotaflow.quotas.book import SEEN

__all__ = ["LimitsShape", "call_deadline", "call_metrics", "limits_shape"]

LimitsShape = tuple[tuple[Limit, ...], bool, bool, tuple[tuple[str, str], ...]]


def limits_shape(limits: tuple[Limit, ...]) -> LimitsShape:
    """What every request reads of a model's limits, worked out once per tuple: the tuple,
    whether it has the served limit and the ``rpm`` limit, and its ``(name, metric)`` pairs."""
    return (
        limits,
        any(lim.name == SEEN for lim in limits),
        any(lim.name == "rpm" for lim in limits),
        tuple((lim.name, lim.metric) for lim in limits),
    )


def call_metrics(tokens: int, cost: Mapping[str, int] | None) -> dict[str, int]:
    """The amounts of a call by metric: one request, ``tokens`` input tokens, and ``cost``."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ConfigError(
            f"tokens={tokens!r}: give the input token estimate as an int >= 0 "
            "(round a float up with math.ceil)"
        )
    metrics = {"requests": 1, "input_tokens": tokens}
    if cost is not None and type(cost) is not dict and not isinstance(cost, Mapping):
        raise ConfigError(
            f"cost={cost!r}: give amounts by metric, e.g. {{'requests': 1, 'images': 2}}"
        )
    if cost:
        metrics.update(check_cost(cost))
    return metrics


def call_deadline(deadline: float | None, timeout: float | None, clock: Clock) -> float | None:
    """The time of ``clock`` by which a call is admitted or refused: the earlier of
    ``deadline`` and ``timeout`` seconds from now (``None``: no deadline)."""
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or math.isnan(deadline)
    ):
        raise ConfigError(
            f"deadline={deadline!r}: give a time of the limiter's clock (limiter.clock.now() "
            "+ seconds), or None"
        )
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ConfigError(f"timeout={timeout!r}: give seconds >= 0 (or None to wait)")
        now = clock.now()
        deadline = now + timeout if deadline is None else min(deadline, now + timeout)
    return deadline
