"""Spend and service tiers in the call flow: the spend permit beside the model permit, and
what both settle with once the response has said which tier served it and what it used."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Generator
from typing import Any

from quotaflow.gemini import Usage
from quotaflow.quotas.pricing import USD_MICROS, SpendBook

__all__ = ["PRIORITY_METRICS", "Paired", "priority_cost", "settle_spend"]

PRIORITY_METRICS = ("priority_requests", "priority_input_tokens")


def priority_cost(requests: int, tokens: int) -> dict[str, int]:
    """What a Priority request takes from its model's Priority sub-limits."""
    return {"priority_requests": requests, "priority_input_tokens": tokens}


class _Both:
    """Awaits two settles (or releases) in turn; the second runs even if the first raises."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: Any, b: Any) -> None:
        self._a, self._b = a, b

    def __await__(self) -> Generator[Any, None, None]:
        a, b = self._a, self._b
        try:
            if isinstance(a, Awaitable):
                yield from a.__await__()
        except GeneratorExit:  # closed unfinished: the second is never started
            if inspect.iscoroutine(b):
                b.close()
            raise
        except BaseException:
            if isinstance(b, Awaitable):
                yield from b.__await__()
            raise
        if isinstance(b, Awaitable):
            yield from b.__await__()


def _joined(a: Any, b: Any) -> Any:
    if a is None and b is None:
        return None  # sync permits
    return _Both(a, b)


class Paired:
    """A model permit and the project's spend permit, used as one by the call flow and the
    drivers: ``usd_micros`` settles the spend permit, everything else the model permit."""

    __slots__ = ("_waited", "model", "spend")

    def __init__(self, model: Any, spend: Any, waited: float | None = None) -> None:
        self.model = model
        self.spend = spend
        self._waited = waited  # what the two waited together (asked at once: overlapping)

    @property
    def waited(self) -> float:
        if self._waited is not None:
            return self._waited
        return float(self.model.waited) + float(self.spend.waited)

    @property
    def priority(self) -> int:
        return int(self.model.priority)

    def mark_sent(self) -> None:
        self.model.mark_sent()
        self.spend.mark_sent()

    def mark_response_started(self) -> None:
        self.model.mark_response_started()
        self.spend.mark_response_started()

    def settle(self, input_tokens: int | None = None, **metrics: int) -> Any:
        usd = metrics.pop(USD_MICROS, None)
        a = self.model.settle(input_tokens, **metrics)
        b = self.spend.settle() if usd is None else self.spend.settle(**{USD_MICROS: usd})
        return _joined(a, b)

    def release(self) -> Any:
        return _joined(self.model.release(), self.spend.release())


def settle_spend(
    book: SpendBook | None,
    model: str,
    usage: Usage | None,
    requested: str | None,
    served: str | None,
) -> dict[str, int]:
    """The spend and Priority amounts a call settles with: its cost at the tier that served it
    (from ``usageMetadata``: prompt, candidates and thoughts tokens), and no Priority amounts
    when a Priority request was served at another tier (a downgrade)."""
    out: dict[str, int] = {}
    if requested == "priority" and served != "priority":
        out.update(priority_cost(0, 0))
    elif requested == "priority" and usage is not None and usage.input_tokens:
        out["priority_input_tokens"] = usage.input_tokens
    if book is not None and usage is not None and (usage.input_tokens or usage.total_tokens):
        cost = book.cost(
            model,
            served,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            thoughts_tokens=usage.thoughts_tokens,
            cached_tokens=usage.cached_tokens,
        )
        if cost is not None:
            out[USD_MICROS] = cost
    return out
