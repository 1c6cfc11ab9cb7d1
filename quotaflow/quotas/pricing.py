"""Prices, spend caps and service tiers as data; what a call costs in micro-dollars. Pure.

Gemini bills per token (USD per 1,000,000 tokens, which is exactly micro-dollars per token) and
caps what a billing account may spend per rolling 10 minutes by usage tier; a call over the cap
gets 429. quotaflow meters spend as the metric ``usd_micros`` on a scope of its own per project
(:data:`SPEND_SCOPE`), reserved from the estimate (input tokens plus ``maxOutputTokens`` at the
model's price) and settled from ``usageMetadata``. The shipped table is
``tier_tables/prices/gemini.toml``; every figure names its source.

Example:
    >>> prices = load_prices()
    >>> prices.cost_micros("gemini-2.5-flash", input_tokens=1000, output_tokens=200)
    800
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from quotaflow._frozen import Frozen
from quotaflow.clock import Clock
from quotaflow.errors import ConfigError, TierTableError
from quotaflow.limits import Limit, Rolling
from quotaflow.quotas.model_names import bare, name_candidates
from quotaflow.quotas.price_entries import (
    ModelPrice,
    PriceChange,
    SpendCap,
    TierPrices,
    day_now,
    epoch_day,
)
from quotaflow.quotas.schema import Source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "PRIORITY_FRACTION",
    "SPEND_SCOPE",
    "USD_MICROS",
    "ModelPrice",
    "PriceChange",
    "PriceTable",
    "ServiceTier",
    "Spend",
    "SpendBook",
    "SpendCap",
    "load_prices",
    "priority_limits",
]

log = logging.getLogger("quotaflow.spend")

SPEND_SCOPE = "quotaflow:spend"  # no model name can be it (a model has no ":")
"""The scope (a pseudo-model of the project, named like a model) that holds the rolling
spend limit."""

USD_MICROS = "usd_micros"
"""The metric of spend: millionths of a US dollar."""

PRIORITY_FRACTION = 0.3
"""The Priority tier's default limit as a fraction of the standard one (priority-inference)."""

ServiceTier = Literal["standard", "flex", "priority", "batch"]
"""How a request is served: ``service_tier`` (``serviceTier`` on the wire), or a Batch job."""

SERVICE_TIERS: tuple[ServiceTier, ...] = ("standard", "flex", "priority", "batch")

_FOUND_MAX = 1024
_Rates = tuple[float, float, float, float, float]


class PriceTable(Frozen):
    """Prices per model, service-tier multipliers and spend caps per usage tier, with sources."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(default=1, alias="schema")
    sources: dict[str, Source] = Field(default_factory=dict)
    service_tiers: TierPrices = Field(default_factory=TierPrices)
    spend_caps: dict[str, SpendCap] = Field(default_factory=dict)
    models: dict[str, ModelPrice] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_sources(self) -> PriceTable:
        cited = [(f"models.{n}", p.source) for n, p in self.models.items()]
        cited += [
            (f"models.{n}.sources.{k}", s)
            for n, p in self.models.items()
            for k, s in p.sources.items()
        ]
        cited += [
            (f"models.{n}.changes[{i}]", c.source)
            for n, p in self.models.items()
            for i, c in enumerate(p.changes)
        ]
        cited += [(f"spend_caps.{t}", c.source) for t, c in self.spend_caps.items()]
        cited.append(("service_tiers", self.service_tiers.source))
        for where, sid in cited:
            if sid is not None and sid not in self.sources:
                raise ValueError(f"{where}: unknown source id {sid!r}; define [sources.{sid}]")
        return self

    def price(self, model: str, on: dt.date | None = None) -> ModelPrice | None:
        """The price of ``model`` (version suffixes stripped, as tier tables resolve names) in
        force on ``on`` (default: today, UTC)."""
        found = self._found
        if model in found:
            price = found[model]
        else:
            lower = {k.lower(): v for k, v in self.models.items()}
            price = None
            for name in name_candidates(bare(model).lower()):
                if name in lower:
                    price = lower[name]
                    break
            if len(found) < _FOUND_MAX:
                found[model] = price
        if price is None or not price.changes:
            return price
        return price.on(on if on is not None else epoch_day(day_now()))

    @functools.cached_property
    def _found(self) -> dict[str, ModelPrice | None]:
        """Prices by the name asked (a call's model), up to ``_FOUND_MAX`` names."""
        return {}

    def multiplier(self, tier: str | None) -> float:
        """The price multiplier of a service tier (``None``: standard)."""
        return float(getattr(self.service_tiers, tier or "standard"))

    def cost_micros(
        self,
        model: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        thoughts_tokens: int = 0,
        cached_tokens: int = 0,
        tier: str | None = None,
        on: dt.date | None = None,
    ) -> int | None:
        """What a call costs in micro-dollars (rounded up), or ``None`` if ``model`` has no
        price. ``cached_tokens`` is the cached part of ``input_tokens``; ``on``: the day whose
        prices apply (default: today, UTC)."""
        day = day_now() if on is None else (on - epoch_day(0)).days
        return self.cost_on(
            day, model, input_tokens, output_tokens, thoughts_tokens, cached_tokens, tier
        )

    def cost_on(
        self,
        day: int,
        model: str,
        input_tokens: int,
        output_tokens: int,
        thoughts_tokens: int,
        cached_tokens: int,
        tier: str | None,
    ) -> int | None:
        """:meth:`cost_micros` on ``day`` (days since 1970-01-01, UTC), by position."""
        kept, cache = self._rates
        if kept[0] != day:  # another day: its prices may differ
            cache.clear()
            kept[0] = day
        try:
            rates = cache[(model, tier)]
        except KeyError:
            rates = self._rates_on(model, tier, epoch_day(day))
            if len(cache) < _FOUND_MAX:
                cache[(model, tier)] = rates
        if rates is None:
            return None
        p_input, p_cache, p_output, p_think, mult = rates
        cached = min(cached_tokens, input_tokens)
        usd = (
            (input_tokens - cached) * p_input
            + cached * p_cache
            + output_tokens * p_output
            + thoughts_tokens * p_think
        )
        return math.ceil(usd * mult - 1e-9)

    def _rates_on(self, model: str, tier: str | None, day: dt.date) -> _Rates | None:
        """The per-token prices (input, cached input, output, thinking) of ``model`` on
        ``day`` and the multiplier of ``tier``."""
        p = self.price(model, day)
        if p is None:
            return None
        think = p.output if p.thinking is None else p.thinking
        cache = p.input if p.cached_input is None else p.cached_input
        return (p.input, cache, p.output, think, self.multiplier(tier))

    @functools.cached_property
    def _rates(self) -> tuple[list[int], dict[tuple[str, str | None], _Rates | None]]:
        """:meth:`_rates_on` of today by ``(model, tier)`` (up to ``_FOUND_MAX`` pairs), and
        the day they are of."""
        return [-1], {}

    def with_overrides(self, models: Mapping[str, Mapping[str, Any]]) -> PriceTable:
        """This table with some models' prices replaced or added: ``{"m": {"input": 0.1,
        "output": 0.4}}`` (a figure of your own needs no source)."""
        data = self.model_dump(by_alias=True)
        for name, fields in models.items():
            entry = {**data["models"].get(name, {}), **dict(fields)}
            entry.setdefault("source", None)
            if "source" not in fields:
                entry["source"] = None
                entry["sources"] = {}
            data["models"][name] = entry
        return _validate(data, "overrides")


def _validate(data: Any, where: str) -> PriceTable:
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise TierTableError(f"{where}: invalid price table: {problems}") from None


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """Load a price table (default: the shipped ``tier_tables/prices/gemini.toml``)."""
    if path is None:
        return _shipped()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: cannot read the price table: {exc}") from exc
    return _validate(data, str(p))


@functools.cache
def _shipped() -> PriceTable:
    from quotaflow.quotas.tiers import _shipped_dir

    file = _shipped_dir() / "prices" / "gemini.toml"
    return _validate(tomllib.loads(file.read_text(encoding="utf-8")), str(file))


def priority_limits(
    limits: tuple[Limit, ...], fraction: float, configured: Mapping[str, int] | None = None
) -> tuple[Limit, ...]:
    """The Priority sub-limits of a model's rolling request and token limits: for ``rpm``,
    ``rpm.priority`` on metric ``priority_requests`` (and so on), ``fraction`` of the standard
    one unless ``configured`` names its amount. Priority calls count in both."""
    out: list[Limit] = []
    names = {lim.name for lim in limits}
    for lim in limits:
        if not isinstance(lim.reset, Rolling) or lim.metric not in ("requests", "input_tokens"):
            continue
        name = f"{lim.name}.priority"
        if name in names:
            continue
        amount = (configured or {}).get(name)
        if amount is None:
            amount = max(1, math.floor(lim.amount * fraction)) if lim.amount else 0
        out.append(Limit(name, amount, lim.period, f"priority_{lim.metric}", lim.reset))
    return tuple(out)


@dataclass(frozen=True)
class Spend:
    """How a limiter meters spend (``Limiter(spend=Spend(...))``).

    Args:
        cap_usd: the rolling spend cap in USD; ``"tier"`` (default): the usage tier's figure from
            the price table (none for the free tier); ``None``: no cap (spend is still priced).
        period: the cap's rolling window in seconds; default: the table's (Gemini: 600 s, ten
            minutes, so ten of the limiter's ``minute_seconds`` when time is compressed).
        prices: a :class:`PriceTable` or a TOML path; default: the shipped table.
        priority_fraction: the Priority sub-limits as a fraction of the standard limits.
        priority_limits: amounts of single sub-limits, e.g. ``{"rpm.priority": 40}``.
        priority: add the Priority sub-limits to every model; ``None`` (default): on the tiers
            that offer Priority (``tier2``, ``tier3``) or when ``priority_limits`` is given.
    """

    cap_usd: float | Literal["tier"] | None = "tier"
    period: float | None = None
    prices: PriceTable | str | os.PathLike[str] | None = None
    priority_fraction: float = PRIORITY_FRACTION
    priority_limits: Mapping[str, int] | None = None
    priority: bool | None = None

    def __post_init__(self) -> None:
        if self.cap_usd is not None and self.cap_usd != "tier":
            if isinstance(self.cap_usd, bool) or not isinstance(self.cap_usd, (int, float)):
                raise ConfigError(f"Spend(cap_usd={self.cap_usd!r}): give USD > 0, 'tier' or None")
            if not self.cap_usd > 0:
                raise ConfigError(f"Spend(cap_usd={self.cap_usd!r}): give USD > 0, 'tier' or None")
        if self.period is not None and not self.period > 0:
            raise ConfigError(f"Spend(period={self.period!r}): give seconds > 0 (Gemini: 600)")
        if not 0 < self.priority_fraction <= 1:
            raise ConfigError(
                f"Spend(priority_fraction={self.priority_fraction!r}): give 0 < fraction <= 1"
            )


class SpendBook:
    """A limiter's prices and spend cap (made from :class:`Spend` and the usage tier)."""

    def __init__(self, spend: Spend, tier: str | None, minute_seconds: float = 60.0) -> None:
        prices = spend.prices
        self.prices = prices if isinstance(prices, PriceTable) else load_prices(prices)
        self.spec = spend
        cap = self.prices.spend_caps.get(tier or "") if spend.cap_usd == "tier" else None
        usd: float | None = cap.usd if cap is not None else None
        if isinstance(spend.cap_usd, (int, float)):
            usd = float(spend.cap_usd)
        # the table's period is in real seconds: a compressed minute (minute_seconds) scales it
        period = spend.period or (cap.period if cap is not None else 600.0) * minute_seconds / 60

        self.cap_usd = usd
        self.period = period
        self.priority = (
            spend.priority
            if spend.priority is not None
            else tier in ("tier2", "tier3") or bool(spend.priority_limits)
        )
        self._unpriced: set[str] = set()
        # the limiter's clock (its day picks the prices in force); None: the system's
        self.clock: Clock | None = None

    def limit(self) -> Limit | None:
        """The rolling spend limit (``spend`` on metric ``usd_micros``), or ``None``."""
        if self.cap_usd is None:
            return None
        return Limit("spend", math.floor(self.cap_usd * 1_000_000), self.period, USD_MICROS)

    def cost(
        self,
        model: str,
        tier: str | None = None,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        thoughts_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> int | None:
        """:meth:`PriceTable.cost_micros` on the clock's day, saying once per model when it
        has no price."""
        day = day_now() if self.clock is None else int(self.clock.now() // 86400)
        micros = self.prices.cost_on(
            day, model, input_tokens, output_tokens, thoughts_tokens, cached_tokens, tier
        )
        if micros is None and model not in self._unpriced:
            self._unpriced.add(model)
            log.warning(
                "%s has no price in the price table: its calls are not charged to the spend "
                "cap or dollar budgets; add it with Spend(prices=load_prices().with_overrides"
                "({...}))",
                model,
            )
        return micros

    def sub_limits(self, limits: tuple[Limit, ...]) -> tuple[Limit, ...]:
        """The Priority sub-limits to add to a model's limits."""
        return priority_limits(limits, self.spec.priority_fraction, self.spec.priority_limits)

    def __repr__(self) -> str:
        cap = "none" if self.cap_usd is None else f"${self.cap_usd:g}/{self.period:g}s"
        return f"SpendBook(cap={cap}, models={len(self.prices.models)})"
