"""redis-py clients for a URL (plain, TLS, unix, Sentinel, Cluster), their retries and
timeouts, the errors that count as transient, and one call of the scope script."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

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

from quotaflow.backends.redis import script as rs
from quotaflow.backends.redis.effects import Exec, Transient
from quotaflow.errors import BackendError, ConfigError

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
        startup = [redis.cluster.ClusterNode(h, int(p)) for h, p in nodes]  # type: ignore[no-untyped-call, unused-ignore]
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
        sentinel = redis.sentinel.Sentinel(sentinels, sentinel_kwargs=skw, **kw)  # type: ignore[no-untyped-call, unused-ignore]
        sync = sentinel.master_for(service)  # type: ignore[no-untyped-call, unused-ignore]

        def make_async() -> Any:
            sent = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
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


_CALL_ERRORS: tuple[type[BaseException], ...] = (rexc.RedisError, *TRANSIENT)


def _transient(exc: BaseException) -> Transient:
    """A failed script call for the flow to handle (it retries or gives up), or raise: Redis
    refused the call itself."""
    if isinstance(exc, TRANSIENT):
        error = Transient(str(exc))
        error.__cause__ = exc
        return error
    raise BackendError(f"Redis refused a quotaflow script call: {exc}") from exc


def _exec_sync(client: Any, e: Exec) -> Any:
    if e.command:
        return client.execute_command(*e.command)
    try:
        return client.evalsha(rs.SCRIPT_SHA, len(e.keys), *e.keys, *e.argv)
    except rexc.NoScriptError:  # first call, SCRIPT FLUSH, or a restarted server
        return client.eval(rs.SCRIPT, len(e.keys), *e.keys, *e.argv)


async def _exec_async(client: Any, e: Exec, limit: float | None) -> Any:
    if limit is not None:
        async with _timeout(limit):
            return await _exec_async(client, e, None)
    if e.command:
        return await client.execute_command(*e.command)
    try:
        return await client.evalsha(rs.SCRIPT_SHA, len(e.keys), *e.keys, *e.argv)
    except rexc.NoScriptError:
        return await client.eval(rs.SCRIPT, len(e.keys), *e.keys, *e.argv)
