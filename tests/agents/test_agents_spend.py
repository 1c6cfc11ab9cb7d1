"""Dollar budgets per agent, the spend and tier of each call in the audit log, and a 402
audited as billing: google-genai through an agent handle to the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from agents_helpers import FLASH, KEY, Records, emulator_config, quotas
from google import genai
from google.genai import errors

from quotaflow import BillingError, Limiter
from quotaflow.agents import Agents, Policy
from quotaflow.emulator import serve
from quotaflow.quotas.pricing import Spend, load_prices

PRICE = load_prices().price(FLASH)
assert PRICE is not None
POLICY = {
    "agents": {
        "writer": {"grants": {"content": "write"}, "budget": {"usd_per_day": 0.0005}},
    }
}


def _emulator(**kw: Any) -> Any:
    cfg = emulator_config(**kw)
    models = [
        m.model_copy(update={"input_price": PRICE.input, "output_price": PRICE.output})
        for m in cfg.models
    ]
    return serve(cfg.model_copy(update={"models": models}))


def _limiter() -> Agents:
    return Agents(
        Limiter(None, quotas=quotas(), spend=Spend(cap_usd=None)), Policy.from_dict(POLICY)
    )


def test_budget_limits_in_dollars_reset_by_the_pacific_calendar() -> None:
    limits = Policy.from_dict(
        {"agents": {"a": {"budget": {"usd_per_day": 2.5, "usd_per_month": 40}}}}
    ).budgets()["a"]
    assert [(lim.name, lim.amount, lim.metric) for lim in limits] == [
        ("usd_per_day", 2_500_000, "usd_micros"),
        ("usd_per_month", 40_000_000, "usd_micros"),
    ]
    day, month = (lim.reset for lim in limits)
    t = 1_772_481_600.0  # 2026-03-02 12:00 PST
    assert day.window_end(t) - t == 12 * 3600  # type: ignore[union-attr]
    assert month.window_start(t) == 1_772_352_000.0  # type: ignore[union-attr]  # Mar 1 00:00 PST


@pytest.mark.anyio
async def test_a_dollar_budget_stops_the_agent_and_the_audit_shows_spend() -> None:
    records = Records()
    with _emulator() as served:
        handle = _limiter().agent("writer", audit=records.log)
        client = genai.Client(
            api_key=KEY, http_options=handle.http_options(base_url=served.base_url)
        )
        config = {"max_output_tokens": 20}
        ok = 0
        try:
            with pytest.raises(errors.ClientError, match="budget"):
                for _ in range(20):
                    await client.aio.models.generate_content(
                        model=FLASH, contents="words " * 100, config=config
                    )
                    ok += 1
        finally:
            await client.aio.aclose()
        spent = served.emulator.stats()["spend"]["proj"]["spent_micros"]
    got = records.flushed()
    assert 1 <= ok < 20
    assert spent <= 500  # never over the day's $0.0005
    paid = [r for r in got if r.outcome == "ok"]
    assert sum(r.spend_micros or 0 for r in paid) == spent
    assert all(r.service_tier == "standard" for r in paid)
    assert got[-1].reason == "budget" and got[-1].decision == "denied"


@pytest.mark.anyio
async def test_a_402_is_audited_as_billing_and_never_retried() -> None:
    records = Records()
    with _emulator(balances={"proj": 0.0}) as served:
        handle = _limiter().agent("writer", audit=records.log)
        client = genai.Client(
            api_key=KEY, http_options=handle.http_options(base_url=served.base_url)
        )
        try:
            with pytest.raises(BillingError):
                await client.aio.models.generate_content(
                    model=FLASH, contents="hi", config={"max_output_tokens": 20}
                )
        finally:
            await client.aio.aclose()
        assert served.emulator.stats()["models"][FLASH]["received"] == 1
    (record,) = records.flushed()
    assert (record.reason, record.status, record.outcome) == ("billing", 402, "error")
    assert KEY not in (record.error or "")
