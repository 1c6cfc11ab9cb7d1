"""The areas of the Gemini API an agent can be granted, and the access each method needs."""

from __future__ import annotations

from typing import Literal

__all__ = ["AREAS", "METHODS", "GrantArea", "GrantLevel"]

GrantArea = Literal[
    "content", "embeddings", "counting", "files", "caching", "batch", "tuning", "live"
]
"""An area of the API that can be granted."""

GrantLevel = Literal["none", "read", "write"]
"""``none`` < ``read`` < ``write`` (write includes read)."""

METHODS: dict[str, dict[str, Literal["read", "write"]]] = {
    "content": {
        "generateContent": "write",
        "streamGenerateContent": "write",
        "predict": "write",
        "predictLongRunning": "write",
        "chat.completions": "write",
        "images": "write",
        "interactions.create": "write",
        "interactions.cancel": "write",
        "interactions.delete": "write",
        "interactions.list": "read",
        "interactions.get": "read",
        "list": "read",
        "get": "read",
    },
    "embeddings": {"embedContent": "write", "batchEmbedContents": "write", "embeddings": "write"},
    "counting": {"countTokens": "read"},
    "files": {
        "upload": "write",
        "register": "write",
        "delete": "write",
        "list": "read",
        "get": "read",
        "download": "read",
    },
    "caching": {
        "create": "write",
        "update": "write",
        "delete": "write",
        "list": "read",
        "get": "read",
    },
    "batch": {
        "batchGenerateContent": "write",
        "asyncBatchEmbedContent": "write",
        "cancel": "write",
        "delete": "write",
        "list": "read",
        "get": "read",
    },
    "tuning": {
        "create": "write",
        "generateContent": "write",
        "streamGenerateContent": "write",
        "delete": "write",
        "list": "read",
        "get": "read",
    },
    # the Live API's WebSocket sessions, which only the gateway proxies
    "live": {"BidiGenerateContent": "write"},
}
"""Per area, each method (as :func:`quotaflow.gemini.classify` names its ``action``) and the
access it needs, after the API reference (a generate spends quota: write; a list: read; a
delete: an irreversible write)."""

AREAS: tuple[str, ...] = tuple(METHODS)
"""The grantable areas, in the reference's order."""

AREA_ALIASES = {
    "models": "content",
    "tokens": "counting",
    "count_tokens": "counting",
    "cached_contents": "caching",
    "caches": "caching",
    "batches": "batch",
    "tuned_models": "tuning",
    "tunings": "tuning",
}
