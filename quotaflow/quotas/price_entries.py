"""The entries of a price table: one model's prices and their announced changes, a usage
tier's spend cap, the service tiers' multipliers. Pure."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from quotaflow._frozen import Frozen

__all__ = ["ModelPrice", "Price", "PriceChange", "SpendCap", "TierPrices", "day_now", "epoch_day"]

Price = Annotated[float, Field(ge=0)]

_EPOCH = dt.date(1970, 1, 1)


def day_now() -> int:
    """Today (UTC) as days since 1970-01-01: the day whose prices apply."""
    return int(time.time() // 86400)


def epoch_day(days: int) -> dt.date:
    """The date ``days`` days after 1970-01-01."""
    return _EPOCH + dt.timedelta(days=days)


class PriceChange(Frozen):
    """Prices a model takes from a date on (at 00:00 UTC; Google bills by Pacific days, so a
    change applies up to eight hours early): each figure given replaces the one before, the
    others stay.

    Attributes:
        since: the first day of the new prices (``from = 2027-01-01`` in TOML).
        input, output, thinking, cached_input, cache_storage: the new figures.
        source: the source id of the new figures.
        note: remarks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    since: dt.date = Field(alias="from")
    input: Price | None = None
    output: Price | None = None
    thinking: Price | None = None
    cached_input: Price | None = None
    cache_storage: Price | None = None
    source: str | None = None
    note: str | None = None


_CHANGED = ("input", "output", "thinking", "cached_input", "cache_storage")


class ModelPrice(Frozen):
    """The standard prices of one model, USD per 1,000,000 tokens.

    Attributes:
        input: prompt tokens (``promptTokenCount``).
        output: generated tokens (``candidatesTokenCount``), thinking included on Gemini's page.
        thinking: thinking tokens (``thoughtsTokenCount``); ``None``: the output price.
        cached_input: cached prompt tokens (``cachedContentTokenCount``); ``None``: the input
            price (never less than what is billed).
        cache_storage: context-cache storage, per 1,000,000 tokens per hour (informational).
        source, sources: the source id of every figure (``sources`` per figure).
        missing: figures that could not be found (left out on purpose).
        note: remarks.
        changes: announced price changes (:class:`PriceChange`), in date order; the figures
            above are the ones in force before the first.
    """

    input: Price
    output: Price
    thinking: Price | None = None
    cached_input: Price | None = None
    cache_storage: Price | None = None
    source: str | None = None
    sources: dict[str, str] = Field(default_factory=dict)
    missing: tuple[str, ...] = ()
    note: str | None = None
    changes: tuple[PriceChange, ...] = ()

    @model_validator(mode="after")
    def _changes_in_order(self) -> ModelPrice:
        days = [c.since for c in self.changes]
        if days != sorted(days) or len(set(days)) != len(days):
            raise ValueError(
                f"changes: give each change once, in date order (got {[str(d) for d in days]})"
            )
        return self

    def on(self, day: dt.date) -> ModelPrice:
        """The prices in force on ``day`` (this entry with every change up to ``day`` applied;
        the result has no changes left)."""
        if not self.changes:
            return self
        fields: dict[str, Any] = {}
        source = self.source
        for change in self.changes:
            if change.since > day:
                break
            for name in _CHANGED:
                value = getattr(change, name)
                if value is not None:
                    fields[name] = value
            source = change.source or source
        return self.model_copy(update={**fields, "source": source, "changes": ()})


class SpendCap(Frozen):
    """A usage tier's spend cap: ``usd`` per rolling ``period`` seconds."""

    usd: Annotated[float, Field(gt=0)]
    period: Annotated[float, Field(gt=0)] = 600.0
    source: str | None = None
    note: str | None = None


class TierPrices(Frozen):
    """The multiplier of the standard price per service tier."""

    standard: Annotated[float, Field(gt=0)] = 1.0
    flex: Annotated[float, Field(gt=0)] = 0.5
    batch: Annotated[float, Field(gt=0)] = 0.5
    priority: Annotated[float, Field(gt=0)] = 2.0
    source: str | None = None
    note: str | None = None
