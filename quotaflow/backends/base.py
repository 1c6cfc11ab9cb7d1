"""The storage protocol every backend implements, and the values it exchanges.

A backend keeps, per *scope* (one Google Cloud project and model), the buckets of the scope's
limits, the line of waiting requests, and the leases of granted ones. Every operation is atomic:
``submit`` takes all of a request's costs or none. Rules (order, backfilling, deadlines,
fail-fast) are decided inside the backend, so that a Redis backend can apply them fleet-wide in
one script call; drivers (the async and sync limiters) only sleep and wake.

Decisions about *other* waiters (a release freed room, a head's computed start moved) are
delivered to listeners registered with :meth:`Backend.subscribe`, never polled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from quotaflow.limits import Limit
from quotaflow.scheduler.buckets import Level

__all__ = [
    "AsyncBackend",
    "Backend",
    "Decision",
    "Listener",
    "Request",
]

Outcome = Literal["granted", "waiting", "refused"]
Refusal = Literal["cannot_fit", "exhausted", "timeout", "cancelled", "nowait"]


@dataclass(slots=True)
class Request:
    """One request for capacity in a scope.

    Attributes:
        id: unique id; it becomes the lease id when granted.
        cost: amounts by limit name (``{"rpm": 1, "tpm": 900, "rpd": 1}``).
        priority: larger is more important.
        deadline: absolute time after which waiting is pointless (``None``: no deadline).
        nowait: do not queue; refuse at once if it cannot be granted now.
        floors: ``{limit name: amount}``: while every named limit's use plus this request
            stays within the amount, the request is served before the line (an agent below its
            floor goes first; see ``quotaflow.quotas.shares``).
    """

    id: str
    cost: Mapping[str, int]
    priority: int = 0
    deadline: float | None = None
    nowait: bool = False
    floors: Mapping[str, int] | None = None


@dataclass(slots=True)
class Decision:
    """What the backend decided about one request.

    Attributes:
        id: the request id.
        outcome: ``granted``, ``waiting`` or ``refused``.
        at: granted: the grant time; waiting: when the request's computed start is (only the
            head of the line gets a time; others wait for a wake-up); refused: when it could
            fit, if known.
        dimension: the limit that blocks or refused.
        reason: for refusals: ``cannot_fit``, ``exhausted``, ``timeout``, ``cancelled``,
            ``nowait``.
        requested: the amount asked of ``dimension``.
        limit: the usable limit of ``dimension``.
    """

    id: str
    outcome: Outcome
    at: float | None = None
    dimension: str = ""
    reason: Refusal | None = None
    requested: int = 0
    limit: int = 0


Listener = Callable[[Decision], None]


@runtime_checkable
class Backend(Protocol):
    """Synchronous storage of buckets, lines and leases. Every method is atomic.

    Optional, found by the limiters with ``hasattr``: a fast lane for uncontended calls
    (``lane(scope)``, ``lock`` with ``take``/``give``, ``settle_tokens``; see
    :class:`~quotaflow.backends.memory.MemoryBackend`, :mod:`quotaflow.scheduler.lane` and
    :mod:`quotaflow.scheduler.gate`).
    """

    def configure(self, scope: str, limits: Sequence[Limit], now: float) -> None:
        """Create the scope's buckets, or update their limits (keeping what is held)."""
        ...

    def submit(self, scope: str, request: Request, now: float) -> Decision:
        """Grant the request now, queue it, or refuse it (cannot fit, exhausted, deadline)."""
        ...

    def dispatch(self, scope: str, now: float) -> None:
        """Serve the line as far as capacity allows (a timer fired)."""
        ...

    def cancel(self, scope: str, request_id: str, now: float) -> Decision | None:
        """Leave the line. Returns a ``granted`` decision if the grant won the race."""
        ...

    def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> None:
        """The call reached the server, which counted it no later than ``at``.

        ``actual`` replaces the granted cost for the limits it names (less refunds, more
        charges); ``None`` keeps the granted cost. The lease ends.
        """
        ...

    def release(self, scope: str, lease_id: str, now: float) -> None:
        """The call never reached the server: return everything. The lease ends."""
        ...

    def pause(self, scope: str, limit: str, until: float, now: float) -> None:
        """Admit nothing on ``limit`` before ``until`` (from a 429)."""
        ...

    def exhaust(self, scope: str, limit: str, now: float) -> float | None:
        """Mark a calendar limit spent until its reset; returns the reset time."""
        ...

    def status(self, scope: str, now: float) -> dict[str, Level]:
        """Each limit's level, by limit name."""
        ...

    def waiting(self, scope: str) -> int:
        """How many requests wait in the scope's line."""
        ...

    def subscribe(self, scope: str, listener: Listener) -> None:
        """Deliver decisions about the scope's waiters to ``listener``."""
        ...

    def unsubscribe(self, scope: str, listener: Listener) -> None:
        """Stop delivering to ``listener``."""
        ...


@runtime_checkable
class AsyncBackend(Protocol):
    """The same operations for backends that do I/O (e.g. Redis): awaitable twins.

    Optional: ``settle_nowait(scope, lease_id, actual, at, now) -> bool``, a settle that needs
    no waiting (e.g. queued to ride on the scope's next call); ``False``: use ``settle``.
    """

    async def configure(self, scope: str, limits: Sequence[Limit], now: float) -> None: ...
    async def submit(self, scope: str, request: Request, now: float) -> Decision: ...
    async def dispatch(self, scope: str, now: float) -> None: ...
    async def cancel(self, scope: str, request_id: str, now: float) -> Decision | None: ...
    async def settle(
        self, scope: str, lease_id: str, actual: Mapping[str, int] | None, at: float, now: float
    ) -> None: ...
    async def release(self, scope: str, lease_id: str, now: float) -> None: ...
    async def pause(self, scope: str, limit: str, until: float, now: float) -> None: ...
    async def exhaust(self, scope: str, limit: str, now: float) -> float | None: ...
    async def status(self, scope: str, now: float) -> dict[str, Level]: ...
    async def waiting(self, scope: str) -> int: ...
    def subscribe(self, scope: str, listener: Listener) -> None: ...
    def unsubscribe(self, scope: str, listener: Listener) -> None: ...
