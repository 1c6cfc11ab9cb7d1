"""The Redis backend: a fleet of processes shares quotas as if it were one process.

The rules are those of the memory backend (``quotaflow._scope``), ported once to Lua
(``quotaflow/backends/lua/``): one script call takes every dimension of a request or nothing,
queues it in a fleet-wide line (priority, aging, backfilling), or refuses it. Redis ``TIME`` is
the only clock; the keys of one (project, model) scope share a hash tag, so Redis Cluster works.

Example:
    >>> import quotaflow
    >>> limiter = quotaflow.Limiter(tier="tier1", backend="redis://localhost:6379/0")
    >>> sync_limiter = quotaflow.SyncLimiter(tier="tier1", backend="redis://localhost:6379/0")

URLs: ``redis://``, ``rediss://`` (TLS), ``unix://``, with ``user:password@``;
``redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]``;
``redis+cluster://host:port[,host:port]``. Query options of quotaflow (``namespace``,
``on_error``, ``local_fraction``, ``lease_ttl``, ``aging``, ``backfill_depth``) are taken
out of the URL; the rest go to redis-py.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio
import sniffio

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.connection
    import redis.asyncio.retry
    import redis.asyncio.sentinel
    import redis.backoff
    import redis.cluster
    import redis.exceptions as rexc
    import redis.retry
    import redis.sentinel
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the Redis backend needs the 'redis' extra: pip install 'quotaflow[redis]'"
    ) from exc

from quotaflow.backends import _redis_script as rs
from quotaflow.backends._redis_engine import (
    SETTLE_DELAY,
    Engine,
    Exec,
    Flow,
    Policy,
    Sleep,
    Transient,
)
from quotaflow.backends._redis_link import Link
from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.buckets import Level
from quotaflow.errors import BackendError, ConfigError
from quotaflow.limits import Limit

__all__ = ["RedisBackend", "SyncRedisBackend"]

TRANSIENT: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ReadOnlyError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.MasterDownError,
    rexc.RedisClusterException,
    rexc.ClusterError,
    OSError,
)
_OPTIONS = ("namespace", "on_error", "local_fraction", "lease_ttl", "aging", "backfill_depth")


# A dead server must surface as an error (which the failure policy handles), never as a read
# that blocks forever; a URL's own socket_timeout=/socket_connect_timeout= take precedence.
_TIMEOUTS: dict[str, float] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}


def _timeouts(query: str) -> dict[str, Any]:
    return {k: v for k, v in _TIMEOUTS.items() if k not in query}


# redis-py's asyncio client runs each write under asyncio.wait_for (a task per call) when it
# has a socket_timeout; where asyncio.timeout exists (3.11+), the backend instead bounds each of
# its calls itself (one timer), with the same default.
_timeout: Any = getattr(asyncio, "timeout", None)


def _needs_command_name() -> bool:
    """redis-py before 5.3 requires get_connection's command name; later ones deprecate it."""
    try:
        sig = inspect.signature(redis.asyncio.connection.ConnectionPool.get_connection)
        param = sig.parameters["command_name"]
    except (KeyError, TypeError, ValueError):
        return False
    return param.default is inspect.Parameter.empty


_GET_ARGS: tuple[str, ...] = ("EVALSHA",) if _needs_command_name() else ()


def _clients(url: str) -> tuple[Any, Any, float | None]:
    """(sync client, factory of asyncio clients, the timeout the backend puts around each
    asyncio call itself, or None) for a URL."""
    parts = urlsplit(url)
    to = _timeouts(parts.query)
    scheme = parts.scheme
    if scheme in ("redis+cluster", "rediss+cluster"):
        base = "rediss" if scheme.startswith("rediss") else "redis"
        hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
        creds = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        first = urlunsplit((base, creds + hosts[0], parts.path, parts.query, ""))
        nodes = [h.rsplit(":", 1) for h in hosts]
        startup = [redis.cluster.ClusterNode(h, int(p)) for h, p in nodes]  # type: ignore[no-untyped-call]
        sync = redis.cluster.RedisCluster.from_url(
            first, startup_nodes=startup, retry=_retry(), **to
        )

        def make_async() -> Any:
            anodes = [redis.asyncio.cluster.ClusterNode(h, int(p)) for h, p in nodes]
            return redis.asyncio.cluster.RedisCluster.from_url(
                first, startup_nodes=anodes, retry=_aretry(), **to
            )

        return sync, make_async, None
    if scheme == "redis+sentinel":
        hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
        password = unquote(parts.password) if parts.password else None
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ConfigError(f"{url!r}: name the service: redis+sentinel://host:port/mymaster")
        service, db = path[0], int(path[1]) if len(path) > 1 else 0
        sentinels = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts]
        kw: dict[str, Any] = {"password": password, "db": db, **to}
        skw = {"password": password} if password else None
        sentinel = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=skw, **kw)  # type: ignore[no-untyped-call]
        sync = sentinel.master_for(service)  # type: ignore[no-untyped-call]

        def make_async() -> Any:
            sent = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                sentinels, sentinel_kwargs=skw, **kw
            )
            return sent.master_for(service)

        return sync, make_async, None
    own = to.get("socket_timeout") if _timeout is not None else None
    ato = {**to, "socket_timeout": None} if own is not None else to
    return (
        redis.Redis.from_url(url, retry=_retry(), **to),
        lambda: redis.asyncio.Redis.from_url(url, retry=_aretry(), **ato),
        own,
    )


def _retry() -> Any:
    # deterministic backoff: no jitter, so no use of the global random module from our threads
    return redis.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.01), 3)


def _aretry() -> Any:
    return redis.asyncio.retry.Retry(redis.backoff.ExponentialBackoff(cap=0.5, base=0.01), 3)


class SyncRedisBackend:
    """The synchronous face of a :class:`RedisBackend` (the sync redis-py client).

    ``SyncLimiter(backend="redis://...")`` uses it; it shares keys, scripts, listeners and the
    background thread with its async twin.
    """

    def __init__(self, owner: RedisBackend) -> None:
        self._owner = owner
        self._e = owner._engine

    def _run(self, flow: Flow) -> Any:
        client = self._owner._client
        result: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = flow.send(result) if error is None else flow.throw(error)
                except StopIteration as stop:
                    return stop.value
                result, error = None, None
                if isinstance(effect, Sleep):
                    time.sleep(effect.seconds)
                    continue
                try:
                    result = _exec_sync(client, effect)
                except _CALL_ERRORS as exc:
                    error = _transient(exc)
        finally:
            flow.close()  # abandoned (an error, a signal): the flow keeps what it carried

    def configure(self, scope: str, limits: Sequence[Limit], now: float) -> None:
        """Create the scope's buckets, or update their limits (any process may)."""
        self._owner._start()
        self._run(self._e.configure(scope, limits, now))

    def submit(self, scope: str, request: Request, now: float) -> Decision:
        """Grant, queue or refuse ``request`` in one round trip."""
        return self._run(self._e.submit(scope, request, now))  # type: ignore[no-any-return]

    def dispatch(self, scope: str, now: float) -> None:
        """Serve the line (a timer fired)."""
        self._run(self._e.dispatch(scope, now))

    def cancel(self, scope: str, request_id: str, now: float) -> Decision | None:
        """Leave the line; returns a grant that won the race."""
        return self._run(self._e.cancel(scope, request_id, now))  # type: ignore[no-any-return]

    def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> None:
        """Anchor and reconcile a lease that reached the server."""
        self._run(self._e.settle(scope, lease_id, actual, at, now))

    def release(self, scope: str, lease_id: str, now: float) -> None:
        """Return a lease that never reached the server."""
        self._run(self._e.release(scope, lease_id, now))

    def pause(self, scope: str, limit: str, until: float, now: float) -> None:
        """Hold a limit until ``until`` in every process."""
        self._run(self._e.pause(scope, limit, until, now))

    def exhaust(self, scope: str, limit: str, now: float) -> float | None:
        """Mark a calendar limit spent until its reset, in every process."""
        return self._run(self._e.exhaust(scope, limit, now))  # type: ignore[no-any-return]

    def status(self, scope: str, now: float) -> dict[str, Level]:
        """Each limit's level."""
        return self._run(self._e.status(scope, now))  # type: ignore[no-any-return]

    def waiting(self, scope: str) -> int:
        """Waiters in the scope's line, fleet-wide."""
        return self._run(self._e.waiting(scope))  # type: ignore[no-any-return]

    def subscribe(self, scope: str, listener: Listener) -> None:
        """Deliver decisions about this process's waiters in ``scope`` to ``listener``."""
        self._owner.subscribe(scope, listener)

    def unsubscribe(self, scope: str, listener: Listener) -> None:
        """Stop delivering to ``listener``."""
        self._owner.unsubscribe(scope, listener)

    def __repr__(self) -> str:
        return f"SyncRedisBackend({self._owner!r})"


_CALL_ERRORS: tuple[type[BaseException], ...] = (rexc.RedisError, *TRANSIENT)


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


def _transient(exc: BaseException) -> Transient:
    """A failed script call for the flow to handle (it retries or gives up), or raise: Redis
    refused the call itself."""
    if isinstance(exc, TRANSIENT):
        error = Transient(str(exc))
        error.__cause__ = exc
        return error
    raise BackendError(f"Redis refused a quotaflow script call: {exc}") from exc


def _flush_at_exit(ref: weakref.ReferenceType[RedisBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend._flush_pending()


def _exec_sync(client: Any, e: Exec) -> Any:
    try:
        return client.evalsha(rs.SCRIPT_SHA, len(e.keys), *e.keys, *e.argv)
    except rexc.NoScriptError:  # first call, SCRIPT FLUSH, or a restarted server
        return client.eval(rs.SCRIPT, len(e.keys), *e.keys, *e.argv)


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


async def _exec_async(client: Any, e: Exec, limit: float | None) -> Any:
    if limit is not None:
        async with _timeout(limit):
            return await _exec_async(client, e, None)
    try:
        return await client.evalsha(rs.SCRIPT_SHA, len(e.keys), *e.keys, *e.argv)
    except rexc.NoScriptError:
        return await client.eval(rs.SCRIPT, len(e.keys), *e.keys, *e.argv)


class RedisBackend:
    """Buckets, lines and leases in Redis, shared by every process that names the same server.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
            ``redis+cluster://`` (see the module docstring).
        namespace: prefix of every key and channel; tenants with different namespaces never
            see each other.
        on_error: when Redis is unreachable: ``"wait"`` for it (backoff), ``"raise"``
            :class:`~quotaflow.errors.BackendError`, or ``"local"``: admit from an in-process
            memory backend at ``local_fraction`` of each limit until Redis is back.
        local_fraction: the share of each limit one process may use while on ``"local"``
            (e.g. ``1 / number of processes``).
        lease_ttl: seconds a waiter's ticket or an unsettled lease survives its process;
            refreshed every third of it while the process lives.
        aging: seconds of waiting worth one priority level (``None``: strict priority).
        backfill_depth: waiters behind the head considered for backfilling per dispatch.
        exact_time: tests only: the script's clock is the ``now`` the caller passes.

    Attributes:
        sync: the synchronous face (:class:`SyncRedisBackend`) over the same keys.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        namespace: str = "quotaflow",
        on_error: Policy = "wait",
        local_fraction: float = 0.1,
        lease_ttl: float = 30.0,
        aging: float | None = 60.0,
        backfill_depth: int = 32,
        exact_time: bool = False,
    ) -> None:
        if on_error not in ("wait", "raise", "local"):
            raise ConfigError(f"on_error={on_error!r}: use 'wait', 'raise' or 'local'")
        if not 0 < local_fraction <= 1:
            raise ConfigError(f"local_fraction={local_fraction!r}: give a share in (0, 1]")
        if not lease_ttl > 0:
            raise ConfigError(f"lease_ttl={lease_ttl!r}: give seconds > 0")
        if aging is not None and not aging > 0:
            raise ConfigError(f"aging={aging!r}: aging must be > 0 or None")
        if backfill_depth < 0:
            raise ConfigError(f"backfill_depth={backfill_depth}: must be >= 0")
        if not namespace or "{" in namespace or "}" in namespace:
            raise ConfigError(f"namespace={namespace!r}: a non-empty name without braces")
        self.url = url
        self._engine = Engine(
            namespace=namespace,
            on_error=on_error,
            local_fraction=local_fraction,
            lease_ttl=lease_ttl,
            aging=aging,
            backfill_depth=backfill_depth,
            exact=exact_time,
        )
        self._client, self._make_async, self._atimeout = _clients(url)
        # per event loop (by id, with the loop itself: a new loop may reuse a dead one's id)
        self._aclients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        # per event loop: the lean submit's connections and watchdog (see _Lean)
        self._conns: dict[int, _Lean] = {}
        self.sync = SyncRedisBackend(self)
        self._link: Link | None = None
        self._beat_every = lease_ttl / 3
        self._timers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = {}
        self._flushing: set[asyncio.Task[Any]] = set()
        # a program that ends without close(): its deferred settles still go out at exit
        self._at_exit = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """A backend from a URL; quotaflow's options may also be given as query parameters.

        Example:
            >>> RedisBackend.from_url("redis://localhost/0?namespace=team-a&on_error=local")
        """
        parts = urlsplit(url)
        rest = []
        for key, value in parse_qsl(parts.query):
            if key in _OPTIONS and key not in options:
                conv = {"namespace": str, "on_error": str, "backfill_depth": int}.get(key, float)
                options[key] = None if key == "aging" and value == "none" else conv(value)
            elif key not in _OPTIONS:
                rest.append((key, value))
        clean = urlunsplit((*parts[:3], urlencode(rest), parts.fragment))
        return cls(clean, **options)

    # --- plumbing --------------------------------------------------------------------------
    @property
    def namespace(self) -> str:
        """The key and channel prefix."""
        return self._engine.codec.namespace

    def _start(self) -> None:
        if self._engine.exact:
            return
        with self._engine.lock:
            if self._link is None:
                self._link = Link(
                    self._engine, self._client, self.sync._run, TRANSIENT, self._beat_every
                )
                self._link.start()
        self._engine.subscribed.wait(5.0)

    def close(self) -> None:
        """Send deferred settles, stop the background thread and close the connections
        (optional at exit: deferred settles are sent then; a lease never settled expires after
        ``lease_ttl``)."""
        atexit.unregister(self._at_exit)
        self._flush_pending()
        if self._link is not None:
            self._link.stop()
            self._link.join(5.0)
            self._link = None
        self._client.close()

    def _flush_pending(self) -> None:
        """Send every deferred settle now, with the sync client."""
        for scope in list(self._engine.pending):
            with contextlib.suppress(Exception):
                self.sync._run(self._engine.flush(scope, self._engine.lnow()))

    async def aclose(self) -> None:
        """Send deferred settles, close this event loop's asyncio connections, then everything
        :meth:`close` does."""
        if sniffio.current_async_library() == "asyncio":
            loop = asyncio.get_running_loop()
            timer = self._timers.pop(id(loop), None)
            if timer is not None:
                timer[1].cancel()
            for task in [t for t in self._flushing if t.get_loop() is loop]:
                with contextlib.suppress(Exception):
                    await task
            for scope in list(self._engine.pending):
                await self._flush(scope)
            lean = self._conns.pop(id(loop), None)
            client = self._aclients.pop(id(loop), None)
            if lean is not None and lean.timer is not None:
                lean.timer.cancel()
            if lean is not None and client is not None and lean.loop is loop:
                for conn in lean.free:
                    with contextlib.suppress(Exception):
                        await client[1].connection_pool.release(conn)
            if client is not None and client[0] is loop:
                await client[1].aclose()
        await anyio.to_thread.run_sync(self.close)

    def _aclient(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._aclients.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = self._aclients[id(loop)] = (loop, self._make_async())
        return entry[1]

    async def _arun(self, flow: Flow) -> Any:
        if sniffio.current_async_library() != "asyncio":  # redis.asyncio is asyncio-only
            return await anyio.to_thread.run_sync(self.sync._run, flow)
        client = self._aclient()
        result: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = flow.send(result) if error is None else flow.throw(error)
                except StopIteration as stop:
                    return stop.value
                result, error = None, None
                if isinstance(effect, Sleep):
                    await anyio.sleep(effect.seconds)
                    continue
                try:
                    result = await _exec_async(client, effect, self._atimeout)
                except _CALL_ERRORS as exc:
                    error = _transient(exc)
        finally:
            flow.close()  # abandoned (cancelled): the flow keeps what it carried

    def _lean(self) -> _Lean:
        """This event loop's state of the lean call."""
        loop = asyncio.get_running_loop()
        lean = self._conns.get(id(loop))
        if lean is None or lean.loop is not loop:
            lean = self._conns[id(loop)] = _Lean(loop, self._aclient(), self._atimeout)
        return lean

    @staticmethod
    async def _call_packed(lean: _Lean, packed: bytes) -> Any:
        """Send one encoded command and read its reply, on a connection taken from the pool
        and kept for the next lean call (redis-py's connection without its per-command
        machinery: the command is encoded already, the reply is read by :func:`_read_reply`,
        and errors take the general flow, which retries). A connection that fails mid-call is
        disconnected (the next use reconnects it); an error reply leaves it clean. The whole
        call, taking the connection included, is bounded (see :class:`_Lean`)."""
        if lean.limit is None:  # unbounded, or bounded by redis-py (Python 3.10)
            return await _send_packed(lean.pool, lean.free, packed, False)
        task: Any = asyncio.current_task()
        cancelling = task.cancelling()
        lean.watch(task)
        try:
            return await _send_packed(lean.pool, lean.free, packed, True)
        except asyncio.CancelledError:
            # cancelled by the watchdog (and by nobody else): the call timed out
            if lean.expired.pop(task, False) and task.uncancel() <= cancelling:
                raise TimeoutError(f"Redis did not answer within {lean.limit} s") from None
            raise
        finally:
            del lean.calls[task]
            if lean.expired:
                lean.expired.pop(task, None)

    # --- the AsyncBackend protocol ------------------------------------------------------------
    async def configure(self, scope: str, limits: Sequence[Limit], now: float) -> None:
        """Create the scope's buckets, or update their limits (any process may)."""
        if not self._engine.subscribed.is_set() and not self._engine.exact:
            await anyio.to_thread.run_sync(self._start)
        await self._arun(self._engine.configure(scope, limits, now))

    async def submit(self, scope: str, request: Request, now: float) -> Decision:
        """Grant, queue or refuse ``request`` in one round trip."""
        e = self._engine
        started = None
        if _on_asyncio():
            lean = self._lean()
            started = e.start_submit(scope, request, now, lean.pool is not None)
        if started is None:
            return await self._arun(e.submit(scope, request, now))  # type: ignore[no-any-return]
        # the lean path: one EVALSHA without the flow machinery; any surprise takes the flow
        try:
            if lean.pool is not None:
                started.raw = await self._call_packed(lean, started.packed)
            else:
                started.raw = await lean.client.evalsha(
                    rs.SCRIPT_SHA_BYTES, 7, *started.keys, *started.argv
                )
        except Exception:  # NOSCRIPT, a dropped connection...: the flow handles them all
            e.unstart(scope, started)
            return await self._arun(e.submit(scope, request, now))  # type: ignore[no-any-return]
        except BaseException:  # cancelled: whether it ran is unknown; settles stay queued
            e.unstart(scope, started)
            raise
        granted = e.end_submit(scope, request, now, started)
        if granted is not None:
            return granted
        return await self._arun(e.submit(scope, request, now, first=started))  # type: ignore[no-any-return]

    async def dispatch(self, scope: str, now: float) -> None:
        """Serve the line (a timer fired)."""
        await self._arun(self._engine.dispatch(scope, now))

    async def cancel(self, scope: str, request_id: str, now: float) -> Decision | None:
        """Leave the line; returns a grant that won the race."""
        return await self._arun(self._engine.cancel(scope, request_id, now))  # type: ignore[no-any-return]

    async def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> None:
        """Anchor and reconcile a lease that reached the server.

        While nobody waits in the scope's line (as of the last reply), the settle is deferred:
        it returns at once and rides on the scope's next script call, or is sent after
        ``SETTLE_DELAY`` (2 ms) at the latest. Otherwise one round trip.
        """
        if not self.settle_nowait(scope, lease_id, actual, at, now):
            await self._arun(self._engine.settle(scope, lease_id, actual, at, now))

    def settle_nowait(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> bool:
        """Defer the settle (see :meth:`settle`) if it can be; ``False``: it needs the round
        trip. Called from a coroutine; never blocks."""
        if _on_asyncio() and self._engine.defer(scope, lease_id, actual, at):
            self._arm(asyncio.get_running_loop(), SETTLE_DELAY)
            return True
        return False

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        entry = self._timers.get(id(loop))
        if entry is None or entry[0] is not loop:
            self._timers[id(loop)] = (loop, loop.call_later(delay, self._fire, loop))

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The flush timer: send deferred settles that found no call to ride on."""
        entry = self._timers.get(id(loop))
        if entry is not None and entry[0] is loop:
            del self._timers[id(loop)]
        scopes, nxt = self._engine.due(SETTLE_DELAY)
        for scope in scopes:
            task = loop.create_task(self._flush(scope))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        if nxt is not None:
            self._arm(loop, max(0.0, nxt - time.monotonic()))

    async def _flush(self, scope: str) -> None:
        with contextlib.suppress(BackendError):  # kept in the outbox; the link replays it
            await self._arun(self._engine.flush(scope, self._engine.lnow()))

    async def release(self, scope: str, lease_id: str, now: float) -> None:
        """Return a lease that never reached the server."""
        await self._arun(self._engine.release(scope, lease_id, now))

    async def pause(self, scope: str, limit: str, until: float, now: float) -> None:
        """Hold a limit until ``until`` in every process (e.g. after a 429)."""
        await self._arun(self._engine.pause(scope, limit, until, now))

    async def exhaust(self, scope: str, limit: str, now: float) -> float | None:
        """Mark a calendar limit spent until its reset, in every process."""
        return await self._arun(self._engine.exhaust(scope, limit, now))  # type: ignore[no-any-return]

    async def status(self, scope: str, now: float) -> dict[str, Level]:
        """Each limit's level."""
        return await self._arun(self._engine.status(scope, now))  # type: ignore[no-any-return]

    async def waiting(self, scope: str) -> int:
        """Waiters in the scope's line, fleet-wide."""
        return await self._arun(self._engine.waiting(scope))  # type: ignore[no-any-return]

    def subscribe(self, scope: str, listener: Listener) -> None:
        """Deliver decisions about this process's waiters in ``scope`` to ``listener``."""
        with self._engine.lock:
            self._engine.listeners.setdefault(scope, []).append(listener)

    def unsubscribe(self, scope: str, listener: Listener) -> None:
        """Stop delivering to ``listener``."""
        with self._engine.lock:
            lst = self._engine.listeners.get(scope)
            if lst and listener in lst:
                lst.remove(listener)

    def __repr__(self) -> str:
        e = self._engine
        state = "up" if e.up else f"down, on_error={e.on_error!r}"
        return (
            f"RedisBackend(namespace={e.codec.namespace!r}, {state}, "
            f"waiting={len(e.tickets)}, leases={len(e.leases)})"
        )
