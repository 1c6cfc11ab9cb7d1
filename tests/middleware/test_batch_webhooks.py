"""Gemini's batch webhooks give a job's enqueued tokens back without polling: the emulator posts
each job's end, signed (Standard Webhooks), to a receiver on loopback that serves
``BatchWebhooks``; google-genai's ``client.batches`` creates the jobs through the quota
transports. A delivery that does not check out, or comes twice, changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from google import genai

from quotaflow import RPM, TPM, Limit, Limiter, SyncLimiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, WebhookConfig, serve
from quotaflow.errors import ConfigError
from quotaflow.transports import batch_holds, genai_http_options
from quotaflow.transports.webhooks import BatchWebhooks, WebhookError, verify_webhook

KEY = "test-key"
FLASH = "gemini-2.5-flash"
ENQUEUED = 20
JOB = [{"contents": [{"parts": [{"text": "x" * 40}], "role": "user"}]}]  # 10 tokens
SECRET = "whsec_" + base64.b64encode(b"quotaflow-test-signing-secret").decode()


def _limiter() -> Limiter:
    quota = [RPM(100, 1.0), TPM(100_000, 1.0)]
    quota.append(Limit("batch_enqueued_tokens", ENQUEUED, 86_400.0, "batch_tokens"))
    return Limiter(tier=None, quotas={FLASH: quota})


def _config(delay: float, uri: str | None) -> EmulatorConfig:
    hooks = [WebhookConfig(uri=uri, signing_secret=SECRET)] if uri else []
    return EmulatorConfig(
        minute_seconds=1.0,
        batch_delay_seconds=delay,
        webhooks=hooks,
        models=[ModelConfig(name=FLASH, rpm=100, tpm=100_000, batch_enqueued_tokens=ENQUEUED)],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve_one(app: Any, stream: SocketStream) -> None:
    """One HTTP/1.1 request on ``stream``, handed to the ASGI ``app`` (enough for a webhook)."""
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ")[0]
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
        while len(body) < length:
            body += await stream.receive()
        out: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            out.setdefault(message["type"], message)

        scope = {
            "type": "http",
            "method": method,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        }
        await app(scope, receive, send)
        start, text = out["http.response.start"], out["http.response.body"]["body"]
        await stream.send(
            b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (start["status"], len(text), text)
        )


@asynccontextmanager
async def _receiver(hooks: BatchWebhooks) -> AsyncIterator[str]:
    """``hooks.asgi`` served on loopback by this event loop (asyncio or trio)."""
    port = _free_port()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    async with listener, anyio.create_task_group() as tg:  # closed once serving stopped
        tg.start_soon(listener.serve, lambda s: _serve_one(hooks.asgi, s))
        try:
            yield f"http://127.0.0.1:{port}/gemini-webhook"
        finally:
            tg.cancel_scope.cancel()


def _delivery(body: dict[str, Any], *, wid: str = "msg_1", at: float | None = None) -> Any:
    raw = json.dumps(body).encode()
    stamp = str(int(time.time() if at is None else at))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{wid}.{stamp}.".encode() + raw, hashlib.sha256).digest()
    headers = {
        "webhook-id": wid,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    return headers, raw


def _ended(name: str, kind: str = "batch.succeeded") -> dict[str, Any]:
    return {"type": kind, "version": "v1", "data": {"id": name.split("/", 1)[1]}}


@pytest.mark.anyio
async def test_a_jobs_end_posted_by_the_server_gives_its_tokens_back_without_polling() -> None:
    limiter = _limiter()
    async with _receiver(BatchWebhooks(limiter, secret=SECRET)) as uri:
        with serve(_config(delay=0.4, uri=uri)) as served:
            client = genai.Client(
                api_key=KEY, http_options=genai_http_options(limiter, base_url=served.base_url)
            )
            try:
                for _ in range(2):  # every enqueued token of the model is now held
                    await client.aio.batches.create(model=FLASH, src=JOB)
                assert sum(h.tokens for h in batch_holds(limiter).values()) == ENQUEUED
                with anyio.fail_after(10):
                    # no get, no list: only the webhooks end the holds (what is checked)
                    while batch_holds(limiter):  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                quick: Any = {"http_options": {"headers": {"x-quotaflow-timeout": "0.5"}}}
                for _ in range(2):  # the room is back at once
                    await client.aio.batches.create(model=FLASH, src=JOB, config=quick)
            finally:
                await client.aio.aclose()
                client.close()
            stats = served.emulator.stats()
            assert stats["webhooks"]["delivered"] >= 2 and stats["webhooks"]["failed"] == 0
            rejected = stats["models"].get(FLASH, {}).get("rejected_by_dimension", {})
            assert rejected.get("batch_enqueued_tokens", 0) == 0


@pytest.mark.anyio
async def test_a_forged_stale_or_repeated_delivery_changes_nothing() -> None:
    limiter = _limiter()
    hooks = BatchWebhooks(limiter, secret=["whsec_b2xk", SECRET])  # a secret being rotated
    async with _receiver(hooks) as uri:
        with serve(_config(delay=3600.0, uri=None)) as served:
            client = genai.Client(
                api_key=KEY, http_options=genai_http_options(limiter, base_url=served.base_url)
            )
            try:
                first = await client.aio.batches.create(model=FLASH, src=JOB)
                second = await client.aio.batches.create(model=FLASH, src=JOB)
            finally:
                await client.aio.aclose()
                client.close()
        assert first.name and second.name
        async with httpx.AsyncClient() as http:

            async def post(headers: dict[str, str], raw: bytes) -> httpx.Response:
                return await http.post(uri, content=raw, headers=headers)

            headers, raw = _delivery(_ended(first.name))
            forged = {**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
            assert (await post(forged, raw)).status_code == 401
            assert (await post(headers, raw.replace(b"succeeded", b"failed"))).status_code == 401
            stale = _delivery(_ended(first.name), wid="msg_old", at=time.time() - 3600)
            answer = await post(*stale)
            assert (answer.status_code, answer.text) == (401, "timestamp out of tolerance")
            assert set(batch_holds(limiter)) == {first.name, second.name}  # nothing ended

            assert (await post(headers, raw)).status_code == 204
            assert set(batch_holds(limiter)) == {second.name}
            again = await hooks.handle(headers, raw)  # at least once: the same delivery again
            assert (again.duplicate, again.tokens, again.batch) == (True, 0, first.name)
            assert set(batch_holds(limiter)) == {second.name}
            assert (await http.get(uri)).status_code == 405
        permit = await limiter.acquire_nowait(FLASH, cost={"batch_tokens": 10})  # its room
        await permit.release()
        last = await hooks.handle(*_delivery(_ended(second.name, "batch.cancelled"), wid="m2"))
        assert (last.tokens, batch_holds(limiter)) == (ENQUEUED // 2, {})  # nothing left held


@contextmanager
def _thread_receiver(hooks: BatchWebhooks) -> Iterator[str]:
    """``hooks.handle_sync`` behind the standard library's threaded HTTP server."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                hooks.handle_sync(dict(self.headers.items()), raw)
                self.send_response(204)
            except WebhookError:
                self.send_response(401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_the_sync_face_receives_them_too() -> None:
    shared = _limiter()
    limiter = SyncLimiter.sharing(shared)
    hooks = BatchWebhooks(limiter, secret=SECRET)
    with _thread_receiver(hooks) as uri, serve(_config(delay=0.3, uri=uri)) as served:
        options = genai_http_options(shared, sync_limiter=limiter, base_url=served.base_url)
        client = genai.Client(api_key=KEY, http_options=options)
        try:
            job = client.batches.create(model=FLASH, src=JOB)
            assert set(batch_holds(limiter)) == {job.name}
            deadline = time.monotonic() + 10
            while batch_holds(limiter) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert batch_holds(limiter) == {}
        finally:
            client.close()


def test_bad_settings_and_checks_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="secret"):
        BatchWebhooks(_limiter(), secret="whsec_not base64!")
    with pytest.raises(ConfigError, match="limiter="):
        BatchWebhooks("nope", secret=SECRET)  # type: ignore[arg-type]
    headers, raw = _delivery(_ended("batches/abc"))
    assert verify_webhook(SECRET, headers, raw)["type"] == "batch.succeeded"
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(WebhookError, match=missing) as caught:
            verify_webhook(SECRET, partial, raw)
        assert SECRET not in str(caught.value)
    with pytest.raises(WebhookError, match="not JSON"):
        verify_webhook(SECRET, *_delivery_raw(b"{oops"))


def _delivery_raw(raw: bytes) -> tuple[dict[str, str], bytes]:
    stamp = str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"m.{stamp}.".encode() + raw, hashlib.sha256).digest()
    sig = "v1," + base64.b64encode(mac).decode()
    return {"webhook-id": "m", "webhook-timestamp": stamp, "webhook-signature": sig}, raw


def test_the_example_of_docs_transports_runs() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "transports.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "BatchWebhooks" in b]
    scope: dict[str, Any] = {}
    exec(compile(block, "docs/transports.md", "exec"), scope)
    assert scope["app"] == scope["hooks"].asgi
