"""What a :class:`~quotaflow.transport.QuotaTransport` does with one request, written once.

:func:`call_flow` is a generator: it yields effects (acquire, send, read, settle, pause, sleep,
...) and receives their results, like httpx's auth flows. The async and the sync transport (and
their httpx2 twins) run it; they make no decisions of their own. Exceptions raised while an
effect runs are thrown back into the flow, so it can settle what it holds before they leave.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from quotaflow import context, metrics
from quotaflow._call_policy import CallPolicy, CallTicket
from quotaflow._held import BATCH_TERMINAL, BatchHold, Held
from quotaflow._learned import Origin
from quotaflow._quota_book import SERVED
from quotaflow._refusal import LOCAL_ERRORS, LocalErrors, Refusal, quota_refusal
from quotaflow._shadow import ShadowDecision, decisions_of
from quotaflow._spend_flow import Paired, priority_cost, settle_spend
from quotaflow.clock import Clock
from quotaflow.errors import (
    BillingError,
    ConfigError,
    QuotaError,
    QuotaExhaustedError,
    UnknownModelError,
)
from quotaflow.gemini import (
    ApiError,
    Call,
    CountCache,
    FileMeta,
    QuotaViolation,
    Usage,
    classify,
    count_tokens_body,
    count_tokens_path,
    estimate_tokens,
    parse_error,
    read_count,
    redact_text,
    redact_url,
    requested_tier,
    served_tier,
)
from quotaflow.gemini._sizing import batch_tokens
from quotaflow.limits import RPM, Limit, pacific_days
from quotaflow.pricing import SPEND_SCOPE, USD_MICROS, SpendBook

_jitter = random.Random()  # our own generator: never disturb a user's seeded global one

__all__ = [
    "CallInfo",
    "Settings",
    "Sizer",
    "call_flow",
    "final_amounts",
    "send_failure",
    "settle_amounts",
]

log = logging.getLogger("quotaflow.transport")

COUNT_MODEL = "countTokens"
"""The scope countTokens calls are metered under (their own quota, not the model's)."""

HEADER_PREFIX = "x-quotaflow-"
RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})
"""Statuses retried (with backoff) for calls that create nothing: the server's or its front
end's transient failures, the ones google-genai's own ``retry_options`` retry besides 429."""

UNSENT_ERRORS = ("ConnectError", "ConnectTimeout", "PoolTimeout")
"""httpx/httpx2 errors raised before any byte of the request left: no connection was had, so
the server cannot have counted the call (its permit is released) and a retry is always safe."""

SENT_ERRORS = ("ReadTimeout", "WriteTimeout", "ReadError", "WriteError", "RemoteProtocolError")
"""httpx/httpx2 errors raised once the request may have reached the server: the call keeps its
request count (its permit is settled as sent); retried like a 503."""

BATCH_EXPIRY = 25 * 3600.0
"""Seconds a batch job holds its enqueued tokens when its end is never seen: the Batch API's
documented 24 h target turnaround (https://ai.google.dev/gemini-api/docs/batch-mode, read
2026-12-04) plus an hour's margin."""

Sizer = Literal["estimate", "count"] | Callable[[Call, Mapping[str, Any]], int]
"""How input tokens are sized before a call: ``"estimate"`` (local, no I/O), ``"count"``
(``countTokens``, cached; falls back to the estimate), or ``fn(call, body) -> int``."""


@dataclass(frozen=True)
class Settings:
    """The options of a transport (see :class:`~quotaflow.transport.QuotaTransport`)."""

    sizing: Sizer | Mapping[str, Sizer] = "estimate"
    count_quota: Sequence[Limit] = (RPM(3000),)
    count_cache: int = 4096
    reserve_output: bool = False
    default_output_tokens: int = 8192
    max_429_retries: int = 3
    max_5xx_retries: int = 3
    retry_writes: bool = False
    backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = 0.1
    batch_expiry: float = BATCH_EXPIRY
    local_errors: LocalErrors = "response"

    def __post_init__(self) -> None:
        if self.local_errors not in LOCAL_ERRORS:
            raise ConfigError(
                f"local_errors={self.local_errors!r}: use 'response' (a Gemini-shaped error "
                "response for each local refusal) or 'raise' (quotaflow's typed errors)"
            )
        for name in ("max_429_retries", "max_5xx_retries", "count_cache"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be >= 0")
        if not self.batch_expiry > 0:
            raise ConfigError(
                f"batch_expiry={self.batch_expiry!r}: give the seconds after which a batch job "
                "whose end is never seen gives its enqueued tokens back (> 0)"
            )
        if not self.backoff >= 0 or not self.max_backoff >= 0 or not self.jitter >= 0:
            raise ConfigError("backoff, max_backoff and jitter must be >= 0 seconds/fractions")
        for s in self._sizers():
            if not callable(s) and s not in ("estimate", "count"):
                raise ConfigError(
                    f"sizing={s!r}: use 'estimate', 'count', or a function (call, body) -> int"
                )

    def _sizers(self) -> list[Sizer]:
        if isinstance(self.sizing, Mapping):
            return list(self.sizing.values())
        return [self.sizing]

    def sizer(self, model: str | None) -> Sizer:
        """The sizer of ``model`` (a mapping may name models and ``"*"`` for the rest)."""
        if isinstance(self.sizing, Mapping):
            found = self.sizing.get(model or "", self.sizing.get("*", "estimate"))
            return found
        return self.sizing

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter: ``U(0.5, 1.5) * backoff * 2**attempt``."""
        base = min(self.max_backoff, self.backoff * (2.0**attempt))
        return base * (0.5 + _jitter.random())


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


@dataclass(frozen=True)
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
    | Hold
    | Send
    | Read
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


Flow = Generator[Effect, Any, Outcome]


# ---- pure helpers -------------------------------------------------------------------------


def directives(pairs: Mapping[str, str]) -> tuple[int | None, float | None, str | None]:
    """Priority, timeout and agent from ``x-quotaflow-*`` header values (falling back to the
    ``quotaflow.priority()/deadline()/agent()`` context)."""
    ctx_priority, ctx_timeout, ctx_agent = context.current()
    prio: int | None = ctx_priority
    timeout: float | None = ctx_timeout
    agent: str | None = ctx_agent
    if "priority" in pairs:
        prio = context.priority_value(pairs["priority"])
    if "timeout" in pairs:
        try:
            timeout = float(pairs["timeout"])
        except ValueError:
            raise ConfigError(
                f"x-quotaflow-timeout: {pairs['timeout']!r} is not a number of seconds"
            ) from None
        if not timeout >= 0:
            raise ConfigError("x-quotaflow-timeout: give seconds >= 0")
    if pairs.get("agent"):
        agent = pairs["agent"]
    return prio, timeout, agent


def settle_amounts(usage: Usage | None, reserve_output: bool) -> dict[str, int] | None:
    """What to settle a permit with, from the usage a response reported (``None``: keep the
    estimate, because the response reported nothing usable)."""
    if usage is None or (usage.input_tokens == 0 and usage.total_tokens == 0):
        return None
    out = {"input_tokens": usage.input_tokens}
    if reserve_output:
        out["output_tokens"] = usage.output_tokens + usage.thoughts_tokens
    return out


def final_amounts(info: CallInfo, reserve_output: bool, book: SpendBook | None) -> dict[str, int]:
    """What a permit settles with once its response has been read: :func:`settle_amounts`,
    the call's spend at the tier that served it, and its Priority amounts."""
    out = settle_amounts(info.usage, reserve_output) or {}
    extra = settle_spend(
        book, info.call.model or "", info.usage, info.requested_tier, info.service_tier
    )
    out.update(extra)
    if USD_MICROS in extra:
        info.spend = extra[USD_MICROS]
    return out


def _output_reservation(call: Call, body: Mapping[str, Any], default: int) -> int:
    if call.surface == "openai":
        for key in ("max_completion_tokens", "max_tokens"):
            if isinstance(body.get(key), int):
                return int(body[key])
        return default
    cfg = body.get("generationConfig", body.get("generation_config"))
    if isinstance(cfg, dict):
        value = cfg.get("maxOutputTokens", cfg.get("max_output_tokens"))
        if isinstance(value, int):
            return value
    return default


def _parse_body(content: bytes) -> dict[str, Any]:
    if not content:
        return {}
    try:
        obj = json.loads(content)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def send_failure(exc: BaseException) -> Literal["unsent", "sent"] | None:
    """What a transport error raised by the inner transport says about the request:
    ``"unsent"`` (it never left: see :data:`UNSENT_ERRORS`), ``"sent"`` (it may have reached
    the server: :data:`SENT_ERRORS`), or ``None`` (not a transient transport error: not
    retried). Both httpx and its fork httpx2 are recognized (their classes are distinct)."""
    for name in ("httpx", "httpx2"):
        module = sys.modules.get(name)  # a package never imported cannot have raised
        if module is None:
            continue
        for kind, names in (("unsent", UNSENT_ERRORS), ("sent", SENT_ERRORS)):
            for cls_name in names:
                cls = getattr(module, cls_name, None)
                if isinstance(cls, type) and isinstance(exc, cls):
                    return "unsent" if kind == "unsent" else "sent"
    return None


def _describe(exc: BaseException) -> str:
    text = redact_text(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dims(quota: Callable[[str], Sequence[Limit]], model: str) -> dict[str, Limit]:
    try:
        return {lim.name: lim for lim in quota(model)}
    except UnknownModelError:
        return {}


# ---- the flow -----------------------------------------------------------------------------


def call_flow(
    method: str,
    url: str,
    content: bytes,
    pairs: Mapping[str, str],
    settings: Settings,
    cache: CountCache,
    quota: Callable[[str], Sequence[Limit]],
    clock: Clock,
    warned: set[tuple[str, str, int]] | None = None,
    held: Held | None = None,
    spend: SpendBook | None = None,
    policy: CallPolicy | None = None,
    headers: Mapping[str, str] | None = None,
    streamed: bool = False,
) -> Flow:
    """The life of one request through a quota transport.

    Args:
        method, url, content: the caller's request (``content`` is its body, read; ``b""``
            when ``streamed``).
        pairs: the ``x-quotaflow-*`` header values by suffix (already stripped).
        settings: the transport's options.
        cache: countTokens results by content hash.
        quota: the model limiter's ``quota(model)``.
        clock: the model limiter's clock.
        warned: calibrations already logged (each is logged once).
        held: the Files API metadata and batch holds of the limiter (``None``: neither is
            kept).
        spend: the limiter's prices and spend cap (``None``: spend is not metered).
        policy: the policy stage (grants, budgets, audit; see :mod:`quotaflow._call_policy`).
        headers: the request's headers (for the classification and the policy).
        streamed: the body streams through unread (an upload): sent once, never retried.
    """
    body = _parse_body(content)
    call = classify(method, url, body, headers=headers)
    prio, timeout, agent = directives(pairs)
    ticket: CallTicket | None = None
    if policy is not None:
        ticket = policy.admit(call, url, body, content, headers or {}, agent, prio)
        agent, prio = ticket.agent, ticket.priority
    info = CallInfo(call, agent=agent)
    if ticket is None:
        return (
            yield from _call(
                call,
                body,
                prio,
                timeout,
                info,
                settings,
                cache,
                quota,
                clock,
                warned,
                held,
                spend,
                None,
                streamed,
                method,
                url,
            )
        )
    if ticket.refusal is not None:
        return Outcome(None, None, info, ticket.refusal, ticket=ticket)
    try:
        outcome = yield from _call(
            call,
            body,
            prio,
            timeout,
            info,
            settings,
            cache,
            quota,
            clock,
            warned,
            held,
            spend,
            ticket,
            streamed,
            method,
            url,
        )
        outcome.ticket = ticket
        if outcome.response is not None and ticket.responded(outcome.response.status_code):
            try:
                raw, outcome.response = yield Read(outcome.response)
            except BaseException:
                if outcome.permit is not None:
                    yield Settle(outcome.permit, None)
                if outcome.budget is not None:
                    yield Settle(outcome.budget, ticket.budget_amounts(info))
                raise
            ticket.created(raw)
    except BaseException as exc:
        ticket.finish(info, error=exc)
        raise
    return outcome


def _call(
    call: Call,
    body: dict[str, Any],
    prio: int | None,
    timeout: float | None,
    info: CallInfo,
    settings: Settings,
    cache: CountCache,
    quota: Callable[[str], Sequence[Limit]],
    clock: Clock,
    warned: set[tuple[str, str, int]] | None,
    held: Held | None,
    spend: SpendBook | None,
    ticket: CallTicket | None,
    streamed: bool,
    method: str,
    url: str,
) -> Flow:
    """Size, take the budget, then admit and send (with retries): see :func:`call_flow`."""
    if streamed:
        return (yield from _send_once(call, info, held))
    deadline = None if timeout is None else clock.now() + timeout
    metered = call.metered or call.counting
    model = call.model or ""
    files = held.files if held is not None else None
    batch = held is not None and call.action == "batchGenerateContent" and bool(model)
    if held is not None and call.area == "batch":
        for gone in held.expired(clock.now()):
            log.info(
                "%s: no end seen in %.0fs; its enqueued tokens are given back",
                gone.name,
                settings.batch_expiry,
            )
            yield Settle(gone.permit, None)

    tokens, cost = 0, None
    if batch:
        enqueued = batch_tokens(body, files)
        source = _batch_file(body)
        if enqueued is None and held is not None and source:
            # the transports never saw the file: ask the Files API for its size
            found = yield Lookup(_sibling(call.path, version=call.version, name=source))
            if found is not None and found[0] == 200:
                obj = _parse_body(found[1])
                if isinstance(obj.get("name"), str):
                    held.files.put(obj["name"], FileMeta.from_json(obj))
                    enqueued = batch_tokens(body, held.files)
        if enqueued is None:
            log.info("%s: the batch's input file is unknown here; its tokens are not held", model)
        info.estimated = enqueued or 0
        info.sized_by = "estimate" if enqueued is not None else ""
    spend_cost: dict[str, int] | None = None
    if call.metered:
        info.priority = prio
        tokens = yield from _size(call, body, settings, cache, deadline, info, files)
        cost_map = {"requests": call.requests}
        output = _output_reservation(call, body, settings.default_output_tokens)
        if settings.reserve_output and call.area != "embeddings":
            cost_map["output_tokens"] = output
        info.requested_tier = requested_tier(body)
        if info.requested_tier == "priority":
            cost_map.update(priority_cost(call.requests, tokens))
        cost = cost_map
        info.estimated = tokens
        if spend is not None:
            if call.area == "embeddings":
                output = 0
            info.spend_estimated = spend.cost(
                model, info.requested_tier, input_tokens=tokens, output_tokens=output
            )
            if info.spend_estimated is not None and spend.cap_usd is not None:
                spend_cost = {USD_MICROS: info.spend_estimated}
    budget: Any = None
    if ticket is not None and call.metered:
        ask = ticket.budget_cost(tokens, info.spend_estimated)
        if ask is not None:
            scope, budget_tokens, budget_cost = ask
            try:
                budget = yield Acquire(
                    "budget", scope, budget_tokens, budget_cost, None, None, True
                )
            except QuotaError as exc:
                return Outcome(None, None, info, ticket.budget_refused(exc))
    try:
        outcome = yield from _attempts(
            call,
            method,
            url,
            settings,
            quota,
            clock,
            warned,
            held,
            spend,
            batch,
            metered,
            model,
            tokens,
            cost,
            spend_cost,
            prio,
            deadline,
            info,
        )
    except BaseException:
        if budget is not None:
            yield from _end_budget(budget, ticket, info)
        raise
    if budget is not None:
        if outcome.permit is not None:
            outcome.budget = budget  # settled with the call's permit, from its usage
        else:
            yield from _end_budget(budget, ticket, info)
    return outcome


def _end_budget(budget: Any, ticket: Any, info: CallInfo) -> Generator[Effect, Any, None]:
    """Settle the budget permit of a call that may have reached the server (it keeps its
    request), or give it back if no attempt left."""
    if info.sent:
        budget.mark_sent()
        yield Settle(budget, ticket.budget_amounts(info))
    else:
        yield Release(budget)


def _attempts(
    call: Call,
    method: str,
    url: str,
    settings: Settings,
    quota: Callable[[str], Sequence[Limit]],
    clock: Clock,
    warned: set[tuple[str, str, int]] | None,
    held: Held | None,
    spend: SpendBook | None,
    batch: bool,
    metered: bool,
    model: str,
    tokens: int,
    cost: dict[str, int] | None,
    spend_cost: dict[str, int] | None,
    prio: int | None,
    deadline: float | None,
    info: CallInfo,
) -> Flow:
    """Admit, send, feed back and retry, until an answer for the caller."""
    # 408/5xx and connection failures are retried for calls that create nothing (generation,
    # embedding, reads, deletes: see Call.creates) unless retry_writes extends it to creates
    retry_transient = call.idempotent or settings.retry_writes
    n429 = n_transient = 0
    while True:
        permit: Any = None
        try:
            permit = yield from _admit(
                batch, metered, call, model, tokens, cost, spend_cost, prio, deadline, info
            )
        except QuotaError as exc:
            if settings.local_errors == "raise":
                raise
            return Outcome(None, None, info, quota_refusal(exc, model))
        info.attempts += 1
        # the permit is marked sent once the attempt's fate is known, not before: an error that
        # proves the request never left (send_failure: "unsent") releases it instead
        try:
            response: Any = yield Send()
        except BaseException as exc:
            kind = send_failure(exc) if isinstance(exc, Exception) else None
            info.sent = info.sent or kind != "unsent"
            if permit is not None:
                if kind == "unsent":
                    yield Release(permit)  # no connection was had: the server counted nothing
                else:
                    permit.mark_sent()  # it may have reached the server: keep the count
                    yield Settle(permit, None)
            if kind is None or not retry_transient or n_transient >= settings.max_5xx_retries:
                raise  # the inner transport's own exception, unchanged
            delay = settings.backoff_delay(n_transient)
            if deadline is not None and clock.now() + delay > deadline:
                raise
            log.info(
                "%s %s: %s (%s); retry %d in %.2fs",
                method,
                redact_url(url),
                _describe(exc),
                "not sent" if kind == "unsent" else "may have reached the server",
                n_transient + 1,
                delay,
            )
            n_transient += 1
            yield Sleep(delay)
            continue
        info.sent = True
        if permit is not None:
            permit.mark_response_started()
        status = int(response.status_code)
        info.statuses.append(status)
        if status < 400 and call.metered:
            info.service_tier = served_tier(response.headers, info.requested_tier)
        if batch and permit is not None and status < 400:
            assert held is not None
            try:
                raw, fresh = yield Read(response)
            except BaseException:
                # the job exists but its name was not read: its tokens stay held until the
                # documented turnaround has passed
                unknown = f"batches/unread-{id(permit):x}-{clock.now():.6f}"
                expires = clock.now() + settings.batch_expiry
                held.hold(BatchHold(unknown, model, info.estimated, expires, permit))
                raise
            yield from _batch_created(raw, permit, held, model, info.estimated, clock, settings)
            return Outcome(fresh, None, info)
        if status < 400 and permit is not None:
            return Outcome(response, permit, info)
        if permit is None and held is not None and status < 500 and _observes(call, held):
            raw, response = yield Read(response)
            yield from _observe(call, status, raw, held)
        if permit is not None:
            # a call the server refused is not billed: its spend comes back; a 429 was not
            # served (what the adaptive rate counts)
            amounts: dict[str, int] = {USD_MICROS: 0} if isinstance(permit, Paired) else {}
            if status == 429:
                amounts[SERVED] = 0
            yield Settle(permit, amounts or None)
            info.settled = True
        if status == 402:
            raw, _fresh = yield Read(response)
            err = parse_error(raw)
            said = redact_text(err.message) if err is not None and err.message else ""
            label = call.model or "the call"
            raise BillingError(
                f"{label}: Gemini answered 402 Payment Required: the project's prepaid "
                "balance is empty (billing). Add funds in Google AI Studio (Billing, "
                "https://aistudio.google.com/) or switch the key to a funded project; this "
                f"call is not retried. The server said: {said or '(no message)'}",
                model=call.model,
            )
        if status == 429:
            raw, fresh = yield Read(response)
            err = parse_error(raw) or ApiError(code=429)
            info.quota_ids.extend(v.quota_id for v in err.violations if v.quota_id)
            if metrics.ON:
                metrics.rate_limited(model, [v.quota_id for v in err.violations if v.quota_id])
            if n429 >= settings.max_429_retries:
                return Outcome(fresh, None, info)
            if spend is not None and spend.cap_usd is not None and _spend_violations(err):
                delay = yield from _on_spend_429(err, spend, settings, clock)
            else:
                try:
                    delay = yield from _on_429(call, err, settings, quota, clock, warned)
                except QuotaExhaustedError as exc:  # the day quota is spent: no retry today
                    if settings.local_errors == "raise":
                        raise
                    return Outcome(None, None, info, quota_refusal(exc, model))
            if deadline is not None and clock.now() + delay > deadline:
                return Outcome(fresh, None, info)
            n429 += 1
            if delay > 0:
                yield Sleep(delay)
            continue
        if status in RETRY_STATUSES and retry_transient and n_transient < settings.max_5xx_retries:
            delay = settings.backoff_delay(n_transient)
            if deadline is not None and clock.now() + delay > deadline:
                return Outcome(response, None, info)
            try:
                yield Read(response)  # drain and close it: the connection goes back to the pool
            except Exception as exc:
                if send_failure(exc) is None:
                    raise  # a dropped connection loses only a body we would not use
            log.info(
                "%s %s: %d from the server; retry %d in %.2fs",
                method,
                redact_url(url),
                status,
                n_transient + 1,
                delay,
            )
            n_transient += 1
            yield Sleep(delay)
            continue
        return Outcome(response, None, info)


def _send_once(call: Call, info: CallInfo, held: Held | None) -> Flow:
    """An upload: its body streams through once, unread and never retried; a finished one's
    file metadata is kept (its size sizes later calls that name the file)."""
    info.attempts = 1
    try:
        response: Any = yield Send()
    except BaseException as exc:
        info.sent = not (isinstance(exc, Exception) and send_failure(exc) == "unsent")
        raise
    info.sent = True
    status = int(response.status_code)
    info.statuses.append(status)
    ctype = str(response.headers.get("content-type", ""))
    if held is not None and status == 200 and "json" in ctype:
        raw, response = yield Read(response)
        obj = _parse_body(raw)
        f = obj.get("file")
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            held.files.put(f["name"], FileMeta.from_json(f))
    return Outcome(response, None, info)


def _admit(
    batch: bool,
    metered: bool,
    call: Call,
    model: str,
    tokens: int,
    cost: dict[str, int] | None,
    spend_cost: dict[str, int] | None,
    prio: int | None,
    deadline: float | None,
    info: CallInfo,
) -> Generator[Effect, Any, Any]:
    """One attempt's permit (``None``: nothing to acquire); a refusal raises the limiter's
    :class:`~quotaflow.errors.QuotaError`."""
    permit: Any = None
    if batch and info.estimated:
        permit = yield Hold(model, info.estimated, prio, deadline, info.agent)
        if permit is not None:
            info.waited += permit.waited
    elif metered:
        which: Literal["model", "count"] = "model" if call.metered else "count"
        target = model if call.metered else COUNT_MODEL
        permit = yield Acquire(which, target, tokens, cost, prio, deadline, agent=info.agent)
        info.shadow.extend(decisions_of(permit))
        if spend_cost is not None:
            try:
                for_spend = yield Acquire(
                    "model", SPEND_SCOPE, 0, spend_cost, prio, deadline, agent=info.agent
                )
            except BaseException:
                yield Release(permit)
                raise
            permit = Paired(permit, for_spend)
            info.shadow.extend(decisions_of(for_spend))
        info.waited += permit.waited
        info.priority = permit.priority
    return permit


_BATCH_NAME = re.compile(r"(batches/[^/:?]+)")
_FILE_NAME = re.compile(r"(files/[^/:?]+)")


def _batch_file(body: Mapping[str, Any]) -> str | None:
    batch = body.get("batch")
    config = batch.get("inputConfig") if isinstance(batch, dict) else None
    name = config.get("fileName") if isinstance(config, dict) else None
    return name if isinstance(name, str) and _FILE_NAME.fullmatch(name) else None


def _sibling(path: str, *, version: str | None, name: str) -> str:
    """The path of resource ``name`` under the same prefix and version as ``path``."""
    head = path[: path.find(f"/{version}/") + 1] if version and f"/{version}/" in path else "/"
    return f"{head}{version or 'v1beta'}/{name}"


def _batch_ended(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata")
    state = obj.get("state")
    if isinstance(meta, dict):
        state = meta.get("state", state)
    return obj.get("done") is True or state in BATCH_TERMINAL


def _batch_created(
    raw: bytes,
    permit: Any,
    held: Held,
    model: str,
    tokens: int,
    clock: Clock,
    settings: Settings,
) -> Generator[Effect, Any, None]:
    """Keep the new job's hold under its name, or give it back if the job is already over."""
    obj = _parse_body(raw)
    name = obj.get("name")
    if isinstance(name, str) and name and not _batch_ended(obj):
        held.hold(BatchHold(name, model, tokens, clock.now() + settings.batch_expiry, permit))
        return
    yield Settle(permit, None)


def _observes(call: Call, held: Held) -> bool:
    """Whether the response of an unmetered call says something the limiter keeps: a batch
    job's state (while any job holds tokens) or a file's metadata."""
    if call.area == "batch":
        return bool(held) and call.action in ("get", "list", "cancel", "delete")
    return call.area == "files" and call.action in ("get", "list", "delete")


def _observe(call: Call, status: int, raw: bytes, held: Held) -> Generator[Effect, Any, None]:
    obj = _parse_body(raw)
    if call.area == "files":
        if status >= 300:
            return
        if call.action == "delete":
            m = _FILE_NAME.search(call.path)
            if m:
                held.files.forget(m.group(1))
            return
        items = obj.get("files") if call.action == "list" else [obj]
        for f in items if isinstance(items, list) else ():
            if isinstance(f, dict) and isinstance(f.get("name"), str):
                held.files.put(f["name"], FileMeta.from_json(f))
        return
    ended: list[str] = []
    m = _BATCH_NAME.search(call.path)
    if call.action in ("cancel", "delete"):
        if m and (status < 300 or status == 404):
            ended.append(m.group(1))
    elif call.action == "get":
        if m and (status == 404 or (status < 300 and _batch_ended(obj))):
            ended.append(m.group(1))
    elif status < 300:
        jobs = obj.get("operations", obj.get("batches"))
        for job in jobs if isinstance(jobs, list) else ():
            if isinstance(job, dict) and isinstance(job.get("name"), str) and _batch_ended(job):
                ended.append(job["name"])
    for name in ended:
        hold = held.end(name)
        if hold is not None:
            log.info("%s ended; %d enqueued tokens of %s given back", name, hold.tokens, hold.model)
            yield Settle(hold.permit, None)


def _size(
    call: Call,
    body: Mapping[str, Any],
    settings: Settings,
    cache: CountCache,
    deadline: float | None,
    info: CallInfo,
    files: Mapping[str, FileMeta] | None = None,
) -> Generator[Effect, Any, int]:
    if not call.input_tokens:
        return 0
    sizer = settings.sizer(call.model)
    if callable(sizer):
        n = sizer(call, body)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"the sizing function returned {n!r}: return an int >= 0")
        info.sized_by = "function"
        return n
    countable = call.surface == "gemini" and call.action in (
        "generateContent",
        "streamGenerateContent",
    )
    if sizer == "count" and countable:
        cbody = count_tokens_body(call, body)
        key = cache.key(call.model or "", cbody)
        hit = cache.get(key)
        if hit is not None:
            info.sized_by = "cache"
            return hit
        try:
            permit: Any = yield Acquire("count", COUNT_MODEL, 0, None, None, deadline, True)
        except QuotaError:
            permit = None  # counting is an optimization: never wait for it
        if permit is not None:
            permit.mark_sent()
            result = yield Count(count_tokens_path(call), cbody)  # never raises
            yield Settle(permit, None)
            if result is not None and result[0] == 200:
                counted = read_count(result[1])
                if counted is not None:
                    cache.put(key, counted)
                    info.sized_by = "count"
                    return counted
    info.sized_by = "estimate"
    return estimate_tokens(call, body, files)


def _plain(name: str) -> str:
    return name.removeprefix("models/")


def _learn(
    model: str, err: ApiError, warned: set[tuple[str, str, int]] | None
) -> Generator[Effect, Any, bool]:
    """Teach the limiter what a 429 says: each ``quotaValue`` (adopted, lowering, or kept out
    when higher), and without any, the adaptive request rate."""
    valued = False
    lowest: dict[str, QuotaViolation] = {}
    for v in err.violations:
        dim = v.dimension
        if v.model and _plain(v.model) != _plain(model):
            continue  # about another model
        if dim is None or v.quota_value is None:
            continue
        if dim not in lowest or v.quota_value < (lowest[dim].quota_value or 0):
            lowest[dim] = v
    for dim, v in lowest.items():
        assert v.quota_value is not None
        valued = True
        result, configured = yield Learn(model, dim, v.quota_value, v.quota_id)
        seen = (model, dim, v.quota_value)
        if result in ("same", "known") or (warned is not None and seen in warned):
            continue
        if warned is not None:
            warned.add(seen)
        if result == "adopted":
            log.info(
                "%s: learned %s = %d from the server (%s)", model, dim, v.quota_value, v.quota_id
            )
        elif result == "lowered":
            log.warning(
                "%s: the server's %s limit is %d, below the configured %s; lowered to the "
                "server's figure",
                model,
                dim,
                v.quota_value,
                configured,
            )
        elif result == "higher":
            log.warning(
                "%s: the server's %s limit is %d, above the configured %s; keeping %s (a tier "
                "upgrade? raise it with overrides= or QUOTAFLOW_LIMITS once confirmed)",
                model,
                dim,
                v.quota_value,
                configured,
                configured,
            )
    if valued or err.per_day:
        return False
    if err.violations and not any(v.metric is not None for v in err.violations):
        return False  # a quota of another kind (spend, say): not the request rate's business
    # no figure anywhere in the 429: the request rate adapts until one is known
    qid = next((v.quota_id for v in err.violations if v.quota_id), "")
    result, _ = yield Learn(model, "rpm", None, qid)
    if result == "adapted":
        log.info("%s: a 429 named no limit; the request rate adapts (%s)", model, qid or "-")
    return bool(result == "adapted")


def _spend_violations(err: ApiError) -> list[Any]:
    return [v for v in err.violations if "spend" in f"{v.quota_id}{v.quota_metric}".lower()]


def _on_spend_429(
    err: ApiError, spend: SpendBook, settings: Settings, clock: Clock
) -> Generator[Effect, Any, float]:
    """A 429 of the spend cap: pause the project's spend scope until the server's retry time
    (the retry waits for it). The cap itself stays as configured: set ``Spend(cap_usd=...)`` to
    your account's figure."""
    now = clock.now()
    delay = err.retry_delay if err.retry_delay is not None else spend.period
    until = now + delay * (1.0 + settings.jitter * _jitter.random())
    yield Pause(SPEND_SCOPE, "spend", until)
    log.info("429 on the spend cap (%s); spend paused for %.3fs", err.violations[0].quota_id, delay)
    return 0.0


def _on_429(
    call: Call,
    err: ApiError,
    settings: Settings,
    quota: Callable[[str], Sequence[Limit]],
    clock: Clock,
    warned: set[tuple[str, str, int]] | None,
) -> Generator[Effect, Any, float]:
    """Feed a 429 back into the limiter; returns the seconds to wait before retrying."""
    model = call.model if call.metered else None
    now = clock.now()
    adapted = (yield from _learn(model, err, warned)) if model else False
    dims = _dims(quota, model) if model else {}
    day = err.per_day
    if day:
        resets: float | None = None
        names = []
        for v in day:
            dim = v.dimension or "rpd"
            names.append(dim)
            if model and dim in dims:
                got = yield Exhaust(model, dim)
                resets = got if got is not None else resets
        if resets is None:
            resets = pacific_days().window_end(now)
        label = model or call.model or "the model"
        raise QuotaExhaustedError(
            f"{label}: the server says the day quota ({', '.join(names)}) is spent; it resets "
            f"at midnight Pacific time (in {max(0.0, resets - now):.0f}s). Retry after the "
            "reset, use another model, or raise the tier.",
            model=label,
            dimension=names[0],
            retry_after=max(0.0, resets - now),
            resets_at=resets,
        )
    minute = err.per_minute
    if minute and err.retry_delay is not None:
        delay = err.retry_delay
    elif minute:
        delay = 60.0 if not dims else max(lim.period for lim in dims.values() if lim.period < 3600)
    else:  # no QuotaFailure: an adaptive request rate (if adopted) or a plain back-off
        delay = err.retry_delay if err.retry_delay is not None else settings.backoff_delay(0)
        if model and adapted and "rpm" in dims:
            until = now + delay * (1.0 + settings.jitter * _jitter.random())
            yield Pause(model, "rpm", until)
            log.info("%s: 429 without a quota violation; paused %.2fs", model, until - now)
            return 0.0
        log.info("%s: 429 without a quota violation; backing off %.2fs", model or call.path, delay)
        return delay
    until = now + delay * (1.0 + settings.jitter * _jitter.random())
    paused = False
    for v in minute:
        name = v.dimension
        if model and name is not None and name in dims:
            yield Pause(model, name, until)
            paused = True
    if model and adapted and not paused and "rpm" in dims:
        yield Pause(model, "rpm", until)
        paused = True
    log.info(
        "%s: 429 on %s; %s for %.3fs",
        model or call.path,
        ", ".join(v.quota_id or "?" for v in minute),
        "paused" if paused else "waiting",
        until - now,
    )
    # the retry acquires again and so waits for the pause; sleep only if nothing was paused
    return 0.0 if paused else max(0.0, until - now)
