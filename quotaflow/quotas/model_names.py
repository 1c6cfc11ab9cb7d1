"""The name rules that resolve a model as users and the API write it: a leading
``models/`` dropped (:func:`bare`), version suffixes stripped one at a time
(:func:`name_candidates`), and the close matches an unknown name is offered
(:func:`close_matches`)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator

__all__ = ["bare", "close_matches", "name_candidates"]

# One suffix a user may add to a model id, innermost last: "-latest", a dated or bare
# "-preview"/"-exp" ("-preview-05-20", "-preview-09-2025", "-exp-0827", "-exp-03-25"), or a
# "-001"-style version. Stripped one at a time from the end, never from the middle, so
# "gemini-2.5-flash-preview-tts" or "gemini-2.5-flash-image-preview" never turn into plain flash.
_SUFFIX = re.compile(r"-(?:latest|(?:preview|exp)(?:-\d{2}-\d{2}|-\d{2}-\d{4}|-\d{4})?|\d{3})$")


def name_candidates(name: str) -> Iterator[str]:
    """Yield ``name`` and then the names left by stripping one version suffix at a time.

    Example:
        >>> list(name_candidates("gemini-2.5-flash-preview-05-20"))
        ['gemini-2.5-flash-preview-05-20', 'gemini-2.5-flash']
    """
    current = name
    while current:
        yield current
        match = _SUFFIX.search(current)
        if match is None:
            return
        current = current[: match.start()]


def close_matches(name: str, known: Iterable[str], limit: int = 5) -> list[str]:
    """Return up to ``limit`` names of ``known`` that look like ``name`` (difflib)."""
    spelled = {k.lower(): k for k in known}
    found: list[str] = []
    for candidate in dict.fromkeys(name_candidates(name.lower())):
        for match in difflib.get_close_matches(candidate, list(spelled), n=limit, cutoff=0.6):
            if spelled[match] not in found:
                found.append(spelled[match])
    return found[:limit]


def bare(name: str) -> str:
    """Strip blanks and a leading ``models/`` (as the REST API writes model names)."""
    name = name.strip()
    return name[len("models/") :] if name.lower().startswith("models/") else name
