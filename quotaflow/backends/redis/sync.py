"""The synchronous face of a :class:`~quotaflow.backends.redis.RedisBackend`."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quotaflow.backends.base import Decision, Listener, Request
from quotaflow.backends.redis.clients import _CALL_ERRORS, _exec_sync, _transient
from quotaflow.backends.redis.effects import Backoff, EngineFlow
from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import Level

if TYPE_CHECKING:
    from quotaflow.backends.redis import RedisBackend

__all__ = ["SyncRedisBackend"]


class SyncRedisBackend:
    """The synchronous face of a :class:`RedisBackend` (the sync redis-py client).

    ``SyncLimiter(backend="redis://...")`` uses it; it shares keys, scripts, listeners and the
    background thread with its async twin.
    """

    def __init__(self, owner: RedisBackend) -> None:
        self._owner = owner
        self._e = owner._engine

    def _run(self, flow: EngineFlow) -> Any:
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
                    time.sleep(effect.seconds)
                    continue
                try:
                    result = _exec_sync(client, effect)
                except _CALL_ERRORS as exc:
                    error = _transient(exc)
        finally:
            flow.close()  # abandoned (an error, a signal): the flow keeps what it carried

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
