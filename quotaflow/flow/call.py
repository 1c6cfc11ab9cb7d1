"""The life of one request through a quota transport, written once.

:func:`call_flow` is a generator: it yields effects (acquire, send, read, settle, pause, sleep,
...) and receives their results, like httpx's auth flows. The async and the sync transport (and
their httpx2 twins) run it; they make no decisions of their own. Exceptions raised while an
effect runs are thrown back into the flow, so it can settle what it holds before they leave."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from quotaflow import context
from quotaflow.clock import Clock
from quotaflow.errors import (
    ConfigError,
    QuotaError,
)
from quotaflow.flow.attempts import attempts, send_once
from quotaflow.flow.batch import batch_file, batch_job, sibling
from quotaflow.flow.effects import (
    Acquire,
    CallFlow,
    CallInfo,
    Lookup,
    Outcome,
    Read,
    Settle,
    Watch,
)
from quotaflow.flow.held import Held
from quotaflow.flow.policy import CallPolicy, CallTicket
from quotaflow.flow.refusal import malformed_refusal
from quotaflow.flow.settings import Settings, log
from quotaflow.flow.sizing import (
    end_budget,
    output_reservation,
    parse_body,
    size_input,
    sized_here,
)
from quotaflow.flow.spend import priority_cost
from quotaflow.gemini import (
    Call,
    CountCache,
    FileMeta,
    classify,
    requested_tier,
)
from quotaflow.gemini._sizing import batch_tokens
from quotaflow.limits import Limit
from quotaflow.quotas.pricing import USD_MICROS, SpendBook


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
) -> CallFlow:
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
        policy: the policy stage (grants, budgets, audit; see :mod:`quotaflow.flow.policy`).
        headers: the request's headers (for the classification and the policy).
        streamed: the body streams through unread (an upload): sent once, never retried.
    """
    body = parse_body(content)
    call = classify(method, url, body, headers=headers)
    prio, timeout, agent = directives(pairs)
    ticket: CallTicket | None = None
    if policy is not None:
        ticket = policy.admit(call, url, body, content, headers or {}, agent, prio)
        agent, prio = ticket.agent, ticket.priority
    info = CallInfo(call, agent=agent)
    if ticket is None and call.problem is not None:
        return Outcome(None, None, info, malformed_refusal(call))  # the policy answers its own
    # what both ways through _call share: the request, its options and the limiter's state
    args = (call, body, prio, timeout, info, settings, cache, quota, clock, warned, held, spend)
    if ticket is None:
        return (yield from _call(*args, None, streamed, method, url))
    if ticket.refusal is not None:
        return Outcome(None, None, info, ticket.refusal, ticket=ticket)
    try:
        outcome = yield from _call(*args, ticket, streamed, method, url)
        outcome.ticket = ticket
        if outcome.response is not None and ticket.responded(outcome.response.status_code):
            if call.streaming:  # the new resource is named in an event: watched as it passes
                outcome.response = yield Watch(outcome.response, ticket.created)
            else:
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
) -> CallFlow:
    """Size, take the budget, then admit and send (with retries): see :func:`call_flow`."""
    if streamed:
        return (yield from send_once(call, info, held))
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
        source = batch_file(body)
        if enqueued is None and held is not None and source:
            # the transports never saw the file: ask the Files API for its size
            found = yield Lookup(sibling(call.path, version=call.version, name=source))
            if found is not None and found[0] == 200:
                obj = parse_body(found[1])
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
        here = sized_here(call, body, settings, info, files)  # no generator when no effect
        if here is not None:
            tokens = here
        else:
            tokens = yield from size_input(call, body, settings, cache, deadline, info, files)
        cost_map = {"requests": call.requests}
        output = output_reservation(call, body, settings.default_output_tokens)
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
    if ticket is not None and (call.metered or batch_job(call)):
        # a batch job spends the budget too: its requests, enqueued tokens and batch price
        spent, budget_in = info.spend_estimated, tokens
        if not call.metered:
            budget_in = info.estimated
            if spend is not None and model:
                spent = spend.cost(model, "batch", input_tokens=budget_in)
        ask = ticket.budget_cost(budget_in, spent)
        if ask is not None:
            scope, budget_tokens, budget_cost = ask
            try:
                budget = yield Acquire(
                    "budget", scope, budget_tokens, budget_cost, None, None, True
                )
            except QuotaError as exc:
                return Outcome(None, None, info, ticket.budget_refused(exc))
    try:
        outcome = yield from attempts(
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
            yield from end_budget(budget, ticket, info)
        raise
    if budget is not None:
        if outcome.permit is not None:
            outcome.budget = budget  # settled with the call's permit, from its usage
        else:
            yield from end_budget(budget, ticket, info)
    return outcome
