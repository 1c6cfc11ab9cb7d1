"""A 429 fed back into the limiter: figures learned, dimensions paused, the day quota marked
spent, the spend cap waited for; and how long to wait before the retry."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

from quotaflow.clock import Clock
from quotaflow.errors import (
    QuotaExhaustedError,
)
from quotaflow.flow.effects import Effect, Exhaust, Learn, Pause
from quotaflow.flow.settings import RANDOM, Settings, log
from quotaflow.flow.sizing import dims_of
from quotaflow.gemini import (
    ApiError,
    Call,
    QuotaViolation,
)
from quotaflow.limits import Limit, pacific_days
from quotaflow.quotas.pricing import SPEND_SCOPE, SpendBook


def _plain(name: str) -> str:
    return name.removeprefix("models/")


def learn_from(
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


def spend_violations(err: ApiError) -> list[Any]:
    return [v for v in err.violations if "spend" in f"{v.quota_id}{v.quota_metric}".lower()]


def on_spend_429(
    err: ApiError, spend: SpendBook, settings: Settings, clock: Clock
) -> Generator[Effect, Any, float]:
    """A 429 of the spend cap: pause the project's spend scope until the server's retry time
    (the retry waits for it). The cap itself stays as configured: set ``Spend(cap_usd=...)`` to
    your account's figure."""
    now = clock.now()
    delay = err.retry_delay if err.retry_delay is not None else spend.period
    until = now + delay * (1.0 + settings.jitter * RANDOM.random())
    yield Pause(SPEND_SCOPE, "spend", until)
    log.info("429 on the spend cap (%s); spend paused for %.3fs", err.violations[0].quota_id, delay)
    return 0.0


def on_429(
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
    adapted = (yield from learn_from(model, err, warned)) if model else False
    dims = dims_of(quota, model) if model else {}
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
            until = now + delay * (1.0 + settings.jitter * RANDOM.random())
            yield Pause(model, "rpm", until)
            log.info("%s: 429 without a quota violation; paused %.2fs", model, until - now)
            return 0.0
        log.info("%s: 429 without a quota violation; backing off %.2fs", model or call.path, delay)
        return delay
    until = now + delay * (1.0 + settings.jitter * RANDOM.random())
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
