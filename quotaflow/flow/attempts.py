"""One call's attempts: admit, send, feed back and retry, until an answer for the caller; and
how a transport error tells whether the request left."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from quotaflow.clock import Clock
from quotaflow.errors import (
    BillingError,
    QuotaError,
    QuotaExhaustedError,
)
from quotaflow.flow.batch import batch_created, observe, observes
from quotaflow.flow.effects import (
    CallFlow,
    CallInfo,
    Outcome,
    Read,
    Release,
    Send,
    Settle,
    Sleep,
)
from quotaflow.flow.feedback import on_429, on_spend_429, spend_violations
from quotaflow.flow.held import BatchHold, Held
from quotaflow.flow.refusal import quota_refusal
from quotaflow.flow.settings import RETRY_STATUSES, SENT_ERRORS, UNSENT_ERRORS, Settings, log
from quotaflow.flow.sizing import admit, parse_body
from quotaflow.flow.spend import Paired
from quotaflow.gemini import (
    ApiError,
    Call,
    FileMeta,
    parse_error,
    redact_text,
    redact_url,
    served_tier,
)
from quotaflow.limits import Limit
from quotaflow.observe import metrics
from quotaflow.quotas.book import SERVED
from quotaflow.quotas.pricing import USD_MICROS, SpendBook


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


def describe_error(exc: BaseException) -> str:
    text = redact_text(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def attempts(
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
) -> CallFlow:
    """Admit, send, feed back and retry, until an answer for the caller."""
    # 408/5xx and connection failures are retried for calls that create nothing (generation,
    # embedding, reads, deletes: see Call.creates) unless retry_writes extends it to creates
    retry_transient = call.idempotent or settings.retry_writes
    n429 = n_transient = 0
    while True:
        permit: Any = None
        try:
            permit = yield from admit(
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
                describe_error(exc),
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
            yield from batch_created(raw, permit, held, model, info.estimated, clock, settings)
            return Outcome(fresh, None, info)
        if status < 400 and permit is not None:
            return Outcome(response, permit, info)
        if permit is None and held is not None and status < 500 and observes(call, held):
            raw, response = yield Read(response)
            yield from observe(call, status, raw, held)
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
            if spend is not None and spend.cap_usd is not None and spend_violations(err):
                delay = yield from on_spend_429(err, spend, settings, clock)
            else:
                try:
                    delay = yield from on_429(call, err, settings, quota, clock, warned)
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


def send_once(call: Call, info: CallInfo, held: Held | None) -> CallFlow:
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
        obj = parse_body(raw)
        f = obj.get("file")
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            held.files.put(f["name"], FileMeta.from_json(f))
    return Outcome(response, None, info)
