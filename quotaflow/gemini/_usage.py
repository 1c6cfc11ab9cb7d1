"""Usage from responses: ``usageMetadata`` (Gemini) and ``usage`` (OpenAI surface). Pure.

JSON bodies are parsed whole; server-sent event streams are scanned incrementally by
:class:`StreamScanner`, which keeps only the unfinished event in memory, so chunks can pass to
the caller as they arrive.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BodyScanner",
    "StreamScanner",
    "Usage",
    "body_usage",
    "decoder_for",
    "usage_from_json",
]


@dataclass(frozen=True)
class Usage:
    """Token counts the server reported for one call.

    Attributes:
        input_tokens: the prompt (``promptTokenCount`` / ``prompt_tokens``): what TPM counts.
        output_tokens: generated tokens (``candidatesTokenCount`` / ``completion_tokens``).
        cached_tokens: the cached part of the prompt (``cachedContentTokenCount``).
        thoughts_tokens: thinking tokens (``thoughtsTokenCount``).
        tool_use_tokens: ``toolUsePromptTokenCount``.
        total_tokens: ``totalTokenCount`` / ``total_tokens``.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    thoughts_tokens: int = 0
    tool_use_tokens: int = 0
    total_tokens: int = 0


_new = object.__new__


def _usage(
    input_tokens: int, output_tokens: int, cached: int, thoughts: int, tool_use: int, total: int
) -> Usage:
    """``Usage(...)`` without the frozen dataclass's per-field ``__setattr__`` (equal to it)."""
    u: Usage = _new(Usage)
    u.__dict__.update(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached,
        thoughts_tokens=thoughts,
        tool_use_tokens=tool_use,
        total_tokens=total,
    )
    return u


def _int(value: Any) -> int:
    if type(value) is int:
        return value if value > 0 else 0
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _from_metadata(meta: dict[str, Any]) -> Usage:
    get = meta.get
    return _usage(
        _int(get("promptTokenCount")),
        _int(get("candidatesTokenCount")),
        _int(get("cachedContentTokenCount")),
        _int(get("thoughtsTokenCount")),
        _int(get("toolUsePromptTokenCount")),
        _int(get("totalTokenCount")),
    )


def _from_openai(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        cached_tokens=cached,
        total_tokens=_int(usage.get("total_tokens")),
    )


def _from_interaction(usage: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=_int(usage.get("total_input_tokens")),
        output_tokens=_int(usage.get("total_output_tokens")),
        cached_tokens=_int(usage.get("total_cached_tokens")),
        thoughts_tokens=_int(usage.get("total_thought_tokens")),
        tool_use_tokens=_int(usage.get("total_tool_use_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
    )


def usage_from_json(obj: Any) -> Usage | None:
    """The usage in one parsed response (or stream chunk), or ``None`` if it has none.

    Understands ``GenerateContentResponse.usageMetadata``, the OpenAI ``usage`` object, the
    Interactions API's ``usage`` (``total_input_tokens``, ...; also inside a stream event's
    ``interaction`` or ``metadata.total_usage``), and a JSON array of chunks
    (``streamGenerateContent`` without ``alt=sse``), whose last usage wins.

    Example:
        >>> usage_from_json({"usageMetadata": {"promptTokenCount": 11}}).input_tokens
        11
    """
    if isinstance(obj, list):
        found: Usage | None = None
        for item in obj:
            found = usage_from_json(item) or found
        return found
    if not isinstance(obj, dict):
        return None
    meta = obj.get("usageMetadata")
    if isinstance(meta, dict):
        return _from_metadata(meta)
    usage = obj.get("usage")
    if isinstance(usage, dict) and (
        "total_input_tokens" in usage or "total_output_tokens" in usage
    ):
        return _from_interaction(usage)
    if isinstance(usage, dict) and ("prompt_tokens" in usage or "total_tokens" in usage):
        return _from_openai(usage)
    inner = obj.get("interaction")
    if isinstance(inner, dict):
        return usage_from_json(inner)
    meta = obj.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("total_usage"), dict):
        return _from_interaction(meta["total_usage"])
    return None


_raw_decode = json.JSONDecoder().raw_decode
_SPACE = " \t\n\r"  # JSON's whitespace


def _loads(data: bytes) -> Any:
    """``json.loads(data)``: a body that opens as UTF-8 JSON (``{`` or ``[`` and no NUL after
    it, so no BOM, UTF-16 or UTF-32) is decoded here, skipping ``json.detect_encoding`` (and
    the decoder's whitespace patterns: only JSON whitespace may follow the value)."""
    if data[:1] in (b"{", b"[") and data[1:2] != b"\x00":
        text = data.decode("utf-8", "surrogatepass")
        obj, end = _raw_decode(text)
        if end != len(text):
            rest = text[end:]
            left = rest.lstrip(_SPACE)
            if left:
                raise json.JSONDecodeError("Extra data", text, len(text) - len(left))
        return obj
    return json.loads(data)


_BODY_LIMIT = 32 * 1024 * 1024


def body_usage(data: bytes, limit: int = _BODY_LIMIT) -> Usage | None:
    """The usage of a whole JSON body (``None`` if none, not JSON, or over ``limit`` bytes):
    what :class:`BodyScanner` reads once it has been fed ``data``."""
    if not data or len(data) > limit:
        return None
    try:
        return usage_from_json(_loads(data))
    except ValueError:
        return None


class BodyScanner:
    """Collects a JSON body chunk by chunk (up to ``limit`` bytes) and reads its usage."""

    __slots__ = ("_chunks", "_limit", "_size")

    def __init__(self, limit: int = _BODY_LIMIT) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit

    def feed(self, chunk: bytes) -> None:
        """Add the next (decoded) chunk."""
        if self._size <= self._limit:
            self._chunks.append(chunk)
            self._size += len(chunk)

    def usage(self) -> Usage | None:
        """The usage of the body so far (``None`` if none or the body was too large)."""
        chunks = self._chunks
        if self._size > self._limit or not chunks:
            return None
        return body_usage(chunks[0] if len(chunks) == 1 else b"".join(chunks), self._limit)


class StreamScanner:
    """Reads usage from a server-sent event stream without holding more than one event.

    Every ``data:`` event that mentions usage is parsed; the last usage seen wins (Gemini's
    counts are cumulative, final in the last chunk). ``[DONE]`` and raw error lines are
    skipped. ``watch``, if given, gets the data of each event until it returns ``True``.

    Example:
        >>> s = StreamScanner()
        >>> s.feed(b'data: {"usageMetadata": {"promptTokenCount": 5}}\\n\\n')
        >>> s.usage().input_tokens
        5
    """

    __slots__ = ("_buf", "_last", "_watch")

    _MAX_EVENT = 64 * 1024 * 1024

    def __init__(self, watch: Callable[[bytes], bool] | None = None) -> None:
        self._buf = bytearray()
        self._last: Usage | None = None
        self._watch = watch

    def feed(self, chunk: bytes) -> None:
        """Add the next chunk of the stream (any split: mid-line, mid-event)."""
        self._buf += chunk
        while True:
            cut, sep = self._boundary()
            if cut < 0:
                break
            event = bytes(self._buf[:cut])
            del self._buf[: cut + sep]
            self._event(event)
        if len(self._buf) > self._MAX_EVENT:  # a runaway event; drop it rather than grow
            self._buf.clear()

    def _boundary(self) -> tuple[int, int]:
        best, size = -1, 0
        for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
            i = self._buf.find(sep)
            if i >= 0 and (best < 0 or i < best):
                best, size = i, len(sep)
        return best, size

    def _event(self, event: bytes) -> None:
        if self._watch is not None:
            data = _data(event)
            if data is not None and self._watch(data):
                self._watch = None
        if b"sage" not in event:  # usageMetadata / usage: skip the JSON parse otherwise
            return
        payload = _data(event)
        if payload is None:
            return
        try:
            found = usage_from_json(_loads(payload))
        except ValueError:
            return
        if found is not None:
            self._last = found

    def finish(self) -> None:
        """The stream ended: read a last event that had no blank line after it."""
        if self._buf.strip():
            event = bytes(self._buf)
            self._buf.clear()
            self._event(event)

    def usage(self) -> Usage | None:
        """The last usage seen so far."""
        return self._last


def _data(event: bytes) -> bytes | None:
    """The data of a server-sent event (``None``: none, or ``[DONE]``)."""
    data = [
        line[5:].lstrip(b" ")
        for line in event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    if not data:
        return None
    payload = b"\n".join(data)
    return None if payload.strip() == b"[DONE]" else payload


def decoder_for(content_encoding: str) -> Callable[[bytes], bytes] | None:
    """A chunk decoder for a ``Content-Encoding`` (identity, gzip, deflate), or ``None`` for
    encodings that need extra packages (br, zstd): their usage is then not read."""
    enc = content_encoding.strip().lower()
    if enc in ("", "identity"):
        return lambda chunk: chunk
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if enc == "deflate":
        return zlib.decompressobj().decompress
    return None
