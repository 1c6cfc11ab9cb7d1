"""Prices, spend caps and Priority sub-limits as data, and the spend scope of a limiter."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from quotaflow import Limiter, errors
from quotaflow.clock import ManualClock
from quotaflow.limits import RPM, TPM
from quotaflow.quotas.pricing import (
    SPEND_SCOPE,
    USD_MICROS,
    Spend,
    SpendBook,
    load_prices,
    priority_limits,
)
from quotaflow.quotas.tiers import SHIPPED_TIERS, load_tier

REPO = Path(__file__).resolve().parents[1]

# Models of the shipped tier tables that may go without a price, each with its reason. A call to
# an unpriced model is charged to neither the spend cap nor a dollar budget, so a model belongs
# here only when no public price can be found (say, a preview Google has not priced yet); the
# reason names what was searched. Empty: every listed model has a price.
UNPRICED: dict[str, str] = {}


def test_every_shipped_figure_cites_a_source_with_url_and_date() -> None:
    table = load_prices()
    for sid, source in table.sources.items():
        assert source.url and source.read, sid
    for name, price in table.models.items():
        cited = {**{f: price.source for f in ("input", "output")}, **price.sources}
        for figure in ("input", "output", "cached_input", "cache_storage"):
            if getattr(price, figure) is not None:
                assert cited.get(figure, price.source) in table.sources, (name, figure)
            else:
                assert figure in price.missing, f"{name}.{figure}: absent but not named missing"
    for tier, cap in table.spend_caps.items():
        assert cap.source in table.sources, tier
    assert table.service_tiers.source in table.sources


def test_every_model_of_every_shipped_tier_table_has_a_price() -> None:
    prices = load_prices()
    listed = {
        name
        for tier in SHIPPED_TIERS
        for model, limits in load_tier(tier).models.items()
        for name in (model, *limits.aliases)
    }
    unpriced = {name for name in listed if prices.price(name) is None}
    assert unpriced == set(UNPRICED), (
        "price these in tier_tables/prices/gemini.toml or list them in UNPRICED with the reason: "
        f"{sorted(unpriced - set(UNPRICED))}; no longer unpriced or listed: "
        f"{sorted(set(UNPRICED) - unpriced)}"
    )
    assert all(reason.strip() for reason in UNPRICED.values())


def test_shipped_caps_are_the_documented_figures() -> None:
    caps = load_prices().spend_caps
    assert {t: (c.usd, c.period) for t, c in caps.items()} == {
        "tier1": (10, 600),
        "tier2": (50, 600),
        "tier3": (200, 600),
    }
    assert "200" in (caps["tier2"].note or "")  # the translated page's figure is kept as data


def test_cost_in_micro_dollars_at_each_service_tier() -> None:
    prices = load_prices()
    # gemini-2.5-flash: $0.30 in, $2.50 out per 1M tokens = micro-dollars per token
    std = prices.cost_micros("gemini-2.5-flash", input_tokens=1000, output_tokens=100)
    assert std == 300 + 250
    thought = prices.cost_micros(
        "gemini-2.5-flash", input_tokens=1000, output_tokens=100, thoughts_tokens=100
    )
    assert thought == std + 250  # thinking at the output price
    assert prices.cost_micros("gemini-2.5-flash", input_tokens=1000, tier="flex") == 150
    assert prices.cost_micros("gemini-2.5-flash", input_tokens=1000, tier="priority") == 600
    assert prices.cost_micros("models/gemini-2.5-flash-preview-09-2025", input_tokens=10) == 3
    assert prices.cost_micros("no-such-model", input_tokens=10) is None


def test_overrides_and_a_file_of_ones_own(tmp_path: Path) -> None:
    table = load_prices().with_overrides({"my-model": {"input": 1.0, "output": 2.0}})
    assert table.cost_micros("my-model", input_tokens=3, output_tokens=1) == 5
    bad = tmp_path / "prices.toml"
    bad.write_text('[models.m]\ninput = 1\noutput = 1\nsource = "nowhere"\n')
    with pytest.raises(errors.TierTableError, match="unknown source id 'nowhere'"):
        load_prices(bad)


def test_an_announced_price_change_applies_from_its_date(tmp_path: Path) -> None:
    file = tmp_path / "prices.toml"
    file.write_text(
        '[sources.page]\nurl = "https://example.com/pricing"\nread = 2026-12-07\n'
        '[models.m]\ninput = 1\noutput = 2\ncached_input = 0.5\nsource = "page"\n'
        '[[models.m.changes]]\nfrom = 2027-01-01\ninput = 3\nsource = "page"\n'
        "[[models.m.changes]]\nfrom = 2027-06-01\noutput = 10\n"
    )
    table = load_prices(file)

    def cost(day: dt.date) -> int | None:
        return table.cost_micros("m", input_tokens=10, output_tokens=1, on=day)

    assert cost(dt.date(2026, 12, 31)) == 12  # 10 * 1 + 1 * 2
    assert cost(dt.date(2027, 1, 1)) == 32  # input changed, output kept
    assert cost(dt.date(2027, 6, 1)) == 40  # both changes
    assert cost(dt.date(2026, 12, 31)) == 12  # asked again for an earlier day
    after = table.price("m", dt.date(2027, 7, 1))
    assert after is not None and after.cached_input == 0.5 and after.changes == ()

    for text, problem in (
        ('from = 2027-01-01\ninput = 3\nsource = "gone"', "changes\\[0\\]: unknown source"),
        ("input = 3", "from"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[models.m]\ninput = 1\noutput = 2\n[[models.m.changes]]\n{text}\n")
        with pytest.raises(errors.TierTableError, match=problem):
            load_prices(bad)
    backwards = tmp_path / "backwards.toml"
    backwards.write_text(
        "[models.m]\ninput = 1\noutput = 2\n"
        "[[models.m.changes]]\nfrom = 2027-06-01\ninput = 3\n"
        "[[models.m.changes]]\nfrom = 2027-01-01\ninput = 2\n"
    )
    with pytest.raises(errors.TierTableError, match="date order"):
        load_prices(backwards)


def test_a_limiter_prices_calls_by_its_clocks_day() -> None:
    """The shipped Flash prices double on 2027-01-01: a limiter whose clock has passed that day
    charges the new prices."""
    clock = ManualClock(dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.timezone.utc).timestamp())
    limiter = Limiter(tier="tier1", clock=clock)
    assert limiter.spend is not None
    before = limiter.spend.cost("gemini-3.7-flash", input_tokens=1000, output_tokens=1000)
    clock.advance(120)
    after = limiter.spend.cost("gemini-3.7-flash", input_tokens=1000, output_tokens=1000)
    assert (before, after) == (4500, 9000)
    shipped = load_prices()
    for model in ("gemini-3.6-flash", "gemini-3.7-flash", "gemini-3.8-flash"):
        old = shipped.cost_micros(model, input_tokens=1000, on=dt.date(2026, 12, 31))
        new = shipped.cost_micros(model, input_tokens=1000, on=dt.date(2027, 1, 1))
        assert old is not None and new == 2 * old, model


def test_spend_config_errors_name_the_field() -> None:
    with pytest.raises(errors.ConfigError, match="cap_usd"):
        Spend(cap_usd=-1)
    with pytest.raises(errors.ConfigError, match="period"):
        Spend(period=0)
    with pytest.raises(errors.ConfigError, match="priority_fraction"):
        Spend(priority_fraction=2)
    with pytest.raises(errors.ConfigError, match="spend="):
        Limiter(tier="tier1", spend="lots")  # type: ignore[arg-type]


def test_the_tier_brings_its_cap_and_a_cap_of_ones_own_replaces_it() -> None:
    assert Limiter(tier="tier1").quota(SPEND_SCOPE)[0].amount == 10_000_000
    assert Limiter(tier="Tier 3").quota(SPEND_SCOPE)[0].amount == 200_000_000
    own = Limiter(tier="tier1", spend=Spend(cap_usd=0.5, period=2.0)).quota(SPEND_SCOPE)
    assert (own[0].amount, own[0].period, own[0].metric) == (500_000, 2.0, USD_MICROS)
    assert Limiter(tier="free").spend is not None
    assert Limiter(tier="free").spend.limit() is None  # type: ignore[union-attr]
    assert Limiter(tier="tier1", spend=False).spend is None


def test_priority_sub_limits_are_a_fraction_of_the_standard_ones() -> None:
    subs = priority_limits((RPM(100), TPM(10_000)), 0.3, {"tpm.priority": 999})
    assert [(s.name, s.amount, s.metric) for s in subs] == [
        ("rpm.priority", 30, "priority_requests"),
        ("tpm.priority", 999, "priority_input_tokens"),
    ]
    tier3 = {lim.name: lim.amount for lim in Limiter(tier="tier3").quota("gemini-2.5-flash")}
    assert tier3["rpm.priority"] == int(tier3["rpm"] * 0.3)
    tier1 = {lim.name for lim in Limiter(tier="tier1").quota("gemini-2.5-flash")}
    assert "rpm.priority" not in tier1  # Priority is offered on Tier 2 and 3


def test_an_unpriced_model_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    book = SpendBook(Spend(), "tier1")
    with caplog.at_level(logging.WARNING, "quotaflow.spend"):
        assert book.cost("my-tuned-model", input_tokens=5) is None
        assert book.cost("my-tuned-model", input_tokens=5) is None
    assert sum("my-tuned-model" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.anyio
async def test_the_spend_scope_holds_the_cap_in_every_window() -> None:
    clock = ManualClock(1000.0)
    limiter = Limiter(tier="tier1", spend=Spend(cap_usd=0.001, period=10.0), clock=clock)
    first = await limiter.acquire_nowait(SPEND_SCOPE, 0, cost={USD_MICROS: 600})
    first.mark_sent()
    with pytest.raises(errors.WouldBlockError):
        await limiter.acquire_nowait(SPEND_SCOPE, 0, cost={USD_MICROS: 600})
    await first.settle(**{USD_MICROS: 300})  # the call cost less than reserved
    second = await limiter.acquire_nowait(SPEND_SCOPE, 0, cost={USD_MICROS: 600})
    second.mark_sent()
    await second.settle()
    with pytest.raises(errors.WouldBlockError):
        await limiter.acquire_nowait(SPEND_SCOPE, 0, cost={USD_MICROS: 200})
    clock.advance(10.1)
    third = await limiter.acquire_nowait(SPEND_SCOPE, 0, cost={USD_MICROS: 1000})
    await third.release()


def test_the_examples_of_docs_spend_run(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    text = (REPO / "docs" / "spend.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    ran = 0
    for block in blocks:
        if "await " in block:
            body = "".join(f"    {line}\n" for line in block.splitlines())
            compile(f"async def _example():\n{body}", "docs/spend.md", "exec")
            continue
        exec(compile(block, "docs/spend.md", "exec"), {})
        ran += 1
    assert ran >= 3
    out = capsys.readouterr().out
    assert "800\n150\n" in out and "10000000 usd_micros / 600s" in out
    assert "1500\n" in out  # the 2027 price of gemini-3.8-flash


@pytest.mark.anyio
async def test_a_model_permit_and_its_spend_permit_both_end_even_if_one_refuses() -> None:
    """The call flow settles (or releases) the model permit and the spend permit as one:
    when the model permit refuses (settled already; sent, so it cannot be released), the
    spend permit still ends."""
    from quotaflow.flow.spend import Paired

    lim = Limiter(None, quotas={"m": [RPM(10)], "quotaflow-spend-test": [RPM(10)]})
    for end in ("settle", "release"):
        model = await lim.acquire("m")
        spend = await lim.acquire("quotaflow-spend-test")
        model.mark_sent()
        if end == "settle":
            await model.settle()
        with pytest.raises(errors.PermitError):
            await getattr(Paired(model, spend), end)()
        assert spend.phase == ("settled" if end == "settle" else "released")
        if end == "release":
            await model.settle()
    status = await lim.status("quotaflow-spend-test")
    assert (status["rpm"].used, status["rpm"].in_flight) == (1, 0)
