"""Figures learned from the server: what a 429 teaches, where each limit came from, the time
scale of tests, and the adaptive rule for 429s that name no figure. Pure values and rules.

A 429's ``QuotaFailure`` names the dimension (``quotaId``: per minute or per day, requests or
input tokens) and, usually, its limit (``quotaValue``). A figure the limiter lacks is adopted at
once; a lower one lowers the configured figure; a higher one is kept out (the configured figure
stays) and reported once. A 429 that names no figure drives an adaptive request rate (AIMD)
until a figure is known.

Example:
    >>> scale = TimeScale(minute_seconds=2.0)
    >>> gemini_limit("rpm", 30, scale)
    Limit('rpm', 30 requests / 2s, Rolling)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from quotaflow.errors import ConfigError
from quotaflow.limits import Limit, fixed_windows, pacific_days

__all__ = [
    "GEMINI_DIMENSIONS",
    "Figure",
    "LearnedCache",
    "Origin",
    "TimeScale",
    "adapt_down",
    "adapt_up",
    "gemini_limit",
]

MAX_FIGURE = 1_000_000_000
"""The largest figure kept (learned or adaptive)."""
GEMINI_DIMENSIONS = ("rpm", "tpm", "rpd", "tpd")
"""Gemini's dimensions that a 429 can teach (``quotaId`` per minute/day, requests/tokens)."""

OriginKind = Literal["table", "override", "configured", "learned", "adaptive"]


@dataclass(frozen=True)
class TimeScale:
    """How long a "minute" and a "day" are here: real (60 s, the Pacific day) or compressed
    for tests. The emulator's settings of the same names say the same of the server.

    Args:
        minute_seconds: the length of Gemini's per-minute windows (rpm, tpm, the adaptive
            rate, the 10-minute spend window as ten of them).
        day_seconds: the length of a day for rpd/tpd; ``None``: the calendar day of
            America/Los_Angeles.
    """

    minute_seconds: float = 60.0
    day_seconds: float | None = None

    def __post_init__(self) -> None:
        m = self.minute_seconds
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < math.inf:
            raise ConfigError(
                f"minute_seconds={m!r}: give the length of a minute in seconds (> 0; 60 is real)"
            )
        d = self.day_seconds
        if d is not None and (
            isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < math.inf
        ):
            raise ConfigError(
                f"day_seconds={d!r}: give the length of a day in seconds (> 0), or None for "
                "the Pacific calendar day"
            )

    @property
    def real(self) -> bool:
        """Whether this is real time."""
        return self.minute_seconds == 60.0 and self.day_seconds is None


def gemini_limit(dimension: str, amount: int, scale: TimeScale) -> Limit:
    """The limit of one of Gemini's dimensions (``rpm``, ``tpm``, ``rpd``, ``tpd``)."""
    metric = "requests" if dimension in ("rpm", "rpd") else "input_tokens"
    if dimension in ("rpm", "tpm"):
        return Limit(dimension, amount, scale.minute_seconds, metric)
    if dimension in ("rpd", "tpd"):
        if scale.day_seconds is None:
            return Limit(dimension, amount, 86_400.0, metric, pacific_days())
        day = scale.day_seconds
        return Limit(dimension, amount, day, metric, fixed_windows(day))
    raise ConfigError(f"{dimension!r} is not one of Gemini's dimensions (rpm, tpm, rpd, tpd)")


@dataclass(frozen=True)
class Origin:
    """Where a limit's figure came from.

    Attributes:
        kind: ``table`` (the shipped tier table), ``override`` (``overrides=``,
            ``QUOTAFLOW_LIMITS``), ``configured`` (``quotas=`` or ``unknown_model=``),
            ``learned`` (a 429's ``quotaValue``) or ``adaptive`` (worked out from 429s that
            named no figure).
        at: when it was learned or last adapted (limiter clock), for ``learned``/``adaptive``.
        quota_id: the ``quotaId`` it was learned from.
        source: the tier table's source of the figure, for ``table``.
    """

    kind: OriginKind
    at: float | None = None
    quota_id: str = ""
    source: str = ""

    def describe(self) -> str:
        """One line: ``learned from GenerateRequestsPerMinute... at 12:00:03Z``."""
        if self.kind == "table":
            return f"table ({self.source})" if self.source else "table"
        if self.kind in ("learned", "adaptive"):
            qid = f" from {self.quota_id}" if self.quota_id else ""
            return f"{self.kind}{qid}"
        return self.kind


@dataclass(frozen=True)
class Figure:
    """One figure the server taught (or the adaptive rule set), as kept and shared.

    Attributes:
        amount: the limit.
        kind: ``learned`` or ``adaptive``.
        at: when it was set (epoch seconds of the limiter clock).
        quota_id: the ``quotaId`` it came from.
        growing: adaptive only: still growing fast (no 429 since it was set from a guess).
        grown: adaptive only: ``at`` is when it last grew (not when a 429 lowered it).
        good: adaptive only: the last figure a whole minute passed at without a 429.
        bad: adaptive only: the lowest figure a 429 came at since (0: none).
    """

    amount: int
    kind: Literal["learned", "adaptive"] = "learned"
    at: float = 0.0
    quota_id: str = ""
    growing: bool = False
    grown: bool = False
    good: int = 0
    bad: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Figure | None:
        """The figure in ``text``, or ``None`` if it is not one (never raises)."""
        try:
            raw = json.loads(text)
            amount = raw["amount"]
            kind = raw.get("kind", "learned")
            if isinstance(amount, bool) or not isinstance(amount, int):
                return None
            if not 0 <= amount <= MAX_FIGURE:
                return None
            if kind not in ("learned", "adaptive"):
                return None
            return cls(
                amount,
                kind,
                float(raw.get("at", 0.0)),
                str(raw.get("quota_id", "")),
                bool(raw.get("growing", False)),
                bool(raw.get("grown", False)),
                _count(raw.get("good", 0)),
                _count(raw.get("bad", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    @property
    def origin(self) -> Origin:
        return Origin(self.kind, self.at, self.quota_id)

    def seen_at(self, now: float) -> Figure:
        """This figure with a time from another clock (a host, a file) no later than ``now``:
        a clock ahead must not pause or freeze anything here."""
        return self if self.at <= now else replace(self, at=now)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# the adaptive rule: a search for the server's figure between the last level a quiet minute
# passed at and the lowest level a 429 came at, growing fast from a first measure
ADAPT_DOWN = 0.95  # the first figure: what the server served in the last minute, times this
ADAPT_START = 1.5  # growth per quiet minute while nothing bounds it from above
ADAPT_CUT = 0.7  # a 429 at a figure that once passed a quiet minute (a tier drop): times this
ADAPT_REPROBE = 5  # quiet minutes just below the failing figure before trying it again


def adapt_down(served: int, now: float, quota_id: str, held: Figure | None) -> Figure:
    """The adaptive figure after a 429 that named no figure.

    ``served``: what the server served in the last minute (settled calls); ``held``: the
    adaptive figure in force, if any. With none, the figure starts a little under ``served``
    and grows fast. A 429 right after a growth step goes back to the last good figure, and
    the step that failed bounds the search; one at a figure that had passed its quiet minute
    (a tier drop) cuts it."""
    if held is None or held.kind != "adaptive":
        amount = max(1, math.floor(served * ADAPT_DOWN))
        return Figure(amount, "adaptive", now, quota_id, growing=True)
    bad = held.amount if not held.bad else min(held.bad, held.amount)
    if held.grown and held.good:
        # back under the failed step: to what the server served in the last minute (it
        # admits at least that much), never below the last good figure
        amount = max(held.good, min(served, held.amount - 1))
        return replace(held, amount=amount, at=now, growing=False, grown=False, bad=bad)
    amount = max(1, math.floor(held.amount * ADAPT_CUT))
    return replace(held, amount=amount, at=now, growing=False, grown=False, good=0, bad=bad)


def adapt_up(figure: Figure, now: float, minute: float) -> Figure | None:
    """The adaptive figure after a quiet minute, or ``None`` if not yet due."""
    if figure.kind != "adaptive" or now - figure.at < minute:
        return None
    good = figure.amount
    if figure.bad and figure.bad - good > 1:
        amount = (good + figure.bad) // 2  # halfway to the figure that failed
    elif figure.bad:
        if now - figure.at < ADAPT_REPROBE * minute:
            return None  # just under the failing figure: stay a while
        amount, figure = good + 1, replace(figure, bad=0)
    elif figure.growing:
        amount = max(good + 1, math.ceil(good * ADAPT_START))
    else:
        amount = good + max(1, math.floor(good * 0.05))
    return replace(figure, amount=min(amount, MAX_FIGURE), at=now, grown=True, good=good)


class LearnedCache:
    """Learned figures kept in a JSON file, so that a restart does not relearn them.

    The file maps ``"project/model"`` to ``{dimension: figure}``; figures older than ``ttl``
    seconds are dropped when read. Writes replace the file atomically.
    """

    def __init__(self, path: str | os.PathLike[str], ttl: float = 86_400.0) -> None:
        self.path = Path(path)
        self.ttl = ttl

    def load(self, now: float) -> dict[str, dict[str, Figure]]:
        """What the file holds and is not too old (a missing or bad file: nothing)."""
        try:
            raw: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        out: dict[str, dict[str, Figure]] = {}
        if not isinstance(raw, dict):
            return out
        for key, dims in raw.items():
            if not isinstance(dims, dict):
                continue
            for dim, text in dims.items():
                fig = Figure.from_json(json.dumps(text))
                if fig is not None and dim in GEMINI_DIMENSIONS and now - fig.at <= self.ttl:
                    out.setdefault(str(key), {})[dim] = fig.seen_at(now)
        return out

    def save(self, figures: Mapping[str, Mapping[str, Figure]]) -> None:
        """Write every figure (best effort: a failed write is ignored)."""
        data = {k: {d: asdict(f) for d, f in dims.items()} for k, dims in figures.items() if dims}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".quotaflow-learned-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"LearnedCache({str(self.path)!r}, ttl={self.ttl:g})"
