"""What the transports of one limiter remember between calls: the Files API metadata they saw
(for sizing file parts) and the Batch API jobs that hold enqueued tokens.

A limiter and every ``SyncLimiter.sharing(limiter)`` share one :class:`Held` (it is kept per
limiter core), so a job created through the async client and polled through the sync one is
still one job. It lives in the process: another process of a fleet does not see the holds of
this one (their tokens are in the shared backend all the same, and come back when this process
sees the job end, or at the expiry).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quotaflow.gemini._media import FileMeta

__all__ = ["BatchHold", "FileBook", "Held", "held_for"]

BATCH_TERMINAL = frozenset(
    {
        "BATCH_STATE_SUCCEEDED",
        "BATCH_STATE_FAILED",
        "BATCH_STATE_CANCELLED",
        "BATCH_STATE_EXPIRED",
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
    }
)
"""The states of a batch job that has ended (the REST ``BatchState`` and the SDK's names)."""


class FileBook(Mapping[str, FileMeta]):
    """File metadata by name (``files/abc``), the most recent ``size`` files, thread-safe."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._data: OrderedDict[str, FileMeta] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, name: str, meta: FileMeta) -> None:
        """Remember (or refresh) what the Files API said about ``name``."""
        with self._lock:
            self._data[name] = meta
            self._data.move_to_end(name)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def forget(self, name: str) -> None:
        """The file was deleted."""
        with self._lock:
            self._data.pop(name, None)

    def __getitem__(self, name: str) -> FileMeta:
        return self._data[name]

    def __iter__(self) -> Any:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class BatchHold:
    """The enqueued tokens of one active batch job.

    Attributes:
        name: the job's name (``batches/abc``).
        model: the model it runs on.
        tokens: the tokens held.
        expires: when the hold ends if the job's end is never seen (the limiter's clock).
        permit: the permit holding them (a ``Concurrent`` limit: given back when released).
    """

    name: str
    model: str
    tokens: int
    expires: float
    permit: Any


class Held:
    """The Files API metadata and the batch holds of one limiter (thread-safe)."""

    def __init__(self) -> None:
        self.files = FileBook()
        self._holds: dict[str, BatchHold] = {}
        self._lock = threading.Lock()
        self.limiters: dict[tuple[str, str], Any] = {}  # (driver kind, model) -> batch limiter

    def hold(self, hold: BatchHold) -> None:
        """Keep ``hold`` until the job's end is seen or it expires."""
        with self._lock:
            self._holds[hold.name] = hold

    def end(self, name: str) -> BatchHold | None:
        """The job ``name`` ended: its hold, taken out (``None`` if none)."""
        with self._lock:
            return self._holds.pop(name, None)

    def expired(self, now: float) -> list[BatchHold]:
        """The holds past their expiry, taken out."""
        with self._lock:
            gone = [h for h in self._holds.values() if h.expires <= now]
            for h in gone:
                del self._holds[h.name]
            return gone

    def holds(self) -> dict[str, BatchHold]:
        """The active holds by job name (a copy)."""
        with self._lock:
            return dict(self._holds)

    def __bool__(self) -> bool:
        return bool(self._holds)

    def __repr__(self) -> str:
        return f"Held(files={len(self.files)}, batches={len(self._holds)})"


_HELD: weakref.WeakKeyDictionary[Any, Held] = weakref.WeakKeyDictionary()
_HELD_LOCK = threading.Lock()


def held_for(limiter: Any) -> Held:
    """The :class:`Held` of ``limiter`` (shared with the limiters sharing its core)."""
    core = limiter._core
    with _HELD_LOCK:
        found = _HELD.get(core)
        if found is None:
            found = _HELD[core] = Held()
        return found
