"""Media sized by what it is: Gemini's documented token rates per image, second and page. Pure.

The rates, and where they were read (2026-12-04). The official pages were reached through the
search index, whose excerpts of https://ai.google.dev/gemini-api/docs/tokens did not reach the
media section, so the first three rates are cited from pages quoting it:

* images: 258 tokens when both sides are at most 384 px; larger images are cut into 768x768
  tiles of 258 tokens each (https://ai.google.dev/gemini-api/docs/tokens, as quoted by
  https://geminibyexample.com/027-calculate-input-tokens/);
* video: 263 tokens per second at the default media resolution (same sources); about 100 at
  ``MEDIA_RESOLUTION_LOW`` (https://ai.google.dev/gemini-api/docs/video-understanding;
  UNCONFIRMED: not seen in a page read for this);
* audio: 32 tokens per second (the tokens page, as quoted at
  https://discuss.ai.google.dev/t/are-audio-output-tokens-equal-to-text-output-tokens/84379);
* PDF: 258 tokens per page (https://ai.google.dev/gemini-api/docs/document-processing, read
  from a public copy of the page);
* ``mediaResolution`` on Gemini 3 models: 280 (low), 560 (medium), 1120 (high) and 2240
  (ultra high) tokens per image or PDF page (https://ai.google.dev/gemini-api/docs/media-resolution,
  as summarized by
  https://fastgptplus.com/en/posts/gemini-3-pro-media-resolution-parameter; third party).

What the bytes say is read cheaply: image dimensions from PNG, JPEG, GIF and WebP headers, a
WAV header's byte rate, an MP4/MOV ``mvhd`` box's duration, a PDF's page objects. Where they
say nothing (an MP3, a WebM, a file never seen), the size in bytes and a stated bitrate guess
give a duration
(:data:`AUDIO_BYTES_PER_SECOND`, :data:`VIDEO_BYTES_PER_SECOND`), and a part with no size at all
counts :data:`UNKNOWN_MEDIA_TOKENS`. Settlement from ``usageMetadata`` corrects every call.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUDIO_BYTES_PER_SECOND",
    "AUDIO_TOKENS_PER_SECOND",
    "IMAGE_TILE_TOKENS",
    "PDF_PAGE_TOKENS",
    "UNKNOWN_MEDIA_TOKENS",
    "VIDEO_BYTES_PER_SECOND",
    "VIDEO_TOKENS_PER_SECOND",
    "FileMeta",
    "image_size",
    "measure",
    "media_tokens",
    "mp4_seconds",
    "parse_seconds",
    "pdf_pages",
    "wav_seconds",
]

IMAGE_TILE_TOKENS = 258
"""Tokens of a small image (both sides <= 384 px) and of each 768x768 tile of a larger one."""
SMALL_IMAGE_SIDE = 384
IMAGE_TILE_SIDE = 768
VIDEO_TOKENS_PER_SECOND = 263
"""Video at the default media resolution (frames at 1 fps plus the audio track)."""
VIDEO_LOW_TOKENS_PER_SECOND = 100
AUDIO_TOKENS_PER_SECOND = 32
PDF_PAGE_TOKENS = 258
UNKNOWN_MEDIA_TOKENS = 258
"""A media part whose size the request does not say (a file never seen): one image's worth."""
AUDIO_BYTES_PER_SECOND = 16_000
"""A guess, not a documented figure: compressed audio at 128 kbit/s (MP3, AAC, OGG)."""
VIDEO_BYTES_PER_SECOND = 250_000
"""A guess, not a documented figure: video at 2 Mbit/s (typical 720p H.264)."""
PDF_BYTES_PER_PAGE = 50_000
"""A guess for a PDF whose pages cannot be counted from its bytes (compressed object streams)."""

RESOLUTION_TOKENS: Mapping[str, int] = {
    "MEDIA_RESOLUTION_LOW": 280,
    "MEDIA_RESOLUTION_MEDIUM": 560,
    "MEDIA_RESOLUTION_HIGH": 1120,
    "MEDIA_RESOLUTION_ULTRA_HIGH": 2240,
}
"""Tokens per image or PDF page when ``mediaResolution`` is set (Gemini 3 models)."""

_HEAD_BYTES = 64 * 1024  # image headers (JPEG's SOF after EXIF) are within the first 64 KiB
_PDF_MAX_BYTES = 32 * 1024 * 1024  # inline data is at most 20 MB; more is not "cheap"
_PAGE = re.compile(rb"/Type\s*/Page(?!s)\b")
_COUNT = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)|/Count\s+(\d+)[^>]*?/Type\s*/Pages\b")
_ISO_MEDIA = frozenset({"mp4", "quicktime", "3gpp", "3gpp2", "mp4a-latm", "m4a", "x-m4a", "mov"})
_SECONDS = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*s\s*$")


@dataclass(frozen=True)
class FileMeta:
    """What the Files API says about an uploaded file (``files/{id}``).

    Attributes:
        mime_type: ``mimeType``.
        size_bytes: ``sizeBytes``.
        duration: ``videoMetadata.videoDuration`` in seconds (video files), if reported.
    """

    mime_type: str = ""
    size_bytes: int | None = None
    duration: float | None = None

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> FileMeta:
        """From a ``File`` resource as the API returns it."""
        size = obj.get("sizeBytes")
        nbytes = int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None
        video = obj.get("videoMetadata")
        duration = parse_seconds(video.get("videoDuration")) if isinstance(video, dict) else None
        return FileMeta(str(obj.get("mimeType") or ""), nbytes, duration)


def parse_seconds(value: Any) -> float | None:
    """Seconds from a protobuf Duration string (``"12.5s"``), or ``None``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        m = _SECONDS.match(value)
        return float(m.group(1)) if m else None
    return None


def image_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the first bytes of a PNG, JPEG, GIF or WebP, or ``None``."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return int(w), int(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8X":
            w = 1 + int.from_bytes(head[24:27], "little")
            h = 1 + int.from_bytes(head[27:30], "little")
            return w, h
        if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
            w, h = struct.unpack("<HH", head[26:30])
            return int(w) & 0x3FFF, int(h) & 0x3FFF
        if kind == b"VP8L" and head[20:21] == b"\x2f":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return None
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def wav_seconds(head: bytes, total_bytes: int) -> float | None:
    """The duration of a WAV file from its header (byte rate) and its size, or ``None``."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE" or len(head) < 36:
        return None
    i = 12
    rate = 0
    while i + 8 <= len(head):
        cid, size = head[i : i + 4], int.from_bytes(head[i + 4 : i + 8], "little")
        if cid == b"fmt " and i + 20 <= len(head):
            rate = int.from_bytes(head[i + 16 : i + 20], "little")
        if cid == b"data":
            if not rate:
                return None
            data = min(size, max(0, total_bytes - i - 8))
            return data / rate
        i += 8 + size + (size & 1)
    return (total_bytes - 44) / rate if rate else None


def mp4_seconds(data: bytes) -> float | None:
    """The duration of an MP4/MOV/3GP file from its ``moov/mvhd`` box, or ``None``."""
    moov = _box(data, b"moov")
    mvhd = _box(moov, b"mvhd") if moov is not None else None
    if mvhd is None or len(mvhd) < 20:
        return None
    if mvhd[0] == 1 and len(mvhd) >= 32:  # version 1: 64-bit times
        scale, length = struct.unpack(">IQ", mvhd[20:32])
    else:
        scale, length = struct.unpack(">II", mvhd[12:20])
    return length / scale if scale else None


def _box(data: bytes, kind: bytes) -> bytes | None:
    """The payload of the first box ``kind`` among the boxes of ``data`` (ISO BMFF)."""
    i = 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        head = 8
        if size == 1 and i + 16 <= len(data):
            size, head = int.from_bytes(data[i + 8 : i + 16], "big"), 16
        elif size == 0:
            size = len(data) - i
        if size < head:
            return None
        if data[i + 4 : i + 8] == kind:
            return data[i + head : i + size]
        i += size
    return None


def pdf_pages(data: bytes) -> int | None:
    """The page count of a PDF from its page objects (``/Type /Page``) or its page tree's
    ``/Count``, or ``None`` if neither is readable (compressed object streams)."""
    if not data.startswith(b"%PDF"):
        return None
    pages = len(_PAGE.findall(data))
    counts = [int(a or b) for a, b in _COUNT.findall(data)]
    best = max([pages, *counts])
    return best or None


def _image_tokens(width: int, height: int) -> int:
    if width <= SMALL_IMAGE_SIDE and height <= SMALL_IMAGE_SIDE:
        return IMAGE_TILE_TOKENS
    tiles = math.ceil(width / IMAGE_TILE_SIDE) * math.ceil(height / IMAGE_TILE_SIDE)
    return tiles * IMAGE_TILE_TOKENS


def _decode(data: str, limit: int) -> bytes:
    """The first ``limit`` bytes of base64 ``data`` (standard or URL-safe)."""
    chunk = data[: (limit // 3 + 1) * 4].strip()
    try:
        if "-" in chunk or "_" in chunk:
            return base64.urlsafe_b64decode(chunk + "=" * (-len(chunk) % 4))
        return base64.b64decode(chunk + "=" * (-len(chunk) % 4))
    except (binascii.Error, ValueError):
        return b""


def _b64_size(data: str) -> int:
    n = len(data.strip())
    return max(0, n * 3 // 4 - data.rstrip().count("=", max(0, n - 2)))


def media_tokens(
    mime_type: str,
    *,
    data: str | None = None,
    size_bytes: int | None = None,
    duration: float | None = None,
    resolution: str | None = None,
) -> int:
    """The input tokens of one media part by Gemini's documented rates, or
    :data:`UNKNOWN_MEDIA_TOKENS` when nothing says its size (see :func:`measure`).

    Example:
        >>> media_tokens("audio/mpeg", duration=60.0)
        1920
    """
    found = measure(
        mime_type, data=data, size_bytes=size_bytes, duration=duration, resolution=resolution
    )
    return UNKNOWN_MEDIA_TOKENS if found is None else found


def measure(
    mime_type: str,
    *,
    data: str | None = None,
    size_bytes: int | None = None,
    duration: float | None = None,
    resolution: str | None = None,
) -> int | None:
    """The input tokens of one media part by Gemini's documented rates (``None``: nothing
    says its size).

    Args:
        mime_type: the part's MIME type (``image/png``, ``video/mp4``, ``application/pdf``).
        data: the base64 data of an inline part (headers are read from it).
        size_bytes: the media's size (from the data, or the Files API's ``sizeBytes``).
        duration: seconds of audio or video, when known (the Files API's
            ``videoMetadata.videoDuration``).
        resolution: ``mediaResolution`` (``MEDIA_RESOLUTION_LOW`` ...), if set.
    """
    major = mime_type.split("/", 1)[0].lower()
    sub = mime_type.split("/", 1)[1].lower() if "/" in mime_type else ""
    if data is not None and size_bytes is None:
        size_bytes = _b64_size(data)
    per_item = RESOLUTION_TOKENS.get(resolution or "")
    if major == "image":
        if per_item is not None:
            return per_item
        dims = image_size(_decode(data, _HEAD_BYTES)) if data else None
        return _image_tokens(*dims) if dims else None
    if major in ("audio", "video"):
        if duration is None and data and sub in ("wav", "x-wav", "wave", "vnd.wave"):
            duration = wav_seconds(_decode(data, 4096), size_bytes or 0)
        if duration is None and data and sub in _ISO_MEDIA and (size_bytes or 0) <= _PDF_MAX_BYTES:
            duration = mp4_seconds(_decode(data, _PDF_MAX_BYTES))
        if duration is None and size_bytes is not None:
            rate = AUDIO_BYTES_PER_SECOND if major == "audio" else VIDEO_BYTES_PER_SECOND
            duration = size_bytes / rate
        if duration is None:
            return None
        if major == "audio":
            return math.ceil(duration * AUDIO_TOKENS_PER_SECOND)
        low = resolution == "MEDIA_RESOLUTION_LOW"
        return math.ceil(
            duration * (VIDEO_LOW_TOKENS_PER_SECOND if low else VIDEO_TOKENS_PER_SECOND)
        )
    if sub == "pdf":
        pages: int | None = None
        if data and (size_bytes or 0) <= _PDF_MAX_BYTES:
            pages = pdf_pages(_decode(data, _PDF_MAX_BYTES))
        if pages is None and size_bytes is not None:
            pages = max(1, math.ceil(size_bytes / PDF_BYTES_PER_PAGE))
        if pages is None:
            return None
        return pages * (per_item if per_item is not None else PDF_PAGE_TOKENS)
    if major == "text" and size_bytes is not None:
        return math.ceil(size_bytes / 4)  # text documents read as text
    return None
