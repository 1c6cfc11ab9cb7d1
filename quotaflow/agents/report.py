"""Read an audit log back: calls, denials, waits and tokens per agent and model.

``quotaflow audit FILE [FILE ...] [--json]`` prints :func:`summarize` of JSON lines files as a
table (or JSON).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from quotaflow.agents.audit import AuditRecord
from quotaflow.errors import ConfigError

__all__ = ["Summary", "format_table", "read_records", "summarize", "to_json"]


@dataclass
class Summary:
    """Totals of one (agent, model) pair.

    Attributes:
        agent: the agent (``-`` for calls that named none).
        model: the model (``-`` for calls without one).
        calls: records.
        denied: calls the policy or a budget refused.
        errors: calls that ended in an error status or an exception.
        rate_limited: calls whose server answered 429 at least once (retried or not).
        retries: resends after 429 or 5xx.
        wait: seconds waited for quota, in total.
        max_wait: the longest wait of one call.
        tokens_estimated: input tokens reserved.
        tokens_actual: input tokens reported by the responses.
        output_tokens: output tokens reported.
    """

    agent: str
    model: str
    calls: int = 0
    denied: int = 0
    errors: int = 0
    rate_limited: int = 0
    retries: int = 0
    wait: float = 0.0
    max_wait: float = 0.0
    tokens_estimated: int = 0
    tokens_actual: int = 0
    output_tokens: int = 0


_REQUIRED = tuple(
    f.name for f in fields(AuditRecord) if f.default is MISSING and f.default_factory is MISSING
)


def read_records(paths: Iterable[str | os.PathLike[str]]) -> Iterator[AuditRecord]:
    """Every record of the JSON lines files (lines that are not JSON objects are skipped).

    Raises:
        ConfigError: a file that is not UTF-8 text, or a record that lacks fields (naming the
            file and line).
    """
    for path in paths:
        with Path(path).open(encoding="utf-8") as f:
            lineno = 0
            while True:
                try:
                    line = f.readline()
                except UnicodeDecodeError:
                    raise ConfigError(
                        f"{os.fspath(path)}: not a UTF-8 text file; give the JSON lines file "
                        "an AuditLog writes"
                    ) from None
                if not line:
                    break
                lineno += 1
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if isinstance(data, dict) and "decision" in data:
                    missing = [n for n in _REQUIRED if n not in data]
                    if missing:
                        raise ConfigError(
                            f"{os.fspath(path)}:{lineno}: not a complete audit record (no "
                            f"{', '.join(missing)}); give the JSON lines file an AuditLog writes"
                        )
                    yield AuditRecord.from_dict(data)


def summarize(records: Iterable[AuditRecord]) -> list[Summary]:
    """Totals per (agent, model), sorted by agent then model."""
    out: dict[tuple[str, str], Summary] = {}
    for r in records:
        key = (r.agent or "-", r.model or "-")
        s = out.setdefault(key, Summary(*key))
        s.calls += 1
        s.denied += r.decision == "denied"
        s.errors += r.outcome in ("http_error", "error") and r.decision != "denied"
        s.rate_limited += r.quota_id is not None or r.status == 429
        s.retries += r.retries
        s.wait += r.wait
        s.max_wait = max(s.max_wait, r.wait)
        s.tokens_estimated += r.tokens_estimated
        s.tokens_actual += r.tokens_actual or 0
        s.output_tokens += r.output_tokens or 0
    return [out[k] for k in sorted(out)]


_COLUMNS = (
    ("agent", 14),
    ("model", 24),
    ("calls", 6),
    ("denied", 6),
    ("errors", 6),
    ("429s", 5),
    ("retries", 7),
    ("wait s", 8),
    ("max wait", 8),
    ("tok est", 9),
    ("tok in", 9),
    ("tok out", 9),
)


def format_table(rows: list[Summary]) -> str:
    """The summary as a fixed-width text table."""
    head = " ".join(
        f"{name:<{w}}" if i < 2 else f"{name:>{w}}" for i, (name, w) in enumerate(_COLUMNS)
    )
    lines = [head]
    for s in rows:
        cells = [
            s.agent,
            s.model,
            s.calls,
            s.denied,
            s.errors,
            s.rate_limited,
            s.retries,
            f"{s.wait:.3f}",
            f"{s.max_wait:.3f}",
            s.tokens_estimated,
            s.tokens_actual,
            s.output_tokens,
        ]
        lines.append(
            " ".join(
                f"{c!s:<{w}}" if i < 2 else f"{c!s:>{w}}"
                for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=True))
            )
        )
    return "\n".join(lines)


def to_json(rows: list[Summary]) -> str:
    """The summary as a JSON list of objects."""
    return json.dumps([asdict(s) for s in rows], indent=2)
