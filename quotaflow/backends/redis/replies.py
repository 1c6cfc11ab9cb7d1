"""The scope script's replies, decoded for the Redis backend: the script's answer to a call
(:class:`Reply`), its decisions, the messages it publishes and its status rows. Pure (no I/O).

Times in what these return are Redis times; the engine moves them to the limiter clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quotaflow.backends.base import Decision
from quotaflow.scheduler.buckets import Level

__all__ = [
    "Reply",
    "decode_decision",
    "decode_levels",
    "decode_message",
    "decode_reply",
    "shift_level",
]


def _num(s: Any) -> float | None:
    text = s.decode() if isinstance(s, bytes) else str(s)
    return None if text == "" else float(text)


def _text(s: Any) -> str:
    return s.decode() if isinstance(s, bytes) else str(s)


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded script reply; times are Redis times.

    ``waiting`` is the length of the line after the call (0 for a fast-path answer, whose
    ``result`` is ``"G"``: granted, or ``"K"``: settles applied).
    """

    status: str
    now: float
    result: Any
    decisions: list[Decision]
    waiting: int = 0


def decode_decision(fields: Sequence[Any]) -> Decision:
    """``{id, outcome, at, dimension, reason, requested, limit}`` (Redis times)."""
    reason = _text(fields[4]) or None
    return Decision(
        _text(fields[0]),
        _text(fields[1]),  # type: ignore[arg-type]
        _num(fields[2]),
        _text(fields[3]),
        reason,  # type: ignore[arg-type]
        int(fields[5]),
        int(fields[6]),
    )


def decode_reply(raw: Any) -> Reply:
    """The fast path's ``G<now>``/``K<now>``, or the full path's
    ``{status, now, result, decisions[, waiting]}``."""
    if isinstance(raw, bytes):
        return Reply("ok", float(raw[1:]), raw[:1].decode(), [])
    if isinstance(raw, str):
        return Reply("ok", float(raw[1:]), raw[:1], [])
    now = _num(raw[1])
    return Reply(
        _text(raw[0]),
        0.0 if now is None else now,
        raw[2],
        [decode_decision(d) for d in raw[3]] if raw[3] else [],
        int(raw[4]) if len(raw) > 4 else 0,
    )


def decode_message(data: Any) -> tuple[str, float, list[Decision]]:
    """A published message: ``(scope, redis now, decisions)``."""
    lines = _text(data).split("\n")
    now, scope = lines[0].split("\t", 1)
    return scope, float(now), [decode_decision(line.split("\t")) for line in lines[1:]]


def decode_levels(rows: Sequence[Sequence[Any]]) -> dict[str, tuple[Any, ...]]:
    """Status rows ``{name, limit, used, in_flight, free, next, full, paused}`` (Redis times)."""
    out: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        out[_text(row[0])] = (
            int(row[1]),
            int(row[2]),
            int(row[3]),
            int(row[4]),
            _num(row[5]),
            _num(row[6]),
            _num(row[7]),
        )
    return out


def shift_level(row: tuple[Any, ...], shift: float) -> Level:
    """A status row as a :class:`Level`, its times moved by ``shift`` (Redis -> local)."""

    def mv(t: float | None) -> float | None:
        return None if t is None else t + shift

    return Level(row[0], row[1], row[2], row[3], mv(row[4]), mv(row[5]), mv(row[6]))
