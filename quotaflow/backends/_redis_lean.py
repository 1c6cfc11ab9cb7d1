"""The lean asyncio call of the scope script: an encoded command sent on a connection kept out
of the pool between calls, with redis-py's public connection calls, bounded by one watchdog per
event loop (see :class:`_Lean`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

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
            # the URL's own socket_timeout: the client was made without it (redis-py would
            # run each write and read under a timer of its own), so the watchdog applies it
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


async def _send_packed(pool: Any, free: list[Any], packed: bytes) -> Any:
    """Send one encoded command on a pooled connection and read its reply, through the
    connection's public calls (``send_packed_command``, ``read_response``: redis-py's own
    parser, hiredis when installed)."""
    conn = free.pop() if free else await pool.get_connection(*_GET_ARGS)
    try:
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
