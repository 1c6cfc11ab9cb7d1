"""Limits: an amount per period with a reset rule. Pure values, no I/O.

A *limit* is one number for one dimension of a quota: ``Limit("rpm", 1000, 60.0)`` allows 1,000
requests in any 60 s. A *quota* is all the limits of one model in one tier. What a limit counts
is its *metric*: ``"requests"``, ``"input_tokens"`` or any name of your own (``"images"``,
``"usd_micros"``); a call's cost is a mapping from metric to amount.

The *reset rule* says when spent amounts come back:

* :class:`Rolling` (default): one period after the server could have counted them. Never lets
  more than the limit into any window of the period, yet allows a full burst into an empty one.
* :class:`Calendar`: all at once at the end of a calendar window, e.g. midnight in
  America/Los_Angeles for Gemini's requests per day (:func:`pacific_days`), or fixed windows of
  any length for tests (:func:`fixed_windows`).
* :class:`TokenBucket`: continuous refill at ``amount/period`` with a configurable burst (GCRA).
* :class:`Concurrent`: when the call ends; for "at most N calls at once".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from quotaflow.errors import ConfigError

__all__ = [
    "PACIFIC",
    "RPD",
    "RPM",
    "TPD",
    "TPM",
    "Calendar",
    "Concurrent",
    "Cost",
    "Limit",
    "ResetRule",
    "Rolling",
    "TokenBucket",
    "fixed_windows",
    "pacific_days",
    "pacific_months",
]

PACIFIC = "America/Los_Angeles"

Cost = Mapping[str, int]
"""What one call spends, by metric: ``{"requests": 1, "input_tokens": 1200}``."""


@dataclass(frozen=True)
class Rolling:
    """Spent amounts return one period after the latest moment the server could count them.

    Args:
        slots: the period is divided into this many time slots; amounts spent within one slot
            are kept together, so memory per bucket is bounded by ``slots`` whatever the volume.
            Each amount is held until the *end* of its slot plus one period, so the guarantee
            holds; the cost is at most ``1/slots`` of throughput.
    """

    slots: int = 600

    def __post_init__(self) -> None:
        if not isinstance(self.slots, int) or self.slots < 1:
            raise ConfigError(f"Rolling(slots={self.slots!r}): slots must be an int >= 1")


@dataclass(frozen=True)
class Calendar:
    """Everything spent in a calendar window returns when the window ends.

    Two calendars are the same rule when their names are equal: give each distinct calendar
    a distinct name (the built-in ones encode their arguments in it).

    Args:
        window_end: maps a time (epoch seconds) to the end of the window holding it.
        window_start: maps a time to the start of the window holding it.
        name: identifies the calendar; shown in reprs and errors.
    """

    window_end: Callable[[float], float] = field(compare=False)
    window_start: Callable[[float], float] = field(compare=False)
    name: str = "calendar"


@dataclass(frozen=True)
class TokenBucket:
    """Continuous refill (GCRA) at ``amount/period`` per second, holding up to ``burst``.

    Unlike :class:`Rolling`, a full burst followed by the refill lets up to ``burst + amount``
    into one period: use it only against servers that meter with a token bucket themselves.

    Args:
        burst: the most that can be taken at once; defaults to the limit's amount.
    """

    burst: int | None = None


@dataclass(frozen=True)
class Concurrent:
    """Amounts return when the call ends (settles or is released): a concurrency cap."""


ResetRule = Rolling | Calendar | TokenBucket | Concurrent


def fixed_windows(period: float, origin: float = 0.0) -> Calendar:
    """Fixed windows ``[origin + k*period, origin + (k+1)*period)``; e.g. a compressed day."""
    if not period > 0:
        raise ConfigError(f"fixed_windows(period={period!r}): period must be > 0 seconds")

    def start(t: float) -> float:
        return origin + math.floor((t - origin) / period) * period

    def end(t: float) -> float:
        return start(t) + period

    return Calendar(window_end=end, window_start=start, name=f"fixed({period!r}s@{origin!r})")


@functools.lru_cache(maxsize=64)
def pacific_days(tz: str = PACIFIC) -> Calendar:
    """Calendar days in ``tz`` (default America/Los_Angeles), daylight saving included."""
    zone = ZoneInfo(tz)

    def start(t: float) -> float:
        local = datetime.fromtimestamp(t, zone)
        midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
        return midnight.timestamp()

    def end(t: float) -> float:
        local = datetime.fromtimestamp(t, zone)
        nxt = datetime(local.year, local.month, local.day, tzinfo=zone) + timedelta(days=1)
        # datetime arithmetic on aware datetimes is wall-clock; rebuild to get the right offset.
        return datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).timestamp()

    return Calendar(window_end=end, window_start=start, name=f"days({tz})")


@functools.lru_cache(maxsize=64)
def pacific_months(tz: str = PACIFIC) -> Calendar:
    """Calendar months in ``tz`` (default America/Los_Angeles): a month's budget resets at
    midnight at the start of the month there."""
    zone = ZoneInfo(tz)

    def start(t: float) -> float:
        local = datetime.fromtimestamp(t, zone)
        return datetime(local.year, local.month, 1, tzinfo=zone).timestamp()

    def end(t: float) -> float:
        local = datetime.fromtimestamp(t, zone)
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return datetime(year, month, 1, tzinfo=zone).timestamp()

    return Calendar(window_end=end, window_start=start, name=f"months({tz})")


@dataclass(frozen=True)
class Limit:
    """At most ``amount`` of ``metric`` per ``period`` seconds, returned by ``reset``.

    Args:
        name: the dimension's name, unique within a quota (``"rpm"``, ``"tpm"``, ``"ipm"``).
        amount: the limit (an int >= 0; 0 means the model is not available on this tier).
        period: seconds; for calendar limits, the nominal length (informational).
        metric: what is counted: ``"requests"``, ``"input_tokens"`` or your own metric.
        reset: when spent amounts come back (see the module docstring).
        fail_fast: when this limit is what blocks a call, fail at once with
            :class:`~quotaflow.errors.QuotaExhaustedError` instead of waiting. Defaults to true
            for calendar limits (a spent day quota should not park callers until midnight).

    Example:
        >>> Limit("ipm", 10, 60.0, metric="images")
        Limit('ipm', 10 images / 60s, Rolling)
    """

    name: str
    amount: int
    period: float
    metric: str = "requests"
    reset: ResetRule = field(default_factory=Rolling)
    fail_fast: bool | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"Limit(name={self.name!r}): name must be a non-empty string")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount < 0:
            raise ConfigError(
                f"Limit {self.name!r}: amount={self.amount!r} must be an int >= 0 "
                "(use 0 for 'not available on this tier')"
            )
        if (
            isinstance(self.period, bool)
            or not isinstance(self.period, (int, float))
            or not 0 < self.period < math.inf
        ):
            raise ConfigError(
                f"Limit {self.name!r}: period={self.period!r} must be a finite number of "
                "seconds > 0"
            )
        if not self.metric:
            raise ConfigError(f"Limit {self.name!r}: metric must be a non-empty string")
        burst = self.reset.burst if isinstance(self.reset, TokenBucket) else None
        if burst is not None and burst < 1:
            raise ConfigError(f"Limit {self.name!r}: TokenBucket burst must be >= 1")
        if self.fail_fast is None:
            object.__setattr__(self, "fail_fast", isinstance(self.reset, Calendar))

    def scaled(self, fraction: float) -> Limit:
        """This limit with ``amount`` scaled down (for headroom or shares), at least 1."""
        if self.amount == 0:
            return self
        amount = max(1, math.floor(self.amount * fraction + 1e-9))
        return Limit(self.name, amount, self.period, self.metric, self.reset, self.fail_fast)

    def with_amount(self, amount: int) -> Limit:
        """This limit with another amount."""
        return Limit(self.name, amount, self.period, self.metric, self.reset, self.fail_fast)

    def __repr__(self) -> str:
        rule = type(self.reset).__name__
        if isinstance(self.reset, Calendar):
            rule = self.reset.name
        return f"Limit({self.name!r}, {self.amount} {self.metric} / {self.period:g}s, {rule})"


def RPM(amount: int, period: float = 60.0) -> Limit:
    """Requests per minute (rolling window)."""
    return Limit("rpm", amount, period, "requests")


def TPM(amount: int, period: float = 60.0) -> Limit:
    """Input tokens per minute (rolling window); Gemini's TPM counts input tokens only."""
    return Limit("tpm", amount, period, "input_tokens")


def RPD(amount: int, calendar: Calendar | None = None) -> Limit:
    """Requests per day, reset at midnight America/Los_Angeles (or the given calendar)."""
    return Limit("rpd", amount, 86_400.0, "requests", calendar or pacific_days())


def TPD(amount: int, calendar: Calendar | None = None) -> Limit:
    """Input tokens per day, reset at midnight America/Los_Angeles (or the given calendar)."""
    return Limit("tpd", amount, 86_400.0, "input_tokens", calendar or pacific_days())


def check_quota(limits: Iterable[Limit]) -> tuple[Limit, ...]:
    """Validate a set of limits (unique names) and return it as a tuple."""
    out = tuple(limits)
    seen: set[str] = set()
    for lim in out:
        if not isinstance(lim, Limit):
            raise ConfigError(f"expected Limit objects in a quota, got {lim!r}")
        if lim.name in seen:
            raise ConfigError(f"two limits are named {lim.name!r}: limit names must be unique")
        seen.add(lim.name)
    return out


def check_cost(cost: Mapping[str, int]) -> dict[str, int]:
    """Validate a cost vector (non-negative int amounts) and return a copy."""
    out: dict[str, int] = {}
    for metric, amount in cost.items():
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ConfigError(
                f"cost[{metric!r}]={amount!r}: amounts must be ints >= 0 "
                "(tokens are whole numbers; round up an estimate)"
            )
        out[metric] = amount
    return out
