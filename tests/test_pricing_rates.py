"""What a call costs does not depend on what was priced before it: every model of the shipped
table at every tier, asked in any order, costs what its prices say."""

from __future__ import annotations

import math
import random

from quotaflow.quotas.pricing import SERVICE_TIERS, PriceTable, load_prices


def _expected(
    table: PriceTable, model: str, tier: str | None, i: int, o: int, t: int, c: int
) -> int | None:
    p = table.price(model)
    if p is None:
        return None
    cached = min(c, i)
    think = p.output if p.thinking is None else p.thinking
    cache = p.input if p.cached_input is None else p.cached_input
    usd = (i - cached) * p.input + cached * cache + o * p.output + t * think
    return math.ceil(usd * table.multiplier(tier) - 1e-9)


def test_every_model_and_tier_in_any_order() -> None:
    table = load_prices()
    rng = random.Random(7)
    asks = [
        (model, tier, rng.randrange(10**6), rng.randrange(10**5), rng.randrange(10**4), c)
        for model in [*table.models, "models/gemini-2.5-flash", "no-such-model"]
        for tier in (None, *SERVICE_TIERS)
        for c in (0, rng.randrange(10**6))
    ]
    for _ in range(3):
        rng.shuffle(asks)
        for model, tier, i, o, t, c in asks:
            got = table.cost_micros(
                model,
                input_tokens=i,
                output_tokens=o,
                thoughts_tokens=t,
                cached_tokens=c,
                tier=tier,
            )
            assert got == _expected(table, model, tier, i, o, t, c), (model, tier)


def test_an_overridden_table_has_its_own_prices() -> None:
    table = load_prices()
    before = table.cost_micros("gemini-2.5-flash", input_tokens=1000, tier="flex")
    cheaper = table.with_overrides({"gemini-2.5-flash": {"input": 0.01, "output": 0.02}})
    assert cheaper.cost_micros("gemini-2.5-flash", input_tokens=1000, tier="flex") == 5
    assert table.cost_micros("gemini-2.5-flash", input_tokens=1000, tier="flex") == before
