"""The Redis backend: a fleet of processes shares quotas as if it were one process.

The rules are those of the memory backend (``quotaflow.scheduler.scope``), ported once to Lua
(``quotaflow/backends/redis/lua/``): one script call takes every dimension of a request or nothing,
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
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

try:  # the extra's own error, before the modules below need it
    import redis  # noqa: F401
    import sniffio
except ImportError as exc:  # pragma: no cover - exercised without the extra
    if exc.name not in ("redis", "sniffio"):
        raise  # something else is broken: its own error names it
    raise ImportError(
        f"the Redis backend needs the 'redis' extra ({exc.name} is missing): "
        "pip install 'quotaflow[redis]'",
        name=exc.name,
    ) from exc

from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.backends.redis import script as rs
from quotaflow.backends.redis.clients import (
    _CALL_ERRORS,
    TRANSIENT,
    _clients,
    _exec_async,
    _exec_sync,
    _transient,
)
from quotaflow.backends.redis.effects import Backoff, EngineFlow, Exec
from quotaflow.backends.redis.engine import Engine
from quotaflow.backends.redis.engine_state import SETTLE_DELAY, Policy
from quotaflow.backends.redis.lean import _Lean, _on_asyncio, call_packed
from quotaflow.backends.redis.link import Link
from quotaflow.backends.redis.link import flush as replay_outbox
from quotaflow.backends.redis.settle_timer import SettleTimer
from quotaflow.backends.redis.sync import ASIDE, SyncRedisBackend
from quotaflow.errors import ConfigError
from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import Level

__all__ = ["ASIDE", "RedisBackend", "SyncRedisBackend"]

_OPTIONS = ("namespace", "on_error", "local_fraction", "lease_ttl", "aging", "backfill_depth")


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
            refreshed every third of it while the process lives. A process sends a call only
            within half of it since its last sign of life, so what a process that died (or
            froze) held comes back one period after its last sign of life plus half of it:
            within a period and two seconds with the default.
        aging: seconds of waiting worth one priority level (``None``: strict priority).
        backfill_depth: waiters behind the head considered for backfilling per dispatch.
        exact_time: tests only: the script's clock is the ``now`` the caller passes.

    Attributes:
        sync: the synchronous face (:class:`SyncRedisBackend`) over the same keys.
    """

    may_stall = True
    """Calls can stall (a paused server, a dead link): the limiter bounds them by deadlines."""

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        namespace: str = "quotaflow",
        on_error: Policy = "wait",
        local_fraction: float = 0.1,
        lease_ttl: float = 3.0,
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
        # deferred settles that find no call to ride on (and those left at close or exit)
        self._settles = SettleTimer(self._engine, self._arun, self._lean, self.sync._run)

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
        """Send deferred settles and what was set aside (if Redis is reachable), stop the
        background thread, close the connections (optional: a lease left expires)."""
        self._settles.close()
        if self._link is not None:
            self._link.stop()
            self._link.join(5.0)
            self._link = None
        if self._engine.outbox and self._engine.up:
            with contextlib.suppress(Exception):  # kept for lease_ttl at most
                self.sync._run(replay_outbox(self._engine))
        self.sync._stop_calls()
        self._client.close()

    async def aclose(self) -> None:
        """Send deferred settles, close this event loop's asyncio connections, then everything
        :meth:`close` does."""
        if sniffio.current_async_library() == "asyncio":
            loop = asyncio.get_running_loop()
            await self._settles.drain(loop)
            lean = self._conns.pop(id(loop), None)
            client = self._aclients.pop(id(loop), None)
            if lean is not None and lean.loop is loop:
                for task in list(lean.tasks):  # queued calls being written, releases
                    with contextlib.suppress(Exception):
                        await task
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

    async def _arun(self, flow: EngineFlow) -> Any:
        """Run ``flow`` on this event loop: on asyncio with redis.asyncio (a read of the fleet's
        figures goes by the lean call), elsewhere (trio; redis.asyncio is asyncio-only) each
        command in a worker thread, given up (its reply dropped) when the caller is cancelled
        (its deadline), as on asyncio."""
        on_asyncio = sniffio.current_async_library() == "asyncio"
        result: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    effect = flow.send(result) if error is None else flow.throw(error)
                except StopIteration as stop:
                    return stop.value
                result, error = None, None
                if isinstance(effect, Backoff):
                    await anyio.sleep(effect.seconds)
                    continue
                try:
                    if on_asyncio:
                        result = await self._aexec(effect)
                    else:
                        result = await anyio.to_thread.run_sync(
                            _exec_sync, self._client, effect, abandon_on_cancel=True
                        )
                except _CALL_ERRORS as exc:
                    error = _transient(exc)
        finally:
            flow.close()  # abandoned (cancelled): the flow keeps what it carried

    async def _aexec(self, effect: Exec) -> Any:
        """One effect on asyncio. A read of the fleet's figures goes by the lean call, with the
        loop's other calls; if that fails (a dropped connection...), by redis-py's call, which
        retries; not after a timeout (Redis did not answer in time: the flow decides)."""
        packed = rs.packed_read(effect.command) if effect.command else None
        if packed is not None and (lean := self._lean()).pool is not None:
            try:
                return await self._call_packed(lean, packed)
            except TimeoutError:
                raise
            except Exception:
                pass
        return await _exec_async(self._aclient(), effect, self._atimeout)

    def _lean(self) -> _Lean:
        """This event loop's state of the lean call."""
        loop = asyncio.get_running_loop()
        lean = self._conns.get(id(loop))
        if lean is None or lean.loop is not loop:
            lean = self._conns[id(loop)] = _Lean(loop, self._aclient(), self._atimeout)
        return lean

    _call_packed = staticmethod(call_packed)  # the lean call, bounded (see lean.py)

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
            e.gave_up(scope, started.t0)
            raise
        granted = e.end_submit(scope, request, now, started)
        if granted is not None:
            return granted
        return await self._arun(e.submit(scope, request, now, first=started))  # type: ignore[no-any-return]

    async def dispatch(self, scope: str, now: float) -> None:
        """Serve the line (a timer fired)."""
        await self._arun(self._engine.dispatch(scope, now))

    async def cancel(self, scope: str, request_id: str, now: float) -> Decision | None:
        """Leave the line; returns a grant that won the race. Bounded: if Redis does not
        answer within :data:`ASIDE` seconds, the cancel is kept and replayed (a grant that won
        is then released), and the caller goes on; at once if a call of the scope was just
        given up unanswered (a paused server)."""
        if self._engine.stalled_now(scope):  # its bookkeeping, no call (see SyncRedisBackend)
            flow = self._engine.cancel(scope, request_id, now)
            won: Decision | None = self.sync._aside("cancel", scope, (request_id,), flow)
            return won
        with anyio.move_on_after(ASIDE):
            return await self._arun(self._engine.cancel(scope, request_id, now))  # type: ignore[no-any-return]
        self._engine.later("cancel", scope, (request_id,))
        return None

    async def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> None:
        """Anchor and reconcile a lease that reached the server.

        While nobody waits in the scope's line (as of the last reply), the settle is deferred:
        it returns at once and rides on the scope's next script call, or is sent after
        ``SETTLE_DELAY`` (2 ms) at the latest. Otherwise one round trip.
        """
        if not self.settle_nowait(scope, lease_id, actual, at, now):
            with anyio.move_on_after(ASIDE):
                await self._arun(self._engine.settle(scope, lease_id, actual, at, now))
                return
            self._engine.later("flush", scope, (lease_id, actual, at))

    def settle_nowait(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> bool:
        """Defer the settle (see :meth:`settle`) if it can be; ``False``: it needs the round
        trip. Called from a coroutine; never blocks."""
        if _on_asyncio() and self._engine.defer(scope, lease_id, actual, at):
            self._settles.arm(asyncio.get_running_loop(), SETTLE_DELAY)
            return True
        return False

    async def release(self, scope: str, lease_id: str, now: float) -> None:
        """Return a lease that never reached the server (bounded like :meth:`cancel`)."""
        with anyio.move_on_after(ASIDE):
            await self._arun(self._engine.release(scope, lease_id, now))
            return
        self._engine.later("release", scope, (lease_id,))

    async def pause(self, scope: str, limit: str, until: float, now: float) -> None:
        """Hold a limit until ``until`` in every process (e.g. after a 429)."""
        await self._arun(self._engine.pause(scope, limit, until, now))

    async def exhaust(self, scope: str, limit: str, now: float) -> float | None:
        """Mark a calendar limit spent until its reset, in every process."""
        return await self._arun(self._engine.exhaust(scope, limit, now))  # type: ignore[no-any-return]

    async def learned(self, scope: str) -> dict[str, str]:
        """The figures the fleet learned for ``scope`` (JSON by dimension)."""
        return await self._arun(self._engine.learned(scope))  # type: ignore[no-any-return]

    async def learn(self, scope: str, dimension: str, figure: str, ttl: float) -> None:
        """Share a learned figure with the fleet for ``ttl`` seconds."""
        await self._arun(self._engine.learn(scope, dimension, figure, ttl))

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
