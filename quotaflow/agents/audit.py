"""The audit log: one record per call through an agent transport, whatever happened.

A record holds who called what and what came of it, never the API key (a short fingerprint
instead) and never prompt or response content (an optional hash instead). Records go to sinks:
a JSON lines file with size-based rotation, Python ``logging``, or a callback. Writing never
blocks the call path: :meth:`AuditLog.emit` puts the record on a bounded queue that a writer
thread drains; a full queue or a failing sink drops records (counted in
:attr:`AuditLog.dropped`) and is reported once, and never breaks a call.

Example:
    >>> log = AuditLog([CallbackSink(print)])
    >>> log.close()
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from quotaflow.gemini._canonical import SECRET_PARAMS, canonical_request
from quotaflow.observe import metrics

__all__ = [
    "AuditLog",
    "AuditRecord",
    "CallbackSink",
    "JsonLinesSink",
    "LoggingSink",
    "Sink",
    "content_hash",
    "key_fingerprint",
    "path_template",
]

log = logging.getLogger("quotaflow.agents")


@dataclass(frozen=True)
class AuditRecord:
    """One call, as the audit log keeps it.

    Attributes:
        time: when the call began (epoch seconds).
        agent: the agent (``None`` when the call named none).
        method: the API method (``generateContent``, ``delete``, ...).
        http_method: ``GET``, ``POST``, ...
        path: the URL path with resource ids kept and secret query values dropped.
        area: the area (``content``, ``files``, ...).
        access: ``read`` or ``write``.
        model: the model, if any.
        decision: ``allowed`` or ``denied``.
        reason: why (``granted``, ``no_grant``, ``read_only``, ``budget``, ...).
        outcome: ``ok`` (2xx/3xx), ``http_error`` (an error status), ``error`` (an exception),
            ``denied`` (answered locally: a policy denial, a spent budget, or a quota refusal,
            whose ``error`` names quotaflow's typed error).
        status: the HTTP status the caller got (``None`` after an exception).
        wait: seconds spent waiting for quota.
        tokens_estimated: input tokens reserved before the call.
        tokens_actual: input tokens the response reported.
        output_tokens: output (and thinking) tokens the response reported.
        retries: how many times the call was sent again (429, 5xx).
        quota_id: the ``quotaId`` of the last 429 from the server, if any.
        priority: the priority the call waited at.
        duration: seconds from the call's start to the record.
        key: the first 8 hex digits of the key's SHA-256 (never the key).
        content_hash: SHA-256 (16 hex) of the request body, when enabled.
        resource: the resource created or acted on, if any.
        error: the exception type and its (redacted) message.
        service_tier: the tier that served the call (``standard``, ``flex``, ``priority``),
            from ``x-gemini-service-tier`` or the request.
        spend_micros: what the call cost, in millionths of a dollar (``None``: no price).
        would_wait: in shadow mode, the seconds the limiter would have made the call wait
            (``None``: enforcing, or no wait).
        would_refuse: in shadow mode, why the limiter would have refused it (``timeout``,
            ``cannot_fit``, ``exhausted``), else ``None``.
    """

    time: float
    agent: str | None
    method: str
    http_method: str
    path: str
    area: str
    access: str
    model: str | None
    decision: str
    reason: str
    outcome: str
    status: int | None = None
    wait: float = 0.0
    tokens_estimated: int = 0
    tokens_actual: int | None = None
    output_tokens: int | None = None
    retries: int = 0
    quota_id: str | None = None
    priority: int | None = None
    duration: float = 0.0
    key: str | None = None
    content_hash: str | None = None
    resource: str | None = None
    error: str | None = None
    service_tier: str | None = None
    spend_micros: int | None = None
    would_wait: float | None = None
    would_refuse: str | None = None

    @classmethod
    def of(cls, fields: dict[str, Any]) -> AuditRecord:
        """``AuditRecord(**fields)``, given every field, without the frozen dataclass's
        ``object.__setattr__`` per field (a record is made for every call)."""
        if fields.keys() != _FIELDS:
            return cls(**fields)  # a missing or unknown field: the constructor says which
        record: AuditRecord = object.__new__(cls)
        record.__dict__.update(fields)
        return record

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """A record from :meth:`to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_FIELDS = {f.name: None for f in dataclasses.fields(AuditRecord)}.keys()


def key_fingerprint(key: str | None) -> str | None:
    """The first 8 hex digits of the key's SHA-256: enough to tell keys apart, not to use one."""
    if not key:
        return None
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def content_hash(body: bytes) -> str | None:
    """A SHA-256 (16 hex digits) of a request body, to match calls without keeping content."""
    return hashlib.sha256(body).hexdigest()[:16] if body else None


def path_template(url: str) -> str:
    """The canonical path of ``url`` (each segment decoded once) with resource ids kept and
    secret query parameters dropped, whatever the spelling of their names (``$key``,
    ``%6Bey``, ``KEY``).

    Example:
        >>> path_template("https://h/v1beta/files/abc?key=SECRET&alt=sse")
        '/v1beta/files/abc?alt=sse'
    """
    canon = canonical_request("GET", url)
    query = [(k, v) for k, v in canon.query if k not in SECRET_PARAMS]
    return canon.path + ("?" + urlencode(query) if query else "")


class Sink(Protocol):
    """Where records go. ``write`` may raise; the log catches and counts."""

    def write(self, records: list[AuditRecord]) -> None:
        """Write a batch of records."""
        ...


class JsonLinesSink:
    """A JSON lines file, rotated by size (``audit.jsonl`` -> ``audit.jsonl.1`` ...).

    The file is opened per batch, so nothing stays open between writes.

    Args:
        path: the file.
        max_bytes: rotate before a write would pass this size.
        backups: how many rotated files to keep.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 10_000_000, backups: int = 5):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups

    def write(self, records: list[AuditRecord]) -> None:
        """Append the records, one JSON object a line."""
        data = "".join(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in records)
        raw = data.encode()
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(raw) > self.max_bytes:
            self._rotate()
        with self.path.open("ab") as f:
            f.write(raw)

    def _rotate(self) -> None:
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def __repr__(self) -> str:
        return f"JsonLinesSink({str(self.path)!r}, max_bytes={self.max_bytes})"


class LoggingSink:
    """Python ``logging``: one line per record on ``logger`` (``quotaflow.audit``).

    The record's fields are also attached as ``record.audit`` (a dict) for structured handlers.
    """

    def __init__(self, logger: str | logging.Logger = "quotaflow.audit", level: int = logging.INFO):
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def write(self, records: list[AuditRecord]) -> None:
        """Log each record."""
        for r in records:
            self.logger.log(
                self.level,
                "%s %s %s %s -> %s %s (wait %.3fs, tokens %s/%s, retries %d)",
                r.agent or "-",
                r.decision,
                r.method,
                r.path,
                r.status if r.status is not None else r.outcome,
                r.reason,
                r.wait,
                r.tokens_estimated,
                r.tokens_actual if r.tokens_actual is not None else "-",
                r.retries,
                extra={"audit": r.to_dict()},
            )


class CallbackSink:
    """Calls ``fn(record)`` for each record (from the writer thread)."""

    def __init__(self, fn: Callable[[AuditRecord], object]) -> None:
        self.fn = fn

    def write(self, records: list[AuditRecord]) -> None:
        """Call the callback for each record."""
        for r in records:
            self.fn(r)


_STOP = object()
_LINGER = 0.005
"""Seconds the writer waits after a wake-up for more records, so it wakes once per batch rather
than once per call (:meth:`AuditLog.flush` and :meth:`AuditLog.close` cut it short)."""


class AuditLog:
    """Records go on a bounded queue; a writer thread hands them to the sinks, in batches.

    Args:
        sinks: where records go; a path (or ``str``) means a :class:`JsonLinesSink`.
        queue_size: records held at most; beyond, new records are dropped (and counted).
        content_hash: also hash each request body into the record.

    Attributes:
        dropped: records lost to a full queue or a failing sink.
    """

    def __init__(
        self,
        sinks: Iterable[Sink | str | os.PathLike[str]] = (),
        *,
        queue_size: int = 10_000,
        content_hash: bool = False,
    ) -> None:
        self.sinks: list[Sink] = [
            JsonLinesSink(s) if isinstance(s, (str, os.PathLike)) else s for s in sinks
        ]
        self.content_hash = content_hash
        self.dropped = 0
        # a deque and an event, not a queue.Queue: a record is an append, and the writer is
        # woken once per batch (a Queue takes a lock and wakes the writer on every put)
        self._queue: collections.deque[object] = collections.deque()
        self._size = queue_size
        self._wake = threading.Event()  # set: the writer has something to take
        self._hurry = threading.Event()  # set: a flush or close is waiting, skip the linger
        self._reported: set[int] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="quotaflow-audit", daemon=True)
        self._thread.start()

    def emit(self, record: AuditRecord) -> None:
        """Queue a record; never blocks and never raises."""
        if metrics.ON and record.decision == "denied":
            metrics.denied(record.model or "", record.reason, record.agent)
        if self._closed:
            self._drop(1, "the audit log is closed")
            return
        if len(self._queue) >= self._size:
            self._drop(1, "the audit queue is full")
            return
        self._queue.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def _drop(self, n: int, why: str, ident: int = 0) -> None:
        with self._lock:
            self.dropped += n
            first = ident not in self._reported
            self._reported.add(ident)
        if first:
            log.warning("quotaflow audit: %s; records are being dropped (counted)", why)

    def _run(self) -> None:
        queue, wake, hurry = self._queue, self._wake, self._hurry
        while True:
            wake.wait()
            if hurry.wait(_LINGER):  # more records come meanwhile: one batch for them all
                hurry.clear()
            wake.clear()  # before taking: a record queued from here on sets it again
            while True:
                batch: list[AuditRecord] = []
                marks: list[threading.Event] = []
                stop = False
                while len(batch) < 512:
                    try:
                        item = queue.popleft()
                    except IndexError:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    if isinstance(item, threading.Event):  # a flush waits for what came before
                        marks.append(item)
                        break
                    batch.append(item)  # type: ignore[arg-type]
                if batch:
                    self._write(batch)
                for mark in marks:
                    mark.set()
                if stop:
                    return
                if not batch and not marks:
                    break

    def _write(self, batch: list[AuditRecord]) -> None:
        for sink in self.sinks:
            try:
                sink.write(batch)
            except Exception as exc:  # a full disk, a bad callback: never the caller's problem
                self._drop(len(batch), f"sink {sink!r} failed ({type(exc).__name__})", id(sink))

    def flush(self) -> None:
        """Wait until every queued record has been written (or dropped)."""
        if self._thread.is_alive():
            done = threading.Event()
            self._queue.append(done)
            self._hurry.set()
            self._wake.set()
            while not done.wait(0.1) and self._thread.is_alive():
                pass

    def close(self) -> None:
        """Write what is queued and stop the writer thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.append(_STOP)
        self._hurry.set()
        self._wake.set()
        self._thread.join()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog(sinks={self.sinks!r}, queued={len(self._queue)}, dropped={self.dropped})"
