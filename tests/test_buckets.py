"""Bucket arithmetic: each reset rule, anchoring at the response start, settles, pauses."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from quotaflow.errors import ConfigError
from quotaflow.limits import RPD, Limit, TokenBucket, fixed_windows, pacific_days
from quotaflow.scheduler.buckets import CalendarBucket, ConcurrencyBucket, GcraBucket, WindowBucket

LA = ZoneInfo("America/Los_Angeles")


def la(*args: int) -> float:
    return datetime(*args, tzinfo=LA).timestamp()  # type: ignore[arg-type, misc]


def test_in_flight_amounts_return_one_period_after_the_response_began() -> None:
    b = WindowBucket(capacity=2, period=10.0, slots=10)
    b.take(2, 0.0)  # granted at 0
    assert b.earliest(1, 0.0) == 10.0  # lower bound: as if anchored now
    assert b.earliest(1, 0.0, strict=True) == math.inf
    b.anchor(2, 3.0, 5.0)  # response began at 3, settled at 5
    # not 10: the server may have counted it at 3; held to the end of 3's slot plus the period
    assert b.earliest(1, 5.0) == 14.0


def test_settle_refunds_and_charges_the_anchored_slot() -> None:
    b = WindowBucket(capacity=100, period=10.0, slots=10)
    b.take(60, 0.0)
    b.anchor(60, 1.0, 1.0)
    b.adjust(1.0, -20, 1.5)  # real usage 40
    assert b.level(2.0).used == 40
    b.adjust(1.0, +30, 2.0)  # an extra charge
    assert b.level(2.0).used == 70
    assert b.level(12.0).used == 0  # all back after the slot's end + period


def test_late_anchor_is_inserted_in_order() -> None:
    b = WindowBucket(capacity=100, period=10.0, slots=10)
    for t, amount in ((5.0, 10), (2.0, 20)):
        b.take(amount, 6.0)
        b.anchor(amount, t, 6.0)
    assert b.earliest(100, 6.0) == 16.0  # the 20 from t=2 returns at 13, the 10 at 16
    assert b.earliest(81, 6.0) == 13.0
    assert b.earliest(91, 6.0) == 16.0


def test_pause_holds_until_the_given_time() -> None:
    b = WindowBucket(capacity=5, period=10.0)
    b.pause(4.0)
    assert b.earliest(1, 1.0) == 4.0
    assert b.level(1.0).paused_until == 4.0
    assert b.earliest(1, 4.5) == 4.5


def test_pacific_day_resets_at_midnight_across_dst() -> None:
    cal = pacific_days()
    # 2026-03-08: clocks spring forward; that day is 23 hours long
    assert cal.window_end(la(2026, 3, 8, 12)) - cal.window_start(la(2026, 3, 8, 12)) == 23 * 3600
    # 2026-11-01: fall back; 25 hours
    assert cal.window_end(la(2026, 11, 1, 12)) - cal.window_start(la(2026, 11, 1, 12)) == 25 * 3600
    b = CalendarBucket(2, cal, la(2026, 3, 7, 23, 0))
    for _ in range(2):
        b.take(1, la(2026, 3, 7, 23, 0))
        b.anchor(1, la(2026, 3, 7, 23, 0), la(2026, 3, 7, 23, 0))
    assert b.exhausted(1, la(2026, 3, 7, 23, 59))
    assert b.earliest(1, la(2026, 3, 7, 23, 59)) == la(2026, 3, 8, 0, 0)
    assert b.earliest(1, la(2026, 3, 8, 0, 0)) == la(2026, 3, 8, 0, 0)


def test_rpd_preset_is_calendar_and_fail_fast() -> None:
    lim = RPD(10)
    assert lim.fail_fast is True
    assert lim.reset.__class__.__name__ == "Calendar"


def test_fixed_windows_compress_a_day() -> None:
    cal = fixed_windows(10.0)
    b = CalendarBucket(1, cal, 3.0)
    b.take(1, 3.0)
    b.anchor(1, 3.0, 3.0)
    assert b.earliest(1, 4.0) == 10.0
    assert b.earliest(1, 10.0) == 10.0


def test_gcra_refills_continuously_and_bursts() -> None:
    g = GcraBucket(capacity=10, period=10.0, burst=10, now=0.0)
    for _ in range(10):
        assert g.earliest(1, 0.0) == 0.0
        g.take(1, 0.0)
    assert g.earliest(1, 0.0) == pytest.approx(1.0)
    assert g.earliest(11, 0.0) == math.inf
    g.release(1, 0.0)
    assert g.earliest(1, 0.0) == 0.0


def test_concurrency_returns_when_the_call_ends() -> None:
    c = ConcurrencyBucket(1)
    c.take(1, 0.0)
    assert c.earliest(1, 0.0) == math.inf
    c.anchor(1, 0.0, 0.0)
    assert c.earliest(1, 5.0) == math.inf
    c.end(1, 5.0)
    assert c.earliest(1, 5.0) == 5.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "", "amount": 1, "period": 1.0}, "name"),
        ({"name": "x", "amount": -1, "period": 1.0}, "amount"),
        ({"name": "x", "amount": 1.5, "period": 1.0}, "amount"),
        ({"name": "x", "amount": 1, "period": 0}, "period"),
        ({"name": "x", "amount": 1, "period": 1.0, "reset": TokenBucket(burst=0)}, "burst"),
    ],
)
def test_bad_limits_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Limit(**kwargs)  # type: ignore[arg-type]
