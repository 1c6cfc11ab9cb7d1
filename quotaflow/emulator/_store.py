"""In-memory resources (files, caches, batches, tuned models) and wire helpers. Pure, no I/O.

Every resource records the project that owns it; keys of one project see the same resources.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

from ._errors import JSON

__all__ = [
    "BatchRecord",
    "CacheRecord",
    "FileRecord",
    "InteractionRecord",
    "Store",
    "TunedRecord",
    "UploadSession",
    "paginate",
    "parse_duration",
    "parse_timestamp",
    "timestamp",
]

T = TypeVar("T")


def timestamp(t: float) -> str:
    """RFC 3339 UTC timestamp with microseconds, e.g. ``2026-03-08T10:00:00.000000Z``."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TS = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")


def parse_timestamp(text: str) -> float:
    """Parse an RFC 3339 timestamp (any number of fractional digits) to epoch seconds.

    Raises:
        ValueError: if ``text`` is not a timestamp.
    """
    m = _TS.match(text)
    if m is None:
        raise ValueError(f"invalid timestamp {text!r}")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = datetime.fromisoformat(m.group(1) + zone).timestamp()
    return base + float("0." + (m.group(2) or "0"))


def parse_duration(text: str) -> float:
    """Parse a protobuf Duration string such as ``"3600s"`` or ``"1.5s"``.

    Raises:
        ValueError: if ``text`` is not a duration.
    """
    if not re.fullmatch(r"\d+(\.\d+)?s", text):
        raise ValueError(f"invalid duration {text!r}")
    return float(text[:-1])


def paginate(
    items: list[T], page_size: str | None, page_token: str | None, default: int, maximum: int
) -> tuple[list[T], str | None]:
    """Slice one page out of ``items``.

    Args:
        items: Everything, in listing order.
        page_size: The raw ``pageSize`` query value (0/absent: ``default``; capped at ``maximum``).
        page_token: The raw ``pageToken`` from a previous page.
        default: Default page size.
        maximum: Largest page size.

    Returns:
        The page and the next page token (None on the last page).

    Raises:
        ValueError: if the size or token is malformed.
    """
    size = int(page_size) if page_size else 0
    if size < 0:
        raise ValueError("page_size must be non-negative")
    size = min(size or default, maximum)
    start = 0
    if page_token:
        try:
            raw = base64.urlsafe_b64decode(page_token.encode()).decode()
            start = int(raw.removeprefix("offset:"))
        except ValueError as exc:
            raise ValueError("Invalid page token") from exc
        if not raw.startswith("offset:") or start < 0:
            raise ValueError("Invalid page token")
    end = start + size
    token = (
        base64.urlsafe_b64encode(f"offset:{end}".encode()).decode() if end < len(items) else None
    )
    return items[start:end], token


@dataclass
class UploadSession:
    """A resumable upload in progress."""

    project: str
    meta: JSON
    size: int
    mime_type: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class FileRecord:
    """An uploaded file."""

    project: str
    name: str
    display_name: str | None
    mime_type: str
    data: bytes
    create_time: float
    expire_time: float
    source: str = "UPLOADED"

    def to_json(self, base_url: str, version: str) -> JSON:
        """The File resource as Gemini sends it."""
        digest = hashlib.sha256(self.data).hexdigest()
        out: JSON = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": timestamp(self.create_time),
            "updateTime": timestamp(self.create_time),
            "expirationTime": timestamp(self.expire_time),
            "sha256Hash": base64.b64encode(digest.encode()).decode(),
            "uri": f"{base_url}/{version}/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "GENERATED":
            out["downloadUri"] = f"{base_url}/{version}/{self.name}:download?alt=media"
        if self.display_name:
            out["displayName"] = self.display_name
        return out


@dataclass
class CacheRecord:
    """A cached content."""

    project: str
    name: str
    model: str
    display_name: str | None
    tokens: int
    create_time: float
    update_time: float
    expire_time: float

    def to_json(self) -> JSON:
        """The CachedContent resource (without its contents, as Gemini sends it)."""
        out: JSON = {
            "name": self.name,
            "model": f"models/{self.model}",
            "createTime": timestamp(self.create_time),
            "updateTime": timestamp(self.update_time),
            "expireTime": timestamp(self.expire_time),
            "usageMetadata": {"totalTokenCount": self.tokens},
        }
        if self.display_name:
            out["displayName"] = self.display_name
        return out


@dataclass
class BatchRecord:
    """A batch job (generate or embed); its state follows from the clock.

    ``results`` are the inlined response entries, computed at creation and revealed when the
    job is done; ``output_file`` names the responses file if the input was a file.
    """

    project: str
    name: str
    model: str
    kind: str
    display_name: str | None
    results: list[JSON]
    create_time: float
    done_time: float
    output_file: str | None = None
    cancel_time: float | None = None
    tokens: int = 0


@dataclass
class TunedRecord:
    """A tuned model; ACTIVE once ``ready_time`` has passed."""

    project: str
    name: str
    base_model: str
    display_name: str | None
    create_time: float
    ready_time: float
    hyperparameters: JSON


@dataclass
class InteractionRecord:
    """A stored interaction (the Interactions API): its JSON as ``get`` returns it."""

    project: str
    id: str
    body: JSON
    cancelled: bool = False


class Store:
    """Every resource of an emulator, keyed by resource name."""

    def __init__(self) -> None:
        self.uploads: dict[str, UploadSession] = {}
        self.files: dict[str, FileRecord] = {}
        self.caches: dict[str, CacheRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.tuned: dict[str, TunedRecord] = {}
        self.interactions: dict[str, InteractionRecord] = {}
        self._serial = 0

    def reset(self) -> None:
        """Forget every resource."""
        for table in (
            self.uploads,
            self.files,
            self.caches,
            self.batches,
            self.tuned,
            self.interactions,
        ):
            table.clear()
        self._serial = 0

    def new_id(self, kind: str) -> str:
        """A fresh deterministic 12-character id."""
        self._serial += 1
        return hashlib.sha1(f"{kind}:{self._serial}".encode()).hexdigest()[:12]

    def owned(self, table: dict[str, T], project: str) -> list[T]:
        """The records of ``table`` owned by ``project``, oldest first."""
        return [r for r in table.values() if getattr(r, "project", None) == project]
