"""The gateway's upstream client: an HTTP/1.1 keep-alive pool on asyncio protocols and
httptools, as an httpx transport.

httpx's own transport costs the gateway most of its CPU per call (its pool polls every idle
connection's socket on each request and response, and sends a request's head and body in two
writes). This one writes a request in one piece, parses the answer with httptools as it
arrives, learns of a connection the server closed from the event loop (no polling), and
streams the body with the same httpx exceptions (``ConnectError``, ``ConnectTimeout``,
``ReadTimeout``, ``WriteTimeout``, ``PoolTimeout``, ``ReadError``, ``WriteError``,
``RemoteProtocolError``) httpx's transport raises, so the quota transport's retry rules see
the same failures. Off asyncio (trio), and for what it does not speak (``HEAD``, upgrades),
calls go to httpx's own transport.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator

import httpx

from quotaflow.gateway._conn import UpstreamConnection

__all__ = ["Upstream"]

_KEEPALIVE_EXPIRY = 4.0  # below uvicorn's default of 5 s (the emulator's), so we close first


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio
        return False
    return True


class _Body(httpx.AsyncByteStream):
    def __init__(self, pool: Upstream, conn: UpstreamConnection, timeout: float | None) -> None:
        self._pool = pool
        self._conn: UpstreamConnection | None = conn
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                chunk = await conn.next_chunk(self._timeout)
                if chunk is None:
                    break
                if chunk:
                    yield chunk
        except BaseException:
            self._conn = None
            self._pool._discard(conn)
            raise
        await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.complete and conn.keep_alive and not conn.closed:
            self._pool._release(conn)
        else:
            self._pool._discard(conn)


class Upstream(httpx.AsyncBaseTransport):
    """An httpx transport for the gateway's upstream (see the module)."""

    def __init__(self, max_connections: int = 1000, max_keepalive: int = 200) -> None:
        self._idle: dict[tuple[str, str, int], list[UpstreamConnection]] = {}
        self._idle_count = 0
        self._max_keepalive = max_keepalive
        self._slots = max_connections
        self._in_use = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._fallback: httpx.AsyncHTTPTransport | None = None
        self._max_connections = max_connections

    def _fallback_transport(self) -> httpx.AsyncHTTPTransport:
        if self._fallback is None:
            self._fallback = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_keepalive,
                )
            )
        return self._fallback

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the answer as its head arrives (the body streams)."""
        url = request.url
        if (
            request.method in ("HEAD", "CONNECT")
            or url.scheme not in ("http", "https")
            or not _on_asyncio()
        ):
            return await self._fallback_transport().handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.scheme, url.host, port)
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        await self._take_slot(timeouts.get("pool"))
        try:
            for attempt in (0, 1):
                conn = await self._connection(origin, timeouts.get("connect"))
                try:
                    head = conn.begin()
                    await self._send(conn, request, body, timeouts.get("write"))
                    await asyncio.wait_for(head, timeouts.get("read"))
                except asyncio.TimeoutError:
                    self._discard(conn, slot=False)
                    raise httpx.ReadTimeout(
                        "no answer from the upstream within the read timeout"
                    ) from None
                except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                    self._discard(conn, slot=False)
                    # a kept-alive connection the server closed before reading the request:
                    # it saw nothing, so the request goes once more on a fresh connection
                    if attempt == 0 and conn.reused and not conn.got_bytes and body is not None:
                        continue
                    raise
                except BaseException:
                    self._discard(conn, slot=False)
                    raise
                break
        except BaseException:
            self._give_slot()
            raise
        status, headers = conn.answer()
        return httpx.Response(
            status,
            headers=headers,
            stream=_Body(self, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _send(
        self,
        conn: UpstreamConnection,
        request: httpx.Request,
        body: bytes | None,
        timeout: float | None,
    ) -> None:
        url = request.url
        target = url.raw_path
        lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        chunked = False
        for name, value in request.headers.raw:
            lname = name.lower()
            if lname == b"transfer-encoding" and value.lower() == b"chunked":
                chunked = True
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        if body is not None:
            if chunked and body:
                lines += [b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"]
            elif chunked:
                lines.append(b"0\r\n\r\n")
            else:
                lines.append(body)
            conn.write(b"".join(lines))
            await self._drained(conn, timeout)
            return
        conn.write(b"".join(lines))
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            if not chunk:
                continue
            conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await self._drained(conn, timeout)
        if chunked:
            conn.write(b"0\r\n\r\n")
        await self._drained(conn, timeout)

    @staticmethod
    async def _drained(conn: UpstreamConnection, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(conn.drain(), timeout)
        except asyncio.TimeoutError:
            raise httpx.WriteTimeout("the upstream took no data within the write timeout") from None

    async def _connection(
        self, origin: tuple[str, str, int], timeout: float | None
    ) -> UpstreamConnection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.closed or now - conn.idle_since > _KEEPALIVE_EXPIRY:
                conn.close()
                continue
            conn.reused = True
            return conn
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
                self._ssl.set_alpn_protocols(["http/1.1"])
            tls = self._ssl
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(origin), host, port, ssl=tls,
                    server_hostname=host if tls else None,
                ),
                timeout,
            )  # fmt: skip
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {host}:{port} within the timeout"
            ) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port} ({exc})") from exc
        return conn

    async def _take_slot(self, timeout: float | None) -> None:
        if self._in_use < self._slots:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise httpx.PoolTimeout("no free upstream connection within the pool timeout") from None
        self._in_use += 1

    def _give_slot(self) -> None:
        self._in_use -= 1
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: UpstreamConnection) -> None:
        self._give_slot()
        if self._idle_count >= self._max_keepalive:
            conn.close()
            return
        conn._parser = None
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._idle_count += 1

    def _discard(self, conn: UpstreamConnection, slot: bool = True) -> None:
        conn.close()
        if slot:
            self._give_slot()

    async def aclose(self) -> None:
        """Close every idle connection (and httpx's transport, if it was used)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._idle_count = 0
        if self._fallback is not None:
            await self._fallback.aclose()
