"""What a call flow says to its driver: the effects it yields, the outcome it returns, and
what it did (:class:`CallInfo`, on ``response.extensions["quotaflow"]``)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from quotaflow.flow.policy import CallTicket
from quotaflow.flow.refusal import Refusal
from quotaflow.gemini import (
    Call,
    Usage,
)
from quotaflow.observe.shadow import ShadowDecision
from quotaflow.quotas.learned import Origin


@dataclass
class CallInfo:
    """What the transport did for one call; on ``response.extensions["quotaflow"]``.

    Attributes:
        call: the classification.
        priority: the priority it waited at (``None`` for unmetered calls).
        agent: the agent name from ``quotaflow.agent()`` or ``x-quotaflow-agent``.
        estimated: the input tokens reserved before the call.
        sized_by: ``estimate``, ``count``, ``cache``, ``function`` or ``""`` (not sized).
        attempts: how many times the request was sent.
        waited: seconds spent waiting for capacity (all attempts).
        usage: the usage read from the response, once the body has been read.
        settled: whether the last attempt's permit has settled.
        origins: per dimension of the model's quota, where its figure came from (table,
            override, configured, learned from a 429, adaptive).
        statuses: the HTTP status of every attempt.
        requested_tier: the ``service_tier`` the request named (``None``: none).
        service_tier: the tier that served it (``x-gemini-service-tier``, else the requested).
        spend_estimated: micro-dollars reserved before the call (``None``: no price).
        spend: micro-dollars the call cost, from its usage at the tier that served it.
        sent: whether some attempt may have reached the server.
        quota_ids: the ``quotaId`` of every quota a 429 named, in order.
        shadow: in shadow mode (``Limiter(mode="shadow")``), what the limiter would have done
            with each permit it could not grant at once (a ``ShadowDecision``: ``wait`` with
            ``would_wait`` seconds, or ``refuse``); empty when every permit was granted at once
            and when enforcing.
    """

    call: Call
    priority: int | None = None
    agent: str | None = None
    estimated: int = 0
    sized_by: str = ""
    attempts: int = 0
    waited: float = 0.0
    usage: Usage | None = None
    settled: bool = False
    statuses: list[int] = field(default_factory=list)
    origins: Mapping[str, Origin] = field(default_factory=dict)
    requested_tier: str | None = None
    service_tier: str | None = None
    spend_estimated: int | None = None
    spend: int | None = None
    shadow: list[ShadowDecision] = field(default_factory=list)
    sent: bool = False
    quota_ids: list[str] = field(default_factory=list)


class _Permit(Protocol):
    @property
    def waited(self) -> float: ...
    def mark_sent(self) -> None: ...
    def mark_response_started(self) -> None: ...


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...


# ---- effects: what a driver must do ------------------------------------------------------


@dataclass(frozen=True, init=False)
class Acquire:
    """Acquire a permit (``limiter``: ``model``, ``count`` or the policy's ``budget``);
    returns it or raises."""

    limiter: Literal["model", "count", "budget"]
    model: str
    tokens: int
    cost: Mapping[str, int] | None
    priority: int | None
    deadline: float | None
    nowait: bool = False
    agent: str | None = None

    def __init__(
        self,
        limiter: Literal["model", "count", "budget"],
        model: str,
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | None,
        deadline: float | None,
        nowait: bool = False,
        agent: str | None = None,
    ) -> None:
        # one update, not the frozen dataclass's object.__setattr__ per field (every metered
        # call makes one)
        self.__dict__.update(
            limiter=limiter,
            model=model,
            tokens=tokens,
            cost=cost,
            priority=priority,
            deadline=deadline,
            nowait=nowait,
            agent=agent,
        )


@dataclass(frozen=True)
class AcquireBoth:
    """Acquire two permits (a call's model and spend permits): returns ``(first, second,
    waited)``, or raises the refusal (the first's when both are refused) with neither kept.
    A driver may ask both at once (``waited``: the seconds the call waited for the two)."""

    first: Acquire
    second: Acquire


@dataclass(frozen=True)
class Hold:
    """Hold ``tokens`` of ``model``'s ``batch_enqueued_tokens`` (a ``Concurrent`` limit);
    returns the permit, or ``None`` when the model has no such limit."""

    model: str
    tokens: int
    priority: int | None
    deadline: float | None
    agent: str | None = None


@dataclass(frozen=True)
class Send:
    """Send the caller's request through the inner transport; returns the response."""


@dataclass(frozen=True)
class Read:
    """Read a response whole and close it; returns ``(decoded body, equal fresh response)``."""

    response: Any


@dataclass(frozen=True)
class Watch:
    """Hand the data of each event of a streamed response to ``on_event`` as the caller reads
    it (before the caller gets the chunk that completes the event), until ``on_event`` returns
    ``True``; a response that is not an event stream is read whole and handed on as one.
    Returns the response for the caller."""

    response: Any
    on_event: Callable[[bytes], bool]


@dataclass(frozen=True)
class Count:
    """Send ``POST path`` with ``body`` and the caller's credentials; returns
    ``(status, decoded body)``, or ``None`` if the request failed."""

    path: str
    body: bytes


@dataclass(frozen=True)
class Lookup:
    """Send ``GET path`` with the caller's credentials (a resource's metadata); returns
    ``(status, decoded body)``, or ``None`` if the request failed."""

    path: str


@dataclass(frozen=True)
class Release:
    """Release a permit: the call never reached the server, so nothing is kept."""

    permit: Any


@dataclass(frozen=True)
class Settle:
    """Settle a permit (``amounts`` by metric; ``None`` keeps the estimate)."""

    permit: Any
    amounts: Mapping[str, int] | None


@dataclass(frozen=True)
class Pause:
    """``limiter.pause(model, dimension, until)``."""

    model: str
    dimension: str
    until: float


@dataclass(frozen=True)
class Exhaust:
    """``limiter.exhaust(model, dimension)``; returns the reset time."""

    model: str
    dimension: str


@dataclass(frozen=True)
class Learn:
    """``limiter.learn(model, dimension, amount, quota_id=...)``; returns ``(what was done,
    the configured amount)``."""

    model: str
    dimension: str
    amount: int | None
    quota_id: str


@dataclass(frozen=True)
class Sleep:
    """Sleep ``seconds``."""

    seconds: float


Effect = (
    Acquire
    | AcquireBoth
    | Hold
    | Send
    | Read
    | Watch
    | Count
    | Lookup
    | Release
    | Settle
    | Pause
    | Exhaust
    | Learn
    | Sleep
)


@dataclass
class Outcome:
    """The flow's result: the response for the caller, and the permit to settle from its
    body (``None`` when nothing is left to settle); or, instead of a response, the refusal
    to answer locally."""

    response: Any
    permit: Any
    info: CallInfo
    refusal: Refusal | None = None
    budget: Any = None  # the policy's budget permit, settled with the call's permit
    ticket: CallTicket | None = None


CallFlow = Generator[Effect, Any, Outcome]


# ---- pure helpers -------------------------------------------------------------------------
