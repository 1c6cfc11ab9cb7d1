"""What a call takes before it is sent (its input tokens, output reservation, permits) and
what its permits settle with after."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Literal

from quotaflow.errors import (
    ConfigError,
    QuotaError,
    UnknownModelError,
)
from quotaflow.flow.effects import (
    Acquire,
    AcquireBoth,
    CallInfo,
    Count,
    Effect,
    Hold,
    Release,
    Settle,
)
from quotaflow.flow.settings import COUNT_MODEL, Settings
from quotaflow.flow.spend import Paired, settle_spend
from quotaflow.gemini import (
    Call,
    CountCache,
    FileMeta,
    Usage,
    count_tokens_body,
    count_tokens_path,
    estimate_tokens,
    read_count,
)
from quotaflow.gemini._usage import _loads
from quotaflow.limits import Limit
from quotaflow.observe.shadow import decisions_of
from quotaflow.quotas.pricing import SPEND_SCOPE, USD_MICROS, SpendBook


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


def output_reservation(call: Call, body: Mapping[str, Any], default: int) -> int:
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


def dims_of(quota: Callable[[str], Sequence[Limit]], model: str) -> dict[str, Limit]:
    try:
        return {lim.name: lim for lim in quota(model)}
    except UnknownModelError:
        return {}


# ---- the flow -----------------------------------------------------------------------------


def sized_here(
    call: Call,
    body: Mapping[str, Any],
    settings: Settings,
    info: CallInfo,
    files: Mapping[str, FileMeta] | None = None,
) -> int | None:
    """The input tokens of a call sized without an effect (no input tokens, a sizing
    function, the estimate), or ``None`` for a call ``countTokens`` sizes
    (:func:`size_input`)."""
    if not call.input_tokens:
        return 0
    sizer = settings.sizer(call.model)
    if sizer == "estimate":
        info.sized_by = "estimate"
        return estimate_tokens(call, body, files)
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
        return None
    info.sized_by = "estimate"
    return estimate_tokens(call, body, files)


def size_input(
    call: Call,
    body: Mapping[str, Any],
    settings: Settings,
    cache: CountCache,
    deadline: float | None,
    info: CallInfo,
    files: Mapping[str, FileMeta] | None = None,
) -> Generator[Effect, Any, int]:
    """The input tokens of a call: :func:`sized_here`, else counted (``countTokens``, its
    cache), else the estimate."""
    here = sized_here(call, body, settings, info, files)
    if here is not None:
        return here
    # countTokens sizes it (its cache first)
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


def admit(
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
        ask = Acquire(which, target, tokens, cost, prio, deadline, agent=info.agent)
        if spend_cost is None:
            permit = yield ask
            info.shadow.extend(decisions_of(permit))
        else:  # both or neither (the driver may ask both at once)
            spend = Acquire("model", SPEND_SCOPE, 0, spend_cost, prio, deadline, agent=info.agent)
            permit, for_spend, waited = yield AcquireBoth(ask, spend)
            info.shadow.extend(decisions_of(permit))
            info.shadow.extend(decisions_of(for_spend))
            permit = Paired(permit, for_spend, waited)
        info.waited += permit.waited
        info.priority = permit.priority
    return permit


def end_budget(budget: Any, ticket: Any, info: CallInfo) -> Generator[Effect, Any, None]:
    """Settle the budget permit of a call that may have reached the server (it keeps its
    request), or give it back if no attempt left."""
    if info.sent:
        budget.mark_sent()
        yield Settle(budget, ticket.budget_amounts(info))
    else:
        yield Release(budget)


def parse_body(content: bytes) -> dict[str, Any]:
    if not content:
        return {}
    try:
        obj = _loads(content)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}
