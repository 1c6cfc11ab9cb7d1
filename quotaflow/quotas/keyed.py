"""How a problem in a table or override is located: :class:`KeyedProblem`, a problem at a
key, and :func:`dotted`, a key path written the way TOML writes it."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["KeyedProblem", "dotted"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class KeyedProblem(ValueError):
    """A validation problem at a known key, relative to the object being validated.

    Raised inside pydantic validators; :func:`describe_validation_error` puts the key back in
    front of the message so errors name ``models."gemini-2.5-flash".source`` and not the table.
    """

    def __init__(self, key: tuple[str | int, ...], problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def dotted(key: Iterable[str | int]) -> str:
    """Write a key path the way TOML does: ``models."gemini-2.5-flash".rpm``."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        out += f".{text}" if out else text
    return out
