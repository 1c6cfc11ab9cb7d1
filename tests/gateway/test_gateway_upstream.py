"""The gateway's upstream transport over real loopback connections, on asyncio (its own pool)
and trio (httpx's transport): keep-alive, a connection the server dropped, streamed bodies
both ways, and httpx's exceptions for timeouts and refused connections."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from gateway_helpers import ServedApp

from quotaflow.gateway._upstream import Upstream

pytestmark = pytest.mark.anyio


class DroppingServer:
    """Answers one request per connection with a keep-alive answer, then closes it: every
    connection the client keeps is stale by its next request."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    part = conn.recv(65536)
                    if not part:
                        break
                    data += part
                if data:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def __enter__(self) -> DroppingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


async def test_a_dropped_keepalive_connection_is_not_an_error() -> None:
    with DroppingServer() as server:
        upstream = Upstream()
        try:
            async with httpx.AsyncClient(transport=upstream) as client:
                for _ in range(3):
                    r = await client.post(f"http://127.0.0.1:{server.port}/x", content=b"{}")
                    assert (r.status_code, r.content) == (200, b"ok")
                    await anyio.sleep(0.05)  # the server has closed it by the next call
        finally:
            await upstream.aclose()
        assert server.connections == 3


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(2)
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-n", b"3")]})
    for i in range(3):  # chunked, in three pieces
        await send({"type": "http.response.body", "body": b"%d:" % i + body, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def echo() -> Iterator[ServedApp]:
    with ServedApp(_echo) as served:
        yield served


async def test_streamed_bodies_both_ways_and_reuse(echo: ServedApp) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for p in (b"a", b"bb", b"ccc"):
            yield p

    upstream = Upstream()
    try:
        async with httpx.AsyncClient(transport=upstream, base_url=echo.base_url) as client:
            async with client.stream("POST", "/up", content=parts()) as r:
                got = [c async for c in r.aiter_raw()]
            assert r.status_code == 201
            assert r.headers["x-n"] == "3"
            assert b"".join(got) == b"0:abbccc1:abbccc2:abbccc"
            again = await client.put("/up", content=b"z" * 100_000)  # a kept connection
            assert again.content == b"".join(b"%d:" % i + b"z" * 100_000 for i in range(3))
    finally:
        await upstream.aclose()


async def test_httpx_exceptions_for_timeouts_and_refusals(echo: ServedApp) -> None:
    upstream = Upstream()
    try:
        async with httpx.AsyncClient(transport=upstream, base_url=echo.base_url) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/slow", content=b"x", timeout=httpx.Timeout(5, read=0.2))
            assert (await client.post("/after", content=b"y")).status_code == 201
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]  # bound, never listening: refused
            async with httpx.AsyncClient(transport=upstream) as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{closed}/")
    finally:
        await upstream.aclose()


async def test_method_not_proxied_is_405(tmp_path: Any) -> None:
    from gateway_helpers import KEY, gateway_config

    from quotaflow.gateway import Gateway

    gateway = Gateway(gateway_config("http://127.0.0.1:9", tmp_path), key=KEY)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
        ) as http:
            r = await http.request("OPTIONS", "/v1beta/models")
            assert r.status_code == 405
            assert "POST" in r.headers["allow"]
    finally:
        await gateway.aclose()
