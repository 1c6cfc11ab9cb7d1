"""The synchronous face of a :class:`~quotaflow.backends.redis.RedisBackend`."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.backends.redis.clients import _CALL_ERRORS, _exec_sync, _transient
from quotaflow.backends.redis.effects import Backoff, EngineFlow, Exec
from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import Level
from quotaflow.scheduler.synchronization import TIMED_OUT

if TYPE_CHECKING:
    from quotaflow.backends.redis import RedisBackend

__all__ = ["ASIDE", "Stalled", "SyncRedisBackend"]

ASIDE = 0.5
"""Seconds a cancel, settle or release of the async face waits for Redis before it is set
aside and replayed by the background thread (the caller goes on; nothing is lost)."""


class Stalled(Exception):
    """A call given up at its bound: Redis had not answered (the flow keeps what it carried)."""


class SyncRedisBackend:
    """The synchronous face of a :class:`RedisBackend` (the sync redis-py client).

    ``SyncLimiter(backend="redis://...")`` uses it; it shares keys, scripts, listeners and the
    background thread with its async twin.
    """

    may_stall = True
    """Calls can stall (a paused server): :meth:`within` bounds those of a request with a
    deadline by it."""

    def __init__(self, owner: RedisBackend) -> None:
        self._owner = owner
        self._e = owner._engine
        self._pool: ThreadPoolExecutor | None = None  # the worker threads of bounded commands

    def _calls(self) -> ThreadPoolExecutor:
        with self._e.lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(32, thread_name_prefix="quotaflow-redis-call")
            return self._pool

    def _stop_calls(self) -> None:
        """End the worker threads (at close; one given up on a stalled server ends by its
        socket timeout)."""
        with self._e.lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            for thread in list(pool._threads):
                thread.join(5.0)

    def _run(self, flow: EngineFlow, until: float | None = None) -> Any:
        """Run ``flow`` with the sync client; with ``until`` (a monotonic time), each command
        runs in a worker thread and is given up at ``until``: :class:`Stalled`."""
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
                if isinstance(effect, Backoff):
                    if until is not None and time.monotonic() + effect.seconds >= until:
                        time.sleep(max(0.0, until - time.monotonic()))
                        raise Stalled
                    time.sleep(effect.seconds)
                    continue
                try:
                    if until is None:
                        result = _exec_sync(client, effect)
                    else:
                        result = self._bounded(client, effect, until)
                except _CALL_ERRORS as exc:
                    error = _transient(exc)
        finally:
            flow.close()  # abandoned (an error, a signal, a bound): it keeps what it carried

    def _bounded(self, client: Any, effect: Exec, until: float) -> Any:
        """One command in a worker thread, waited for until ``until`` at most (a command
        given up goes on in its thread; its reply is dropped)."""
        if time.monotonic() >= until:
            raise Stalled
        call = self._calls().submit(_exec_sync, client, effect)
        try:
            return call.result(max(0.0, until - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise Stalled from None

    def within(self, seconds: float, name: str, *args: Any) -> Any:
        """``submit`` or ``dispatch`` (``name``) given up after ``seconds`` if Redis does not
        answer: :data:`~quotaflow.scheduler.synchronization.TIMED_OUT` then (a cancel takes
        back what the call may have done)."""
        try:
            return self._run(getattr(self._e, name)(*args), time.monotonic() + seconds)
        except Stalled:
            return TIMED_OUT

    def _aside(self, op: str, scope: str, args: tuple[Any, ...], flow: EngineFlow) -> Any:
        """``flow`` (a cancel, settle or release), or, if a call of ``scope`` was just given
        up unanswered (a paused server), only its bookkeeping: the call is set aside and
        replayed by the background thread (each is idempotent), and the caller goes on."""
        if not self._e.stalled_now(scope):
            return self._run(flow)
        try:
            return self._run(flow, time.monotonic())  # stops at its first command
        except Stalled:
            self._e.later(op, scope, args)
            return None

    def learned(self, scope: str) -> dict[str, str]:
        """The figures the fleet learned for ``scope``."""
        return self._run(self._e.learned(scope))  # type: ignore[no-any-return]

    def learn(self, scope: str, dimension: str, figure: str, ttl: float) -> None:
        """Share a learned figure with the fleet."""
        self._run(self._e.learn(scope, dimension, figure, ttl))

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
        """Leave the line; returns a grant that won the race (set aside at once after a call
        of the scope went unanswered)."""
        flow = self._e.cancel(scope, request_id, now)
        return self._aside("cancel", scope, (request_id,), flow)  # type: ignore[no-any-return]

    def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> None:
        """Anchor and reconcile a lease that reached the server (set aside as a cancel)."""
        self._aside(
            "flush", scope, (lease_id, actual, at), self._e.settle(scope, lease_id, actual, at, now)
        )

    def release(self, scope: str, lease_id: str, now: float) -> None:
        """Return a lease that never reached the server (set aside as a cancel)."""
        self._aside("release", scope, (lease_id,), self._e.release(scope, lease_id, now))

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
