"""Spend caps, 402 and service tiers end to end: google-genai and httpx through the quota
transports to the emulator over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from google import genai
from google.genai import types

from quotaflow import RPD, RPM, TPM, BillingError, Limiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.quotas.pricing import SPEND_SCOPE, USD_MICROS, Spend, load_prices
from quotaflow.transports import QuotaTransport, genai_http_options

KEY = "test-key"
FLASH = "gemini-2.5-flash"
PERIOD = 1.0
SHIPPED = load_prices().price(FLASH)
assert SHIPPED is not None


def _config(**kw: Any) -> EmulatorConfig:
    return EmulatorConfig(
        minute_seconds=PERIOD,
        keys=[{"key": KEY, "project": "proj"}],  # type: ignore[list-item]
        models=[
            ModelConfig(
                name=FLASH,
                rpm=kw.pop("rpm", 1000),
                tpm=100_000,
                rpd=100_000,
                input_price=SHIPPED.input,
                output_price=SHIPPED.output,
            )
        ],
        **kw,
    )


def _limiter(spend: Spend, rpm: int = 1000) -> Limiter:
    quota = [RPM(rpm, PERIOD), TPM(100_000, PERIOD), RPD(100_000)]
    return Limiter(tier=None, quotas={FLASH: quota}, spend=spend, project="proj")


def _spend(served: ServedEmulator) -> dict[str, int]:
    entry: dict[str, int] = served.emulator.stats()["spend"].get("proj", {})
    return entry


@pytest.fixture
def capped() -> Iterator[ServedEmulator]:
    with serve(_config(spend_cap_usd=0.001, spend_window_seconds=PERIOD)) as s:
        yield s


@pytest.mark.anyio
async def test_a_spend_cap_that_binds_first_earns_no_429(capped: ServedEmulator) -> None:
    limiter = _limiter(Spend(cap_usd=0.001, period=PERIOD))
    options = genai_http_options(limiter, base_url=capped.base_url, api_version="v1beta")
    client = genai.Client(api_key=KEY, http_options=options)
    config = types.GenerateContentConfig(max_output_tokens=30)
    done = 0

    async def worker() -> None:
        nonlocal done
        for _ in range(5):
            await client.aio.models.generate_content(
                model=FLASH, contents="spend " * 40, config=config
            )
            done += 1

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(worker)
    finally:
        await client.aio.aclose()
    stats = capped.emulator.stats()["models"][FLASH]
    spend = _spend(capped)
    assert done == 30 and stats["rejected"] == 0
    assert spend["spent_micros"] > 2 * 1000  # the cap bound: the run took several windows
    assert spend["max_window_micros"] <= 1000
    level = (await limiter.status(SPEND_SCOPE))["spend"]
    assert level.in_flight == 0


@pytest.mark.anyio
async def test_an_empty_balance_fails_fast_with_billing_error() -> None:
    with serve(_config(balances={"proj": 0.0})) as served:
        limiter = _limiter(Spend(cap_usd=1.0, period=PERIOD))
        options = genai_http_options(limiter, base_url=served.base_url, api_version="v1beta")
        client = genai.Client(api_key=KEY, http_options=options)
        try:
            with pytest.raises(BillingError, match=r"402.*billing.*Add funds") as info:
                await client.aio.models.generate_content(model=FLASH, contents="hi")
        finally:
            await client.aio.aclose()
        assert KEY not in str(info.value)
        assert served.emulator.stats()["models"][FLASH]["received"] == 1  # never retried
        level = (await limiter.status(SPEND_SCOPE))["spend"]
        assert level.used == 0 and level.in_flight == 0  # a refused call is not billed


@pytest.mark.anyio
async def test_priority_is_metered_and_a_downgrade_is_read_from_the_header() -> None:
    # the server's Priority sub-limit is 0.3 x 10 rpm = 3; the limiter is told 100 on purpose
    with serve(_config(rpm=10)) as served:
        limiter = _limiter(Spend(cap_usd=None, priority_limits={"rpm.priority": 100}), rpm=10)
        body = {
            "contents": [{"role": "user", "parts": [{"text": "urgent " * 20}]}],
            "serviceTier": "priority",
            "generationConfig": {"maxOutputTokens": 20},
        }
        infos = []
        url = f"{served.base_url}/v1beta/models/{FLASH}:generateContent"
        async with httpx.AsyncClient(transport=QuotaTransport(limiter)) as http:
            for _ in range(5):
                r = await http.post(url, json=body, headers={"x-goog-api-key": KEY})
                assert r.status_code == 200
                infos.append(r.extensions["quotaflow"])
        served_at = [i.service_tier for i in infos]
        assert served_at == ["priority"] * 3 + ["standard"] * 2
        assert all(i.requested_tier == "priority" for i in infos)
        # the same usage costs twice as much at Priority as at Standard
        assert abs(infos[0].spend - 2 * infos[4].spend) <= 1  # each rounded up
        assert sum(i.spend for i in infos) == _spend(served)["spent_micros"]
        status = await limiter.status(FLASH)
        assert status["rpm.priority"].used == 3  # the downgraded calls gave theirs back
        assert status["rpm"].used == 5  # Priority counts inside the standard limit


@pytest.mark.anyio
async def test_flex_is_priced_at_half() -> None:
    with serve(_config()) as served:
        limiter = _limiter(Spend(cap_usd=None))
        url = f"{served.base_url}/v1beta/models/{FLASH}:generateContent"
        spent = {}
        async with httpx.AsyncClient(transport=QuotaTransport(limiter)) as http:
            for tier in ("standard", "flex"):
                body = {"contents": [{"parts": [{"text": "later " * 40}]}], "serviceTier": tier}
                r = await http.post(url, json=body, headers={"x-goog-api-key": KEY})
                spent[tier] = r.extensions["quotaflow"].spend
        assert spent["flex"] * 2 in (spent["standard"], spent["standard"] + 1)
        assert _spend(served)["spent_micros"] == sum(spent.values())
        assert USD_MICROS not in (await limiter.status(FLASH))


@pytest.mark.anyio
async def test_a_spend_429_pauses_spend_until_the_window_frees(capped: ServedEmulator) -> None:
    # the limiter believes in $1 per window; the server caps at $0.001 and says so
    limiter = _limiter(Spend(cap_usd=1.0, period=PERIOD))
    url = f"{capped.base_url}/v1beta/models/{FLASH}:generateContent"
    body = {
        "contents": [{"parts": [{"text": "x " * 5000}]}],
        "generationConfig": {"maxOutputTokens": 1},
    }
    async with httpx.AsyncClient(transport=QuotaTransport(limiter)) as http:
        statuses = []
        for _ in range(3):
            r = await http.post(url, json=body, headers={"x-goog-api-key": KEY})
            statuses.append(r.status_code)
    assert statuses == [200, 200, 200]  # the 429s were absorbed by waiting out the window
    rejected = capped.emulator.stats()["models"][FLASH]["rejected_by_dimension"]
    assert rejected.get("spend", 0) >= 1
    assert _spend(capped)["max_window_micros"] <= 1000


def test_the_sync_transport_prices_and_caps_spend_too(capped: ServedEmulator) -> None:
    from quotaflow import SyncLimiter
    from quotaflow.transports import SyncQuotaTransport

    sync = SyncLimiter.sharing(_limiter(Spend(cap_usd=0.001, period=PERIOD)))
    url = f"{capped.base_url}/v1beta/models/{FLASH}:generateContent"
    body = {
        "contents": [{"parts": [{"text": "s " * 3000}]}],
        "generationConfig": {"maxOutputTokens": 5},
    }
    spent = 0
    with httpx.Client(transport=SyncQuotaTransport(sync)) as http:
        for _ in range(8):  # about 3 windows' worth of the cap
            r = http.post(url, json=body, headers={"x-goog-api-key": KEY})
            assert r.status_code == 200
            spent += r.extensions["quotaflow"].spend
    assert spent == _spend(capped)["spent_micros"] > 2 * 1000
    assert capped.emulator.stats()["models"][FLASH]["rejected"] == 0
