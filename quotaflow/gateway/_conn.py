"""One upstream HTTP/1.1 connection of the gateway's pool: an asyncio protocol that writes a
request and parses its answer with httptools as it arrives, raising the httpx exceptions
httpx's own transport raises for the same failures."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, cast

import httptools
import httpx

__all__ = ["UpstreamConnection"]

_HIGH_WATER = 256 * 1024


class UpstreamConnection(asyncio.Protocol):
    """One connection; at most one request at a time."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self.reused = False
        self._parser: Any = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused_reading = False
        self.complete = False
        self.got_bytes = False
        self.keep_alive = False

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes outside a request: the server is confused
            self._fail(httpx.RemoteProtocolError("unexpected data from the upstream"))
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the upstream upgraded the connection"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer from the upstream ({exc})"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if exc is not None:
            error: BaseException = httpx.ReadError(f"the upstream connection broke ({exc})")
        else:
            error = httpx.RemoteProtocolError("the upstream closed the connection mid-answer")
        self._fail(error, close=False)

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._status < 200:  # 100 Continue and kin: wait for the real answer
            self._headers = []
            return
        self.keep_alive = bool(self._parser.should_keep_alive())
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._status < 200:
            return
        self.complete = True
        self._wake()

    # ---- the request --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException, close: bool = True) -> None:
        if self.error is None:
            self.error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # noted: not "never retrieved"
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(error)
            self._drain.exception()
        if close:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def begin(self) -> asyncio.Future[None]:
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers = []
        self._chunks.clear()
        self._buffered = 0
        self.complete = self.got_bytes = self.keep_alive = False
        self.error = None
        self._head = asyncio.get_running_loop().create_future()
        return self._head

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("the upstream connection is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain

    async def next_chunk(self, timeout: float | None) -> bytes | None:
        """The next piece of the body, or ``None`` at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused_reading and self._buffered < _HIGH_WATER // 4 and self.transport:
                    self._paused_reading = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout(
                    "the upstream sent nothing within the read timeout"
                ) from None

    def answer(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        return self._status, self._headers
