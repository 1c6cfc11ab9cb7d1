"""The lean asyncio call of the scope script (:func:`call_packed`): an encoded command sent on a
connection kept out of the pool between calls, with redis-py's public connection calls, bounded
by one watchdog per event loop (see :class:`_Lean`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.exceptions as rexc
import sniffio

from quotaflow.backends.redis.clients import _GET_ARGS, _timeout

_REPLY_ERRORS = (rexc.ResponseError,)
"""Error replies (NOSCRIPT, READONLY, a script's error): the replies behind one are still read."""


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

    __slots__ = (
        "busy",
        "calls",
        "client",
        "expired",
        "free",
        "limit",
        "loop",
        "pool",
        "tasks",
        "timer",
    )

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
        self.free: list[Any] = []  # idle connections kept out of the pool
        self.busy: list[_Lane] = []  # connections in flight (at most LANES)
        self.tasks: set[asyncio.Task[Any]] = set()  # drains of queued calls, releases
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


LANES = 2
"""Connections one event loop's lean calls keep in flight at once; a call that finds them all
busy is queued on one and written with the others queued there, in one write, as soon as the
call in flight on it has its reply (see :func:`_send_packed`)."""


class _Lane:
    """A connection in flight, and the calls queued behind its call."""

    __slots__ = ("cmds", "conn", "futs")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cmds: list[bytes] = []  # queued, not yet written
        self.futs: list[asyncio.Future[Any]] = []  # their replies, in order


async def _send_packed(lean: _Lean, packed: bytes, n: int = 1) -> Any:
    """Send one encoded command and read its reply, through the connection's public calls
    (``send_packed_command``, ``read_response``: redis-py's own parser, hiredis when
    installed).

    With fewer than :data:`LANES` connections in flight, the call takes a kept connection (or
    one from the pool) and runs at once. Otherwise it is queued behind the call in flight on a
    lane; when that call has its reply, one task writes every command queued there in one
    write and hands each reply to its caller (auto-pipelining: one system call on each side
    for a whole batch). A queued call whose caller gives up before it is written is taken out
    of the queue: it is never sent. A connection that fails, or answers with an error, is
    disconnected (the next use reconnects it); an error reply fails only its own call, a
    failed connection the calls written on it.

    ``n`` > 1 (:func:`call_packed_many`, on a free lane only): ``packed`` holds ``n``
    commands; the reply is the list of their replies, an error reply as its exception."""
    busy = lean.busy
    if len(busy) >= LANES:
        lane = busy[0] if len(busy[0].cmds) <= len(busy[-1].cmds) else busy[-1]
        fut = lean.loop.create_future()
        lane.cmds.append(packed)
        lane.futs.append(fut)
        try:
            return await fut
        except BaseException:
            futs = lane.futs  # still there: not written yet, so never send it
            for i in range(len(futs)):
                if futs[i] is fut:
                    del futs[i], lane.cmds[i]
                    break
            raise
    free = lean.free
    lane = _Lane(free.pop() if free else None)
    busy.append(lane)  # before taking a connection: calls meanwhile queue behind this one
    if lane.conn is None:
        try:
            lane.conn = await lean.pool.get_connection(*_GET_ARGS)
        except BaseException as exc:
            busy.remove(lane)
            error = ConnectionError(f"no Redis connection: {exc!r}")
            for fut in lane.futs:
                if not fut.done():
                    fut.set_exception(error)
                    fut.exception()  # retrieved: a caller that gave up logs nothing
            raise
    conn = lane.conn
    try:
        await conn.send_packed_command(packed, False)
        if n == 1:
            reply = await conn.read_response()
        else:
            reply = []
            for _ in range(n):
                try:
                    reply.append(await conn.read_response())
                except _REPLY_ERRORS as exc:  # this command's own error: read on
                    reply.append(exc)
            if any(isinstance(r, _REPLY_ERRORS) for r in reply):
                with contextlib.suppress(Exception):  # READONLY...: the next use reconnects
                    await conn.disconnect(nowait=True)
    except BaseException:
        # a reply may be half read, or the server may have become a replica (READONLY after
        # a failover): never use the connection as it is (the next use reconnects)
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
        raise
    finally:
        if lane.cmds:  # calls queued behind this one: written by a task of their own
            task = lean.loop.create_task(_drain(lean, lane))
            lean.tasks.add(task)
            task.add_done_callback(lean.tasks.discard)
        else:
            _done(lean, lane)
    return reply


async def call_packed_many(lean: _Lean, cmds: list[bytes]) -> list[Any]:
    """Encoded commands sent in one write when a lane is free (each queued as a call of its own
    otherwise), bounded as one call: their replies in order, an error reply as its exception;
    a failed connection raises."""
    if len(cmds) > 1 and len(lean.busy) < LANES:
        return await call_packed(lean, b"".join(cmds), len(cmds))  # type: ignore[no-any-return]
    calls = (call_packed(lean, cmd) for cmd in cmds)
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def call_packed(lean: _Lean, packed: bytes, n: int = 1) -> Any:
    """Send one encoded command and read its reply (see :func:`_send_packed`: on a kept
    connection, or queued and written with others; the reply is read by redis-py's parser;
    errors take the general flow, which retries). The whole call, taking the connection or
    waiting in the queue included, is bounded (see :class:`_Lean`)."""
    if lean.limit is None:  # unbounded, or bounded by redis-py (Python 3.10)
        return await _send_packed(lean, packed, n)
    task: Any = asyncio.current_task()
    cancelling = task.cancelling()
    lean.watch(task)
    try:
        return await _send_packed(lean, packed, n)
    except asyncio.CancelledError:
        # cancelled by the watchdog (and by nobody else): the call timed out
        if lean.expired.pop(task, False) and task.uncancel() <= cancelling:
            raise TimeoutError(f"Redis did not answer within {lean.limit} s") from None
        raise
    finally:
        del lean.calls[task]
        if lean.expired:
            lean.expired.pop(task, None)


def _done(lean: _Lean, lane: _Lane) -> None:
    """The lane is idle: its connection is kept for the next call (at most half the pool;
    the general path and other clients need the rest) or goes back to the pool."""
    lean.busy.remove(lane)
    if len(lean.free) < getattr(lean.pool, "max_connections", 0) // 2:
        lean.free.append(lane.conn)
    else:
        lean.tasks.add(lean.loop.create_task(lean.pool.release(lane.conn)))


async def _drain(lean: _Lean, lane: _Lane) -> None:
    """Write what is queued on ``lane`` in one write, hand out the replies; again until
    nothing is queued. Bounded like a call (the watchdog); a failure fails the calls of the
    batch (their callers take the general flow, which retries)."""
    conn = lane.conn
    task: Any = asyncio.current_task()
    try:
        while lane.cmds:
            cmds, futs = lane.cmds, lane.futs
            lane.cmds, lane.futs = [], []
            if lean.limit is not None:
                lean.watch(task)
            i = 0
            try:
                await conn.send_packed_command(b"".join(cmds), False)
                refused = False
                for i, fut in enumerate(futs):  # noqa: B007 - i names the failed one
                    try:
                        reply = await conn.read_response()
                    except _REPLY_ERRORS as exc:  # this call's own error: read on
                        refused = True
                        if not fut.done():
                            fut.set_exception(exc)
                        continue
                    if not fut.done():
                        fut.set_result(reply)
                if refused:  # READONLY after a failover...: the next use reconnects
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                error = ConnectionError(f"the Redis connection failed: {exc!r}")
                for fut in futs[i:]:
                    if not fut.done():
                        fut.set_exception(error)
                        fut.exception()  # retrieved: a caller that gave up logs nothing
                if not isinstance(exc, Exception):
                    # cancelled (the watchdog: Redis did not answer in time): what is queued
                    # now fails too, else it would wait behind a dead call
                    for fut in lane.futs:
                        if not fut.done():
                            fut.set_exception(error)
                            fut.exception()
                    lane.cmds, lane.futs = [], []
            finally:
                lean.calls.pop(task, None)
                lean.expired.pop(task, None)
    finally:
        _done(lean, lane)
