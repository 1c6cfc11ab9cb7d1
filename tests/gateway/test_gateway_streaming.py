"""Streams and uploads pass through the gateway as they arrive: an upstream that holds its
second chunk until the client has seen the first (and one that waits for an upload's first
part before the client sends the rest) would hang a gateway that buffers."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio.to_thread
import httpx
from gateway_helpers import FLASH, ServedApp, running
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

SAFETY = 20.0  # seconds before a hung test gives up (and fails)


class Gate:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.first_part = threading.Event()
        self.released_by_client = False
        self.upload_sizes: list[int] = []

    def app(self) -> Starlette:
        async def stream(request: Request) -> StreamingResponse:
            await request.body()

            async def events() -> AsyncIterator[bytes]:
                first = {"candidates": [{"content": {"parts": [{"text": "one"}]}}]}
                yield f"data: {json.dumps(first)}\r\n\r\n".encode()
                await anyio.to_thread.run_sync(self.release.wait, SAFETY)
                last = {
                    "candidates": [{"content": {"parts": [{"text": "two"}]}}],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
                }
                yield f"data: {json.dumps(last)}\r\n\r\n".encode()

            return StreamingResponse(events(), media_type="text/event-stream")

        async def upload(request: Request) -> JSONResponse:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size:
                    self.first_part.set()
            self.upload_sizes.append(size)
            return JSONResponse({"file": {"name": "files/abc", "sizeBytes": str(size)}})

        return Starlette(
            routes=[
                Route(f"/v1beta/models/{FLASH}:streamGenerateContent", stream, methods=["POST"]),
                Route("/upload/v1beta/files", upload, methods=["POST"]),
            ]
        )


def test_sse_chunks_arrive_before_the_stream_ends(tmp_path: Path) -> None:
    gate = Gate()
    with ServedApp(gate.app()) as upstream, running(upstream.base_url, tmp_path) as run:
        seen: list[str] = []
        with httpx.stream(
            "POST",
            f"{run.base_url}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": run.tokens["researcher"]},
            timeout=SAFETY * 2,
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(line)
                    if len(seen) == 1:
                        gate.released_by_client = not gate.release.is_set()
                        gate.release.set()
        assert len(seen) == 2
        assert gate.released_by_client  # the first chunk came while upstream held the second
    record = json.loads(run.audit_path.read_text().splitlines()[-1])
    assert record["tokens_actual"] == 3  # settled from the last chunk's usage


def test_an_upload_streams_up_without_being_held(tmp_path: Path) -> None:
    gate = Gate()
    sent_rest_after_upstream_saw_first: list[bool] = []

    def body() -> Iterator[bytes]:
        yield b"a" * 4096
        sent_rest_after_upstream_saw_first.append(gate.first_part.wait(SAFETY))
        yield b"b" * 4096

    with ServedApp(gate.app()) as upstream, running(upstream.base_url, tmp_path) as run:
        r = httpx.post(
            f"{run.base_url}/upload/v1beta/files?upload_id=u1&upload_protocol=resumable",
            content=body(),
            headers={
                "x-goog-api-key": run.tokens["researcher"],
                "x-goog-upload-command": "upload, finalize",
                "x-goog-upload-offset": "0",
            },
            timeout=SAFETY * 2,
        )
        assert r.status_code == 200, r.text
    assert sent_rest_after_upstream_saw_first == [True]
    assert gate.upload_sizes == [8192]
