"""Reading tier-table and override files: a file's text, its TOML, and the
:class:`~quotaflow.errors.TierTableError` that names the file (or other origin), the key and
the problem."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from quotaflow.errors import TierTableError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["parse_toml", "read_text", "table_error"]


def table_error(origin: str, problems: list[tuple[str, str]], hint: str = "") -> TierTableError:
    """The error of ``problems`` (``(key, problem)`` pairs) found in ``origin``: the first
    named in full, a few more in brief, then ``hint``."""
    key, problem = problems[0]
    message = f"{origin}: {key}: {problem}" if key else f"{origin}: {problem}"
    if len(problems) > 1:
        rest = "; ".join(f"{k or '(top level)'}: {p}" for k, p in problems[1:4])
        message += f" (and {len(problems) - 1} more: {rest}{'; ...' if len(problems) > 4 else ''})"
    if hint:
        message += f"; {hint}"
    return TierTableError(message, path=origin, key=key)


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of the file at ``path`` (UTF-8), or a :class:`TierTableError` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        origin = os.fspath(path)
        raise TierTableError(f"{origin}: cannot read: {exc.strerror or exc}", path=origin) from exc


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    """The TOML document ``text`` (from ``origin``), or a :class:`TierTableError`."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise table_error(origin, [("", f"not valid TOML: {exc}")]) from exc
    return data
