"""The lean asyncio call of the scope script: an encoded command written straight to a pooled
connection and its reply read straight from the stream, bounded by one watchdog per event loop
(see :class:`_Lean`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.exceptions as rexc
import sniffio

from quotaflow.backends._redis_clients import _GET_ARGS, _timeout


def _on_asyncio() -> bool:
    """``sniffio.current_async_library() == "asyncio"``, for the two calls of every acquire:
    a library that says what it is (trio does) is believed, else a running asyncio loop says
    asyncio (sniffio asks for the current task, which costs more)."""
    name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
    if name is not None:
        return name == "asyncio"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Lean:
    """What the lean call keeps per event loop: connections taken out of the pool between its
    calls, and the bound on each call's time.

    The bound is a watchdog rather than ``asyncio.timeout`` around each call: that costs a
    timer handle pushed into and cancelled out of the loop's heap per call (3-4 us, a tenth of
    an uncontended acquire's client time), while the watchdog is one timer per quarter of the
    limit for all calls in flight; a call is cancelled (and raises ``TimeoutError``) between
    ``limit`` and ``1.25 * limit`` after it began.
    """

    __slots__ = ("calls", "client", "expired", "free", "limit", "loop", "pool", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any, limit: float | None) -> None:
        self.loop = loop
        self.client = client
        # the pool to take connections from, or None: the client takes no encoded command
        # (one without a pool, or a single-connection client)
        pool = getattr(client, "connection_pool", None)
        self.pool: Any = pool if pool is not None and client.connection is None else None
        if limit is None and _timeout is not None and self.pool is not None:
            # the URL's own socket_timeout: redis-py would apply it to each write and read;
            # the lean call reads past redis-py, so the watchdog applies it instead
            limit = getattr(self.pool, "connection_kwargs", {}).get("socket_timeout") or None
        # the bound of each call (None: none of ours, redis-py's own, if any, applies)
        self.limit: float | None = limit
        self.free: list[Any] = []  # connections kept out of the pool
        self.calls: dict[Any, float] = {}  # task -> deadline (loop time) of its call
        self.expired: dict[Any, bool] = {}  # tasks the watchdog cancelled
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, task: Any) -> None:
        """Bound ``task``'s call (the caller removes it from ``calls`` when it ends)."""
        assert self.limit is not None
        self.calls[task] = self.loop.time() + self.limit
        if self.timer is None:
            self.timer = self.loop.call_later(self.limit / 4, self._check)

    def _check(self) -> None:
        self.timer = None
        now = self.loop.time()
        for task, deadline in list(self.calls.items()):
            if deadline <= now and task not in self.expired:
                self.expired[task] = True
                task.cancel()
        if self.calls:
            assert self.limit is not None
            self.timer = self.loop.call_later(self.limit / 4, self._check)


async def _send_packed(pool: Any, free: list[Any], packed: bytes, raw: bool) -> Any:
    conn = free.pop() if free else await pool.get_connection(*_GET_ARGS)
    try:
        # ``raw`` (the call is bounded by the watchdog): the connection's own streams when it
        # has them (redis-py's asyncio connections, connected): a write and a read of one
        # reply, no per-command machinery
        reader, writer = getattr(conn, "_reader", None), getattr(conn, "_writer", None)
        if (
            raw
            and reader.__class__ is asyncio.StreamReader
            and writer.__class__ is asyncio.StreamWriter
        ):
            writer.write(packed)  # a few hundred bytes, and the reply is awaited: no drain
            reply = await _read_reply(reader)
        else:  # not connected yet, or a connection of another make: redis-py's calls
            await conn.send_packed_command(packed, False)
            reply = await conn.read_response()
    except BaseException:
        # a reply may be half read: never use the connection as it is (it reconnects)
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
        free.append(conn)  # trimmed by a later call
        raise
    # keep at most half the pool: the general path (and other clients) need the rest
    if len(free) < getattr(pool, "max_connections", 0) // 2:
        free.append(conn)
    else:
        await pool.release(conn)
    return reply


class _Unexpected(rexc.RedisError):
    """A reply of a type the lean call does not read (the connection is dropped)."""


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    """One reply of the scope script, read straight from the connection's stream: redis-py's
    parser costs several microseconds per reply, a tenth of an uncontended acquire's client
    time. Scripts answer bulk strings, arrays, integers, nulls and errors (RESP2 and RESP3
    alike); any other type raises, and the caller drops the connection. Bulk strings come back
    as bytes whatever the client's ``decode_responses``; the engine reads both."""
    line = await reader.readuntil(b"\r\n")
    kind = line[:1]
    if kind == b"$":
        n = int(line[1:-2])
        return None if n < 0 else (await reader.readexactly(n + 2))[:-2]
    if kind == b"*":
        n = int(line[1:-2])
        return None if n < 0 else [await _read_reply(reader) for _ in range(n)]
    if kind == b":":
        return int(line[1:-2])
    if kind == b"+":
        return line[1:-2]
    if kind == b"_":
        return None
    if kind == b"-":
        text = line[1:-2].decode(errors="replace")
        if text.startswith("NOSCRIPT"):
            raise rexc.NoScriptError(text)
        raise rexc.ResponseError(text)
    raise _Unexpected(f"unexpected reply {line[:40]!r}")
