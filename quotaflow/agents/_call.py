"""One request through an agent transport: its decisions and its audit record. No I/O.

The drivers in :mod:`quotaflow.agents._transport` read the request, ask :class:`AgentCall`
what to do (answer locally, take budget, send with these headers, read the create response),
and hand it what happened; :meth:`AgentCall.record` turns that into an
:class:`~quotaflow.agents.audit.AuditRecord`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quotaflow import context
from quotaflow._refusal import Refusal
from quotaflow.agents._local import BudgetExhaustedError, budget_refusal, denied_refusal
from quotaflow.agents._ownership import created_name
from quotaflow.agents.audit import AuditRecord, content_hash, key_fingerprint, path_template
from quotaflow.agents.grants import (
    GrantDecision,
    body_references,
    decide,
    decide_references,
    target_resource,
)
from quotaflow.errors import BillingError, ConfigError
from quotaflow.gemini import (
    Call,
    classify,
    estimate_tokens,
    needs_body,
    redact_text,
    requested_tier,
)
from quotaflow.gemini._canonical import canonical_request
from quotaflow.pricing import USD_MICROS

if TYPE_CHECKING:
    from quotaflow._transport_flow import CallInfo
    from quotaflow.agents.handle import AgentRuntime

__all__ = ["AgentCall", "Tap", "decision_for", "request_key"]


@dataclass
class Tap:
    """What the inner tap saw of each attempt (statuses, ``quotaId`` of 429s, whether any may
    have reached the server)."""

    statuses: list[int] = field(default_factory=list)
    quota_ids: list[str] = field(default_factory=list)
    sent: bool = False  # some attempt may have reached the server


def request_key(headers: Mapping[str, str], url: str) -> str | None:
    """The credential a request carries (header, ``?key=`` in any spelling, or bearer token)."""
    canon = canonical_request("GET", url)
    key = headers.get("x-goog-api-key") or canon.param("key") or canon.param("access_token")
    if key:
        return key
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def _parse(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body) if body else {}
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _body_model(body: Mapping[str, Any]) -> str | None:
    for k in ("model", "baseModel", "base_model"):
        v = body.get(k)
        if isinstance(v, str) and v:
            return v.removeprefix("models/")
    return None


def _inner_models(body: Mapping[str, Any], limit: int = 100_000) -> list[str]:
    """The models named by ``model`` keys anywhere inside a body (a batch's requests)."""
    out: list[str] = []
    stack: list[Any] = [body]
    while stack and limit > 0:
        node = stack.pop()
        limit -= 1
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == "model" and isinstance(v, str) and v:
                    out.append(v.removeprefix("models/"))
                elif isinstance(v, (Mapping, list)):
                    stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return out


def decision_for(
    runtime: AgentRuntime,
    agent: str | None,
    method: str,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> tuple[Call, str | None, str | None, GrantDecision]:
    """The one decision on a request, for the transports and ``check()`` alike:
    ``(call, model, resource acted on, decision)``. The call is classified in its canonical
    form; the model a create names in its body and every resource the body names are checked
    too."""
    call = classify(method, url, body, headers=headers)
    model = call.model or (_body_model(body) if call.creates else None)
    resource = target_resource(call)
    owners = runtime.ownership
    owner = owners.owner(resource) if resource else None
    decision = decide(runtime.policy, agent, call, model=model, owner=owner)
    if decision.allowed and body:
        refused = decide_references(
            runtime.policy, agent, call, body_references(body), owners.owner
        )
        if refused is not None:
            decision = refused
    if decision.allowed and body and call.area == "batch":
        # the requests inside a batch may name models of their own: each is granted too
        for inner in _inner_models(body):
            if inner != model:
                named = dataclasses.replace(call, model=inner)
                verdict = decide(runtime.policy, agent, named, owner=owner)
                if not verdict.allowed:
                    decision = verdict
                    break
    return call, model, resource, decision


class AgentCall:
    """The decisions and the record of one request.

    Args:
        runtime: the agents layer of the limiter.
        bound: the handle's agent (``None``: from the header or ``quotaflow.agent()``).
        method, url: the request line.
        pairs: ``x-quotaflow-*`` header values by suffix.
        body: the request body (``b""`` when not read, e.g. an upload).
        key: the request's credential (only its fingerprint is kept).
    """

    def __init__(
        self,
        runtime: AgentRuntime,
        bound: str | None,
        method: str,
        url: str,
        pairs: Mapping[str, str],
        body: bytes,
        key: str | None,
        audit_hash: bool,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.started = runtime.clock.now()
        ctx_prio, _, ctx_agent = context.current()
        self.agent: str | None = bound or pairs.get("agent") or ctx_agent
        parsed = _parse(body) if body and (needs_body(method, url) or method != "GET") else {}
        self.call, self.model, self.resource, self.decision = decision_for(
            runtime, self.agent, method, url, parsed, headers
        )
        self.path = path_template(url)
        spec = runtime.policy.for_agent(self.agent)
        asked = ctx_prio
        if "priority" in pairs:
            try:
                asked = context.priority_value(pairs["priority"])
            except ConfigError:
                asked = None
        self.priority: int | None = None
        if spec is not None:
            own = spec.priority_level
            self.priority = own if asked is None else min(asked, own)
        self.estimate = (
            estimate_tokens(self.call, parsed)
            if self.call.metered and self.call.input_tokens
            else 0
        )
        self.spend_estimate = self._spend_estimate(parsed)
        self.key = key_fingerprint(key)
        self.hash = content_hash(body) if audit_hash else None
        self.reason: str = self.decision.reason
        self.outcome = "denied"
        self.status: int | None = None
        self.info: CallInfo | None = None
        self.tap = Tap()
        self.error: str | None = None
        self.created: str | None = None

    def _spend_estimate(self, parsed: Mapping[str, Any]) -> int | None:
        """Micro-dollars to reserve from a dollar budget (input plus ``maxOutputTokens``)."""
        spec = self.runtime.policy.for_agent(self.agent)
        book = getattr(self.runtime.limiter, "spend", None)
        if spec is None or spec.budget is None or not spec.budget.in_dollars or book is None:
            return None
        if not self.call.metered or not self.model:
            return None
        from quotaflow._transport_flow import _output_reservation

        output = (
            0 if self.call.area == "embeddings" else _output_reservation(self.call, parsed, 8192)
        )
        micros: int | None = book.cost(
            self.model, requested_tier(parsed), input_tokens=self.estimate, output_tokens=output
        )
        return micros

    # ---- before sending -------------------------------------------------------------------

    def denied(self) -> Refusal | None:
        """The refusal (403, or 400 for a malformed request) when the policy denies the
        call, else ``None``."""
        if self.decision.allowed:
            return None
        refusal = denied_refusal(self.decision)
        self.status = refusal.status
        return refusal

    def budget_cost(self) -> tuple[str, int, dict[str, int]] | None:
        """``(agent, tokens, cost)`` to take from the agent's budget, or ``None``."""
        if not self.call.metered:
            return None
        scope = self.runtime.budget_scope(self.agent)
        if scope is None:
            return None
        cost = {"requests": self.call.requests}
        if self.spend_estimate is not None:
            cost[USD_MICROS] = self.spend_estimate
        return scope, self.estimate, cost

    def budget_refused(self, exc: Exception) -> Refusal:
        """The refusal (429) of a spent budget."""
        err = BudgetExhaustedError.from_quota(self.agent or "", exc, self.runtime.clock.now())
        self.reason = "budget"
        self.status = 429
        self.error = f"{type(err).__name__}: {redact_text(str(err))}"
        return budget_refusal(err)

    def refused(self, refusal: Refusal) -> None:
        """The quota transport refused the call here (a spent quota, a deadline that cannot
        hold): it was answered locally, with ``refusal``."""
        self.outcome = "denied"
        self.status = refusal.status
        err = refusal.error
        self.error = f"{type(err).__name__}: {redact_text(str(err))}"[:500]

    def headers(self) -> dict[str, str]:
        """``x-quotaflow-*`` headers for the quota transport underneath."""
        out: dict[str, str] = {}
        if self.agent is not None:
            out["x-quotaflow-agent"] = self.agent
        if self.priority is not None:
            out["x-quotaflow-priority"] = str(self.priority)
        return out

    # ---- after sending --------------------------------------------------------------------

    def responded(self, status: int, info: Any) -> None:
        """The quota transport answered ``status``; ``info`` is its ``CallInfo`` (or None)."""
        self.outcome = "ok" if status < 400 else "http_error"
        self.status = status
        self.info = info
        if status < 300 and self.call.action == "delete" and self.resource:
            self.runtime.ownership.forget(self.resource)

    def wants_body(self) -> bool:
        """Whether the response must be read to learn the name of a created resource."""
        return (
            self.agent is not None
            and self.status is not None
            and self.status < 300
            and (self.call.creates or self.call.action == "upload")
        )

    def body(self, decoded: bytes) -> None:
        """The create response's body: record the new resource under the agent."""
        name = created_name(_parse(decoded))
        if name and self.agent is not None:
            self.created = name
            self.runtime.ownership.record(name, self.agent)

    def failed(self, exc: BaseException) -> None:
        """The call raised ``exc`` (a quota error, a network error, a cancellation)."""
        self.outcome = "error"
        self.error = f"{type(exc).__name__}: {redact_text(str(exc))}"[:500]
        if isinstance(exc, BillingError):
            self.reason = "billing"
            self.status = exc.status

    def settle_amounts(self) -> dict[str, int]:
        """What to settle the budget permit with (the usage, else the estimate)."""
        usage = getattr(self.info, "usage", None)
        out: dict[str, int] = {}
        if usage is not None and (usage.input_tokens or usage.total_tokens):
            out["input_tokens"] = int(usage.input_tokens)
        spent = getattr(self.info, "spend", None)
        if self.spend_estimate is not None and isinstance(spent, int):
            out[USD_MICROS] = spent
        return out

    def record(self) -> AuditRecord:
        """The audit record of the call as it stands."""
        info = self.info
        usage = getattr(info, "usage", None)
        attempts = max(getattr(info, "attempts", 0), len(self.tap.statuses))
        waited_at: int | None = getattr(info, "priority", None)
        return AuditRecord(
            time=self.started,
            agent=self.agent,
            method=self.call.action,
            http_method=self.call.method,
            path=self.path,
            area=self.call.area,
            access=self.call.access,
            model=self.model,
            decision="allowed" if self.decision.allowed and self.reason != "budget" else "denied",
            reason=self.reason,
            outcome=self.outcome,
            status=self.status,
            wait=round(float(getattr(info, "waited", 0.0)), 6),
            tokens_estimated=int(getattr(info, "estimated", 0) or self.estimate),
            tokens_actual=usage.input_tokens if usage is not None else None,
            output_tokens=(usage.output_tokens + usage.thoughts_tokens) if usage else None,
            retries=max(0, attempts - 1),
            quota_id=self.tap.quota_ids[-1] if self.tap.quota_ids else None,
            priority=self.priority if waited_at is None else waited_at,
            duration=round(max(0.0, self.runtime.clock.now() - self.started), 6),
            key=self.key,
            content_hash=self.hash,
            resource=self.created or self.resource,
            error=self.error,
            service_tier=getattr(info, "service_tier", None),
            spend_micros=getattr(info, "spend", None),
            **shadow_fields(getattr(info, "shadow", ())),
        )


def shadow_fields(decisions: Any) -> dict[str, Any]:
    """``would_wait`` and ``would_refuse`` of an audit record from shadow decisions."""
    waits = [d.would_wait for d in decisions if d.outcome == "wait" and d.would_wait]
    refused = [d.reason for d in decisions if d.outcome == "refuse"]
    return {
        "would_wait": round(max(waits), 6) if waits else None,
        "would_refuse": refused[0] if refused else None,
    }
