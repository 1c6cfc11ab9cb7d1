"""Gemini's webhooks, received: a batch job's end gives its enqueued tokens back at once.

Gemini posts an event to a project's webhook (registered with ``client.webhooks.create``)
when a batch job succeeds, fails, is cancelled or expires
(https://ai.google.dev/gemini-api/docs/webhooks, read 2026-12-07). Deliveries follow the
Standard Webhooks specification (https://www.standardwebhooks.com/, read 2026-12-07): the
headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (space-separated
``v1,<base64 HMAC-SHA256>`` entries over ``"<id>.<timestamp>.<body>"``, keyed by the signing
secret, ``whsec_<base64>``), at least once, retried for up to 24 hours.

:class:`BatchWebhooks` checks each delivery and, for a ``batch.*`` event, ends the job's hold
(:func:`~quotaflow.transports.batch_holds`) as a ``GET`` that shows its end would: no polling
needed. A delivery seen before (its ``webhook-id``) changes nothing; one whose signature or
timestamp does not check out is refused and changes nothing.

Example:
    >>> import quotaflow
    >>> from quotaflow.transports.webhooks import BatchWebhooks
    >>> hooks = BatchWebhooks(quotaflow.Limiter(tier="tier1"), secret="whsec_c2VjcmV0")
    >>> hooks
    BatchWebhooks(secrets=1, seen=0)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from quotaflow.clock import Clock
from quotaflow.errors import ConfigError, QuotaflowError
from quotaflow.flow.held import held_for
from quotaflow.limiter import Limiter
from quotaflow.sync import SyncLimiter
from quotaflow.transports.base import settle_async, settle_sync

__all__ = ["BATCH_EVENTS", "BatchWebhooks", "WebhookError", "WebhookEvent", "verify_webhook"]

log = logging.getLogger("quotaflow.webhooks")

BATCH_EVENTS = frozenset({"batch.succeeded", "batch.failed", "batch.cancelled", "batch.expired"})
"""The events that end a batch job."""

TOLERANCE = 300.0
"""How far a delivery's timestamp may be from the clock, in seconds (Standard Webhooks)."""


class WebhookError(QuotaflowError, ValueError):
    """A delivery that does not check out (a missing header, a bad signature, a timestamp out
    of tolerance, a body that is no event). Nothing was done with it.

    Attributes:
        problem: what is wrong, in a few words (never the secret or the signature).
    """

    def __init__(self, message: str, *, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class WebhookEvent:
    """One delivery, checked.

    Attributes:
        id: the delivery's ``webhook-id``.
        type: the event (``batch.succeeded``, ...).
        batch: the batch job it ends (``batches/abc``), or ``None`` for other events.
        tokens: the enqueued tokens given back (0: no hold of this process had the job).
        duplicate: a delivery of this id was handled before (nothing done this time).
        data: the event's ``data``.
    """

    id: str
    type: str
    batch: str | None
    tokens: int
    duplicate: bool
    data: Mapping[str, Any]


def _keys(secret: str | Sequence[str]) -> list[bytes]:
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ConfigError("secret: give the webhook's signing secret (whsec_...)")
    keys: list[bytes] = []
    for i, s in enumerate(secrets):
        if not isinstance(s, str) or not s:
            raise ConfigError(f"secret[{i}]: give the signing secret as a string (whsec_...)")
        raw = s[len("whsec_") :] if s.startswith("whsec_") else s
        try:
            keys.append(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"secret[{i}]: not a signing secret (whsec_ and base64, as webhooks.create "
                "returned it)"
            ) from None
    return keys


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    if not value:
        raise WebhookError(f"the delivery has no {name} header", problem=f"no {name}")
    return value


def _check(
    keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now: float, tolerance: float
) -> tuple[str, dict[str, Any]]:
    wid = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        at = int(stamp)
    except ValueError:
        raise WebhookError(
            "webhook-timestamp is not whole seconds since 1970", problem="bad timestamp"
        ) from None
    if abs(now - at) > tolerance:
        raise WebhookError(
            f"webhook-timestamp is {now - at:.0f} s from the clock (at most {tolerance:.0f}): "
            "a replay or a wrong clock",
            problem="timestamp out of tolerance",
        )
    signed = wid.encode() + b"." + stamp.encode() + b"." + body
    wanted = [base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()) for k in keys]
    given = [
        entry.split(",", 1)[1].encode()
        for entry in signatures.split()
        if entry.startswith("v1,") and "," in entry
    ]
    if not any(hmac.compare_digest(w, g) for w in wanted for g in given):
        raise WebhookError("no v1 signature matches the signing secret", problem="bad signature")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookError("the body is not JSON", problem="not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise WebhookError("the body is no event (no type)", problem="no type")
    return wid, event


def verify_webhook(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Check a delivery's signature and timestamp (Standard Webhooks) and return its event;
    raise :class:`WebhookError` if it does not check out. ``secret``: the signing secret, or
    several while one is rotated. ``now``: the clock (default: the system's)."""
    now = time.time() if now is None else now
    return _check(_keys(secret), headers, body, now, tolerance)[1]


def _batch_name(data: Mapping[str, Any]) -> str | None:
    """The job an event names: ``data.name`` (``batches/abc``), else ``batches/<data.id>``."""
    for field in ("name", "id", "batch"):
        value = data.get(field)
        if isinstance(value, str) and value:
            return value if value.startswith("batches/") else f"batches/{value}"
    return None


class BatchWebhooks:
    """Receives Gemini's webhooks for one limiter: each batch job's end, checked, gives the
    job's enqueued tokens back (the hold its transports took at creation).

    Args:
        limiter: the limiter (async or sync) whose transports created the jobs.
        secret: the webhook's signing secret (``whsec_...``), or several while one is rotated.
        tolerance: how far a delivery's timestamp may be from the clock, in seconds.
        clock: the clock timestamps are checked against (default: the limiter's).
        remember: how many delivery ids are kept to recognise a delivery sent again.

    Serve :meth:`asgi` on a route of your web server (it answers 204, or 400/401 with the
    problem), or call :meth:`handle` / :meth:`handle_sync` from a handler of your own.
    """

    def __init__(
        self,
        limiter: Limiter | SyncLimiter,
        *,
        secret: str | Sequence[str],
        tolerance: float = TOLERANCE,
        clock: Clock | None = None,
        remember: int = 10_000,
    ) -> None:
        if not isinstance(limiter, (Limiter, SyncLimiter)):
            raise ConfigError(
                f"limiter={limiter!r}: give the quotaflow.Limiter or SyncLimiter whose "
                "transports created the batch jobs"
            )
        if not tolerance > 0:
            raise ConfigError(f"tolerance={tolerance!r}: give seconds > 0 (default 300)")
        if remember < 1:
            raise ConfigError(f"remember={remember!r}: give a count >= 1")
        self._keys = _keys(secret)
        self._held = held_for(limiter)
        self._clock = clock or limiter.clock
        self._tolerance = tolerance
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()

    def _take(self, headers: Mapping[str, str], body: bytes) -> tuple[WebhookEvent, Any]:
        wid, event = _check(self._keys, headers, body, self._clock.now(), self._tolerance)
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        kind = event["type"]
        batch = _batch_name(data) if kind in BATCH_EVENTS else None
        with self._lock:
            duplicate = wid in self._seen
            if not duplicate:
                self._seen[wid] = None
                while len(self._seen) > self._remember:
                    self._seen.popitem(last=False)
        hold = self._held.end(batch) if batch is not None and not duplicate else None
        tokens = hold.tokens if hold is not None else 0
        if hold is not None:
            log.info("%s: %s; %d enqueued tokens of %s given back", batch, kind, tokens, hold.model)
        return WebhookEvent(wid, kind, batch, tokens, duplicate, data), hold

    async def handle(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Check one delivery and act on it (raises :class:`WebhookError`)."""
        event, hold = self._take(headers, body)
        if hold is not None:
            await settle_async(hold.permit, None)
        return event

    def handle_sync(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """:meth:`handle` for threaded servers."""
        event, hold = self._take(headers, body)
        if hold is not None:
            settle_sync(hold.permit, None)
        return event

    async def asgi(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        """An ASGI app: ``POST`` a delivery; 204 when handled (a duplicate too), 400 or 401
        with the problem when not, 405 for another method."""
        if scope["type"] != "http":
            return
        status, text = 204, b""
        if scope.get("method") != "POST":
            status, text = 405, b"POST a webhook delivery"
        else:
            chunks: list[bytes] = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            try:
                await self.handle(headers, b"".join(chunks))
            except WebhookError as exc:
                status = 400 if exc.problem in ("not JSON", "no type") else 401
                text = exc.problem.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(text)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": text})

    def __repr__(self) -> str:
        return f"BatchWebhooks(secrets={len(self._keys)}, seen={len(self._seen)})"
