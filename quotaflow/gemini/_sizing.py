"""Sizing a prompt before the call: a fast local estimate, the countTokens request, a cache.

Pure: building the ``countTokens`` request and reading its answer happen here; sending it is the
transport's job.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from quotaflow.gemini._classify import Call
from quotaflow.gemini._media import UNKNOWN_MEDIA_TOKENS, FileMeta, media_tokens

__all__ = [
    "CountCache",
    "Files",
    "batch_tokens",
    "count_tokens_body",
    "count_tokens_path",
    "estimate_tokens",
    "generate_tokens",
    "interaction_tokens",
    "read_count",
]

MEDIA_TOKENS = UNKNOWN_MEDIA_TOKENS
"""Tokens assumed for a media part whose size the request does not say (one small image)."""

Files = Mapping[str, FileMeta]
"""File metadata by name (``files/abc``), as the transport saw it in Files API responses."""

_FILE_NAME = re.compile(r"(files/[A-Za-z0-9_-]+)")


def _text(s: str) -> int:
    n = len(s) if s.isascii() else len(s.encode("utf-8"))
    return (n + 3) // 4  # ceil(bytes / 4)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _resolution(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("level")
    return value if isinstance(value, str) else None


def _blob_tokens(blob: dict[str, Any], inline: bool, files: Files, resolution: str | None) -> int:
    mime = str(blob.get("mimeType") or blob.get("mime_type") or "")
    if inline:
        data = blob.get("data")
        return media_tokens(
            mime, data=data if isinstance(data, str) else None, resolution=resolution
        )
    uri = str(blob.get("fileUri") or blob.get("file_uri") or blob.get("uri") or "")
    m = _FILE_NAME.search(uri)
    meta = files.get(m.group(1)) if m else None
    if meta is None:
        return media_tokens(mime, resolution=resolution)
    return media_tokens(
        meta.mime_type or mime,
        size_bytes=meta.size_bytes,
        duration=meta.duration,
        resolution=resolution,
    )


_PART_KEYS = {
    "text": 0,
    "inlineData": 1,
    "inline_data": 1,
    "fileData": 2,
    "file_data": 2,
    "functionCall": 3,
    "functionResponse": 3,
    "executableCode": 3,
    "codeExecutionResult": 3,
}
"""What each key of a part is: text, inline data, file data, or JSON counted as text."""


def _parts(parts: Any, files: Files, resolution: str | None) -> int:
    total = 0
    kinds = _PART_KEYS.get
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        own: Any = _UNSET  # the part's media resolution, read when it has media
        for key, value in part.items():
            kind = kinds(key)
            if kind is None:
                continue
            if kind == 0:
                if isinstance(value, str):
                    total += _text(value)
            elif kind == 3:
                total += _text(_compact(value))
            elif isinstance(value, dict):
                if own is _UNSET:
                    own = (
                        _resolution(part.get("mediaResolution", part.get("media_resolution")))
                        or resolution
                    )
                total += _blob_tokens(value, kind == 1, files, own)
    return total


_UNSET = object()


def _contents(contents: Any, files: Files | None = None, resolution: str | None = None) -> int:
    if isinstance(contents, dict):
        return _parts(contents.get("parts"), files or {}, resolution)
    total = 0
    for c in contents if isinstance(contents, list) else ():
        if isinstance(c, dict):
            total += _parts(c.get("parts"), files or {}, resolution)
        elif isinstance(c, str):
            total += _text(c)
    return total


def _openai_content(content: Any) -> int:
    if isinstance(content, str):
        return _text(content)
    total = 0
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict):
            if isinstance(part.get("text"), str):
                total += _text(part["text"])
            elif part.get("type") in ("image_url", "input_audio", "file"):
                total += MEDIA_TOKENS
    return total


def estimate_tokens(call: Call, body: Mapping[str, Any], files: Files | None = None) -> int:
    """A fast local estimate of a request's input tokens (no I/O, microseconds).

    Text counts one token per 4 UTF-8 bytes (the usual rule of thumb for Gemini's tokenizer on
    English; it over-counts most other scripts a little); media by Gemini's documented rates
    (:mod:`quotaflow.gemini._media`: images by tile, audio and video per second, PDF per page)
    from what the request says: inline data's bytes and MIME type, and for file parts the
    metadata in ``files`` (what the transport saw of the Files API); tools and function calls
    count their compact JSON as text.

    Example:
        >>> from quotaflow.gemini import classify
        >>> call = classify("POST", "/v1beta/models/gemini-2.5-flash:generateContent")
        >>> estimate_tokens(call, {"contents": [{"parts": [{"text": "Hello, world"}]}]})
        3
    """
    known: Files = files or {}
    if call.surface == "openai":
        total = 0
        for msg in body.get("messages") or ():
            if isinstance(msg, dict):
                total += _openai_content(msg.get("content"))
                if msg.get("tool_calls"):
                    total += _text(_compact(msg["tool_calls"]))
        if body.get("tools"):
            total += _text(_compact(body["tools"]))
        items = body.get("input")
        if isinstance(items, str):
            total += _text(items)
        elif isinstance(items, list):
            total += sum(_text(x) if isinstance(x, str) else 1 for x in items)
        return total
    if call.action == "interactions.create":
        return interaction_tokens(body, known)
    if call.action == "batchEmbedContents":
        return sum(
            _contents(r.get("content"), known)
            for r in body.get("requests") or ()
            if isinstance(r, dict)
        )
    if call.action == "embedContent":
        return _contents(body.get("content"), known)
    return generate_tokens(body, known)


def generate_tokens(body: Mapping[str, Any], files: Files | None = None) -> int:
    """The estimate of one ``GenerateContentRequest`` (contents, system instruction, tools)."""
    cfg = body.get("generationConfig", body.get("generation_config"))
    resolution = None
    if isinstance(cfg, dict):
        resolution = _resolution(cfg.get("mediaResolution", cfg.get("media_resolution")))
    total = _contents(body.get("contents"), files, resolution)
    system = body.get("systemInstruction", body.get("system_instruction"))
    if system is not None:
        total += _contents(system, files, resolution)
    if body.get("tools"):
        total += _text(_compact(body["tools"]))
    return total


_INTERACTION_MEDIA = {"image", "audio", "video", "document"}


def _interaction_content(item: Any, files: Files, resolution: str | None) -> int:
    if isinstance(item, str):
        return _text(item)
    if isinstance(item, list):
        return sum(_interaction_content(x, files, resolution) for x in item)
    if not isinstance(item, dict):
        return 0
    kind = item.get("type")
    if kind == "text" and isinstance(item.get("text"), str):
        return _text(item["text"])
    if kind in _INTERACTION_MEDIA:
        mime = str(item.get("mime_type") or item.get("mimeType") or "")
        if not mime:
            mime = "application/pdf" if kind == "document" else f"{kind}/*"
        own = _resolution(item.get("resolution", item.get("media_resolution"))) or resolution
        if isinstance(item.get("data"), str):
            return _blob_tokens({"mimeType": mime, "data": item["data"]}, True, files, own)
        return _blob_tokens({"mimeType": mime, "uri": item.get("uri") or ""}, False, files, own)
    total = 0
    for key in ("content", "parts", "input"):
        if key in item:
            total += _interaction_content(item[key], files, resolution)
    if kind and kind not in ("text", "model_output", "user_input") and not total:
        total += _text(_compact(item))  # function calls and results: their JSON as text
    return total


def interaction_tokens(body: Mapping[str, Any], files: Files | None = None) -> int:
    """The estimate of an Interactions API ``create`` body (``input``, ``system_instruction``,
    ``tools``); the history of ``previous_interaction_id`` is server-side and unknown here."""
    known: Files = files or {}
    cfg = body.get("generation_config")
    resolution = None
    if isinstance(cfg, dict):
        resolution = _resolution(cfg.get("media_resolution"))
    total = _interaction_content(body.get("input"), known, resolution)
    system = body.get("system_instruction")
    if system is not None:
        total += _interaction_content(system, known, resolution)
    if body.get("tools"):
        total += _text(_compact(body["tools"]))
    return total


def batch_tokens(body: Mapping[str, Any], files: Files | None = None) -> int | None:
    """The input tokens a ``batchGenerateContent`` body enqueues: its inline requests, or its
    input file's size (a JSONL of requests, counted as text) when ``files`` knows it;
    ``None`` when the file is unknown."""
    batch = body.get("batch")
    config = (
        batch.get("inputConfig", batch.get("input_config")) if isinstance(batch, dict) else None
    )
    if not isinstance(config, dict):
        return 0
    name = config.get("fileName", config.get("file_name"))
    if isinstance(name, str) and name:
        meta = (files or {}).get(name)
        if meta is None or meta.size_bytes is None:
            return None
        return math.ceil(meta.size_bytes / 4)
    holder = config.get("requests")
    items = holder.get("requests") if isinstance(holder, dict) else holder
    total = 0
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            request = item.get("request", item)
            if isinstance(request, dict):
                total += generate_tokens(request, files)
    return total


def count_tokens_path(call: Call) -> str:
    """The ``countTokens`` path next to a ``generateContent`` path."""
    base, _, _ = call.path.rpartition(":")
    return f"{base}:countTokens"


def count_tokens_body(call: Call, body: Mapping[str, Any]) -> bytes:
    """The ``countTokens`` body for a generate request: a whole ``generateContentRequest``,
    so the system instruction, tools and cached content count too."""
    model = call.model or ""
    if not model.startswith(("models/", "tunedModels/")):
        model = f"models/{model}"
    inner = {"model": model, **{k: v for k, v in body.items() if k != "model"}}
    return json.dumps({"generateContentRequest": inner}, separators=(",", ":")).encode()


def read_count(body: bytes) -> int | None:
    """``totalTokens`` from a ``countTokens`` response body, or ``None``."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if isinstance(obj, dict):
        total = obj.get("totalTokens")
        if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            return total
        if obj.get("totalTokens") is None and "error" not in obj:
            return 0  # proto3 JSON omits zero
    return None


class CountCache:
    """A bounded, thread-safe LRU of token counts by content hash.

    Args:
        size: the most entries kept.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = max(0, size)
        self._data: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, body: bytes) -> bytes:
        """The cache key of a counted body."""
        return hashlib.sha256(model.encode() + b"\0" + body).digest()

    def get(self, key: bytes) -> int | None:
        """The cached count, or ``None``."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, tokens: int) -> None:
        """Remember a count (evicting the least recently used beyond ``size``)."""
        if not self._size:
            return
        with self._lock:
            self._data[key] = tokens
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"CountCache(size={len(self._data)}/{self._size}, hits={self.hits})"
