"""Deterministic token counting and synthetic output. Pure, no I/O.

Counting rule: a text part costs ``ceil(UTF-8 bytes / 4)`` tokens; inline media costs Gemini's
documented rates (images by 768x768 tile, audio 32 and video 263 tokens per second, PDF 258 per
page: :mod:`quotaflow.gemini._media`) where its bytes tell, else a fixed ``media_part_tokens``,
as does a file part; function calls/responses and tools cost their compact JSON as text.
countTokens and ``usageMetadata`` both use :func:`count_request`, so they always agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from quotaflow.gemini._media import measure

from ._errors import JSON

__all__ = [
    "TokenCount",
    "count_contents",
    "count_request",
    "count_text",
    "embedding",
    "prompt_text",
    "reply_text",
]

_JSON_PARTS = ("functionCall", "functionResponse", "executableCode", "codeExecutionResult")


def count_text(text: str) -> int:
    """Tokens of one text part: ``ceil(len(text.encode("utf-8")) / 4)``."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def _modality(mime_type: str) -> str:
    major = mime_type.split("/", 1)[0]
    return {"image": "IMAGE", "audio": "AUDIO", "video": "VIDEO", "text": "TEXT"}.get(
        major, "DOCUMENT"
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@dataclass
class TokenCount:
    """A token total with its split per modality (``promptTokensDetails``)."""

    total: int = 0
    by_modality: dict[str, int] = field(default_factory=dict)

    def add(self, modality: str, tokens: int) -> None:
        """Add ``tokens`` of ``modality``."""
        self.total += tokens
        self.by_modality[modality] = self.by_modality.get(modality, 0) + tokens

    def merge(self, other: TokenCount) -> None:
        """Add every modality of ``other``."""
        for modality, tokens in other.by_modality.items():
            self.add(modality, tokens)

    def details(self) -> list[JSON]:
        """``[{"modality": ..., "tokenCount": ...}]`` as Gemini sends it."""
        return [{"modality": m, "tokenCount": n} for m, n in sorted(self.by_modality.items())]


def _count_part(part: Any, media_tokens: int, out: TokenCount) -> None:
    if not isinstance(part, dict):
        raise ValueError("Invalid value at 'contents.parts' (type.googleapis.com/Part)")
    if isinstance(part.get("text"), str):
        out.add("TEXT", count_text(part["text"]))
    for key in ("inlineData", "fileData"):
        blob = part.get(key)
        if isinstance(blob, dict):
            mime = str(blob.get("mimeType", ""))
            data = blob.get("data") if key == "inlineData" else None
            found = measure(mime, data=data) if isinstance(data, str) else None
            out.add(_modality(mime), media_tokens if found is None else found)
    for key in _JSON_PARTS:
        if key in part:
            out.add("TEXT", count_text(_compact(part[key])))


def count_contents(contents: Any, media_tokens: int) -> TokenCount:
    """Count a ``contents`` list (or one Content object).

    Raises:
        ValueError: if the structure is not a list of Content objects with ``parts``.
    """
    out = TokenCount()
    items = [contents] if isinstance(contents, dict) else contents
    if not isinstance(items, list):
        raise ValueError("Invalid value at 'contents' (type.googleapis.com/Content)")
    for content in items:
        if not isinstance(content, dict) or not isinstance(content.get("parts", []), list):
            raise ValueError("Invalid value at 'contents' (type.googleapis.com/Content)")
        for part in content.get("parts", []):
            _count_part(part, media_tokens, out)
    return out


def count_request(body: JSON, media_tokens: int) -> TokenCount:
    """Count the prompt of a GenerateContentRequest: system instruction, tools, contents.

    Cached content is not included; the caller adds it.
    """
    out = TokenCount()
    if body.get("systemInstruction") is not None:
        out.merge(count_contents(body["systemInstruction"], media_tokens))
    if body.get("tools"):
        out.add("TEXT", count_text(_compact(body["tools"])))
    out.merge(count_contents(body.get("contents", []), media_tokens))
    return out


def prompt_text(contents: Any) -> str:
    """Text of the last content's text parts, joined by spaces ("" if none)."""
    items = [contents] if isinstance(contents, dict) else contents
    if not isinstance(items, list) or not items or not isinstance(items[-1], dict):
        return ""
    parts = items[-1].get("parts") or []
    return " ".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def reply_text(prompt: str, tokens: int) -> str:
    """Deterministic ASCII reply worth exactly ``tokens`` tokens.

    The reply is ``"Echo: <prompt words>"`` repeated and cut to ``4 * tokens`` characters.

    Example:
        >>> reply_text("hello", 3)
        'Echo: hello '
    """
    words = re.sub(r"[^A-Za-z0-9 .,!?'-]+", " ", prompt).split()
    seed = "Echo: " + (" ".join(words) or "(empty prompt)") + " "
    size = 4 * tokens
    return (seed * (size // len(seed) + 1))[:size]


def embedding(text: str, dimensions: int) -> list[float]:
    """Deterministic unit vector of ``dimensions`` floats derived from ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    values = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 8) for v in values]
