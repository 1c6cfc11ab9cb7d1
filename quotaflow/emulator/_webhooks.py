"""The emulator's static webhooks: each batch job's end posted to the configured URIs, signed
as Gemini signs them (Standard Webhooks, https://www.standardwebhooks.com/, read 2026-12-07).

A job that runs to its end posts ``batch.succeeded`` when the emulator's clock reaches its done
time; a cancel posts ``batch.cancelled`` at once. The body is
``{"type", "version": "v1", "timestamp", "data": {"id", "name", "state", "model"}}``; a delivery
that does not get a 2xx is tried again a few times (Gemini retries for 24 hours). The counts are
in ``stats()["webhooks"]``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from typing import Any

import httpx

from ._config import WebhookConfig
from ._store import BatchRecord

__all__ = ["WebhookSender", "sign"]

_ATTEMPTS = 4
_FIRST_BACKOFF = 0.05
_POLL = 0.02  # how often a running job's end is looked for (real seconds)


def sign(secret: str, wid: str, stamp: str, body: bytes) -> str:
    """The ``webhook-signature`` of a delivery: ``v1,<base64 HMAC-SHA256>``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{wid}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class WebhookSender:
    """Posts batch events to the configured webhooks (on the serving event loop)."""

    def __init__(self, hooks: list[WebhookConfig], clock: Any) -> None:
        self._hooks = hooks
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    def reset(self) -> None:
        """Forget the counts (deliveries in flight go on)."""
        self.delivered = self.failed = 0

    def snapshot(self) -> dict[str, int]:
        """``{"delivered": ..., "failed": ...}``: deliveries answered 2xx, and given up."""
        return {"delivered": self.delivered, "failed": self.failed}

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def watch(self, record: BatchRecord) -> None:
        """Post ``batch.succeeded`` when ``record`` runs to its end (nothing if it is
        cancelled first: :meth:`cancelled` posts that)."""
        if self._hooks:
            self._spawn(self._watch(record))

    def cancelled(self, record: BatchRecord) -> None:
        """Post ``batch.cancelled`` for ``record`` now."""
        if self._hooks:
            self._spawn(self._post("batch.cancelled", record))

    async def _watch(self, record: BatchRecord) -> None:
        while record.cancel_time is None:
            left = record.done_time - self._clock()
            if left <= 0:
                await self._post("batch.succeeded", record)
                return
            await asyncio.sleep(min(left, _POLL))

    async def _post(self, kind: str, record: BatchRecord) -> None:
        now = self._clock()
        event = {
            "type": kind,
            "version": "v1",
            "timestamp": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
            "data": {
                "id": record.name.split("/", 1)[1],
                "name": record.name,
                "state": "BATCH_STATE_" + kind.split(".")[1].upper(),
                "model": f"models/{record.model}",
            },
        }
        body = json.dumps(event).encode()
        wid = f"msg_{secrets.token_hex(12)}"
        async with httpx.AsyncClient(timeout=5.0) as client:
            for hook in self._hooks:
                if kind not in hook.subscribed_events:
                    continue
                await self._deliver(client, hook, wid, body)

    async def _deliver(
        self, client: httpx.AsyncClient, hook: WebhookConfig, wid: str, body: bytes
    ) -> None:
        backoff = _FIRST_BACKOFF
        for attempt in range(_ATTEMPTS):
            stamp = str(int(self._clock()))
            headers = {
                "content-type": "application/json",
                "webhook-id": wid,
                "webhook-timestamp": stamp,
                "webhook-signature": sign(hook.signing_secret, wid, stamp, body),
            }
            try:
                answer = await client.post(hook.uri, content=body, headers=headers)
                if answer.is_success:
                    self.delivered += 1
                    return
            except httpx.HTTPError:
                pass
            if attempt + 1 < _ATTEMPTS:
                await asyncio.sleep(backoff)
                backoff *= 2
        self.failed += 1
