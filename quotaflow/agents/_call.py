"""One request of an agent: its decisions and its audit record. No I/O.

:class:`AgentCall` is the agents layer's ticket in the call flow
(:class:`~quotaflow.flow.policy.CallTicket`): the flow asks it whether the call is denied,
what to take from the budget and whether to read a create's answer, and hands it the finished
call, which :meth:`AgentCall.record` turns into an :class:`~quotaflow.agents.audit.AuditRecord`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quotaflow.agents._local import BudgetExhaustedError, budget_refusal, denied_refusal
from quotaflow.agents._ownership import created_interaction, created_name
from quotaflow.agents.audit import AuditRecord, content_hash, key_fingerprint, path_template
from quotaflow.agents.grants import (
    GrantDecision,
    body_references,
    decide,
    decide_references,
    file_batch_decision,
    may_reference,
    target_resource,
)
from quotaflow.errors import BillingError
from quotaflow.flow.batch import batch_job, batch_requests
from quotaflow.flow.refusal import Refusal
from quotaflow.gemini import Call, estimate_tokens, redact_text
from quotaflow.gemini._canonical import canonical_request
from quotaflow.quotas.pricing import USD_MICROS

if TYPE_CHECKING:
    from quotaflow.agents.audit import AuditLog
    from quotaflow.agents.layer import Agents
    from quotaflow.flow import CallInfo

__all__ = ["AgentCall", "decision_for", "request_key"]


def request_key(headers: Mapping[str, str], url: str) -> str | None:
    """The credential a request carries (header, ``?key=`` in any spelling, or bearer token)."""
    canon = canonical_request("GET", url)
    key = _header(headers, "x-goog-api-key") or canon.param("key") or canon.param("access_token")
    if key:
        return key
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers.get(name)`` (``name`` in lower case); httpx's and httpx2's headers are read
    from their raw bytes when the value is ASCII, without decoding every header first (which
    working out their encoding does)."""
    raw = getattr(headers, "raw", None)
    if isinstance(raw, list):
        key = name.encode("ascii")
        found: list[bytes] = [v for k, v in raw if k.lower() == key]
        if not found:
            return None
        if len(found) == 1 and found[0].isascii():
            return found[0].decode("ascii")
    value: str | None = headers.get(name)
    return value


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


_DECIDED_MAX = 1024
# the calls whose answer names a resource they made, and those that delete the one they name
_MADE = frozenset({"upload", "interactions.create"})
_DELETES = frozenset({"delete", "interactions.delete"})


def decision_for(
    runtime: Agents,
    agent: str | None,
    call: Call,
    body: Mapping[str, Any],
    content: bytes | None = None,
) -> tuple[str | None, str | None, GrantDecision]:
    """The one decision on a classified request (its canonical form), for the transports and
    ``check()`` alike: ``(model, resource acted on, decision)``. The model a create names in
    its body and every resource the body names are checked too (``content``, the JSON text
    ``body`` was parsed from, lets a body that names none skip the walk)."""
    model = call.model or (_body_model(body) if call.creates else None)
    resource = target_resource(call)
    owners = runtime.ownership
    owner = owners.owner(resource) if resource else None
    # the grant decision is a function of the (immutable) policy and these: kept per layer
    decided = runtime.decided
    key = (agent, call, model, owner)
    decision = decided.get(key)
    if decision is None:
        decision = decide(runtime.policy, agent, call, model=model, owner=owner)
        if len(decided) >= _DECIDED_MAX:
            decided.clear()
        decided[key] = decision
    if decision.allowed and body and (content is None or may_reference(content)):
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
    if decision.allowed and body and call.area == "batch" and call.creates:
        decision = file_batch_decision(runtime.policy, agent, call, body) or decision
    return model, resource, decision


class AgentCall:
    """The decisions and the record of one request: the agents layer's ticket of the call
    flow (:class:`~quotaflow.flow.policy.CallTicket`).

    Args:
        runtime: the agents layer.
        bound: the handle's agent (``None``: the request's, from ``x-quotaflow-agent`` or
            ``quotaflow.agent()``).
        call: the flow's classification of the request.
        url: the request URL.
        body: its parsed JSON body (``{}``: none, or not read).
        content: its raw body (``b""`` when not read, e.g. an upload).
        headers: its headers (only the credential's fingerprint is kept).
        asked_agent, asked_priority: what the request asked.
        audit: where the record goes.
    """

    def __init__(
        self,
        runtime: Agents,
        bound: str | None,
        call: Call,
        url: str,
        body: Mapping[str, Any],
        content: bytes,
        headers: Mapping[str, str],
        asked_agent: str | None,
        asked_priority: int | None,
        audit: AuditLog,
    ) -> None:
        self.runtime = runtime
        self.audit = audit
        self.started = runtime.clock.now()
        self._agent: str | None = bound or asked_agent
        self.call = call
        self._body = body
        self.model, self.resource, self.decision = decision_for(
            runtime, self._agent, call, body, content
        )
        self.path = path_template(url)
        spec = runtime.policy.for_agent(self._agent)
        self._priority: int | None = None
        if spec is not None:
            own = spec.priority_level
            self._priority = own if asked_priority is None else min(asked_priority, own)
        self.spend_estimate: int | None = None
        self.key = key_fingerprint(request_key(headers, url))
        self.hash = content_hash(content) if audit.content_hash else None
        self.reason: str = self.decision.reason
        self.outcome = "denied"
        self.status: int | None = None
        self.error: str | None = None
        self.created_name: str | None = None
        self._refusal = None if self.decision.allowed else denied_refusal(self.decision)
        if self._refusal is not None:
            self.status = self._refusal.status

    @property
    def agent(self) -> str | None:
        """The agent the call is made for."""
        return self._agent

    @property
    def priority(self) -> int | None:
        """The priority it waits at: the agent's own, or lower if the request asks."""
        return self._priority

    @property
    def refusal(self) -> Refusal | None:
        """The denial (403, or 400 for a malformed request), if the policy denies it."""
        return self._refusal

    # ---- before sending ------------------------------------------------------------------

    def _dollar_budget(self) -> bool:
        spec = self.runtime.policy.for_agent(self._agent)
        return spec is not None and spec.budget is not None and spec.budget.in_dollars

    def budget_cost(
        self, tokens: int, spend_micros: int | None
    ) -> tuple[str, int, dict[str, int]] | None:
        """``(scope, tokens, cost)`` to take from the agent's budget, or ``None``."""
        requests = self.call.requests
        if not self.call.metered:
            if not batch_job(self.call):
                return None
            requests = batch_requests(self._body)  # a batch job: each of its requests
        scope = self.runtime.budget_scope(self._agent)
        if scope is None:
            return None
        cost = {"requests": requests}
        if spend_micros is not None and self._dollar_budget():
            self.spend_estimate = spend_micros
            cost[USD_MICROS] = spend_micros
        return scope, tokens, cost

    def budget_refused(self, exc: Exception) -> Refusal:
        """The refusal (429) of a spent budget."""
        err = BudgetExhaustedError.from_quota(self._agent or "", exc, self.runtime.clock.now())
        self.reason = "budget"
        self.error = f"{type(err).__name__}: {redact_text(str(err))}"
        return budget_refusal(err)

    # ---- after sending --------------------------------------------------------------------

    def responded(self, status: int) -> bool:
        """The final status; returns whether the body must be read (a create's answer names
        the new resource, recorded under the agent; every interaction is one)."""
        self.outcome = "ok" if status < 400 else "http_error"
        self.status = status
        action = self.call.action
        if status < 300 and action in _DELETES and self.resource:
            self.runtime.ownership.forget(self.resource)
        return self._agent is not None and status < 300 and (self.call.creates or action in _MADE)

    def created(self, decoded: bytes) -> bool:
        """The create response's body, or one event of a streamed create: record the new
        resource under the agent. Returns whether it was found (no more events needed)."""
        obj = _parse(decoded)
        interaction = self.call.action == "interactions.create"
        name = created_interaction(obj) if interaction else created_name(obj)
        if name and self._agent is not None:
            self.created_name = name
            self.runtime.ownership.record(name, self._agent)
        return name is not None

    def budget_amounts(self, info: CallInfo) -> dict[str, int]:
        """What to settle the budget permit with (the usage, else the estimate)."""
        usage = info.usage
        out: dict[str, int] = {}
        if usage is not None and (usage.input_tokens or usage.total_tokens):
            out["input_tokens"] = int(usage.input_tokens)
        if self.spend_estimate is not None and isinstance(info.spend, int):
            out[USD_MICROS] = info.spend
        return out

    def finish(
        self,
        info: CallInfo,
        *,
        refusal: Refusal | None = None,
        error: BaseException | None = None,
        raised: bool = False,
    ) -> None:
        """The call is over: write its audit record."""
        if refusal is not None:
            self.outcome = "denied"
            self.status = None if raised else refusal.status
            if refusal is not self._refusal and self.reason != "budget":
                err = refusal.error
                self.error = f"{type(err).__name__}: {redact_text(str(err))}"[:500]
        elif error is not None:
            self.outcome = "error"
            self.error = f"{type(error).__name__}: {redact_text(str(error))}"[:500]
            if isinstance(error, BillingError):
                self.reason = "billing"
                self.status = error.status
        elif info.statuses and self.status is None:
            self.responded(info.statuses[-1])
        self.audit.emit(self.record(info))

    def record(self, info: CallInfo | None = None) -> AuditRecord:
        """The audit record of the call as it stands."""
        usage = info.usage if info is not None else None
        attempts = info.attempts if info is not None else 0
        waited_at = info.priority if info is not None else None
        estimated = info.estimated if info is not None else 0
        quota_ids = info.quota_ids if info is not None else []
        if not estimated and self.call.metered and self.call.input_tokens:
            estimated = estimate_tokens(self.call, self._body)  # a call denied before sizing
        shadow = info.shadow if info is not None else ()
        fields = {
            "time": self.started,
            "agent": self._agent,
            "method": self.call.action,
            "http_method": self.call.method,
            "path": self.path,
            "area": self.call.area,
            "access": self.call.access,
            "model": self.model,
            "decision": "allowed"
            if self.decision.allowed and self.reason != "budget"
            else "denied",
            "reason": self.reason,
            "outcome": self.outcome,
            "status": self.status,
            "wait": round(float(info.waited if info is not None else 0.0), 6),
            "tokens_estimated": int(estimated or 0),
            "tokens_actual": usage.input_tokens if usage is not None else None,
            "output_tokens": (usage.output_tokens + usage.thoughts_tokens) if usage else None,
            "retries": max(0, attempts - 1),
            "quota_id": quota_ids[-1] if quota_ids else None,
            "priority": self._priority if waited_at is None else waited_at,
            "duration": round(max(0.0, self.runtime.clock.now() - self.started), 6),
            "key": self.key,
            "content_hash": self.hash,
            "resource": self.created_name or self.resource,
            "error": self.error,
            "service_tier": info.service_tier if info is not None else None,
            "spend_micros": info.spend if info is not None else None,
        }
        fields.update(shadow_fields(shadow) if shadow else _NO_SHADOW)
        return AuditRecord.of(fields)


_NO_SHADOW: dict[str, Any] = {"would_wait": None, "would_refuse": None}


def shadow_fields(decisions: Any) -> dict[str, Any]:
    """``would_wait`` and ``would_refuse`` of an audit record from shadow decisions."""
    waits = [d.would_wait for d in decisions if d.outcome == "wait" and d.would_wait]
    refused = [d.reason for d in decisions if d.outcome == "refuse"]
    return {
        "would_wait": round(max(waits), 6) if waits else None,
        "would_refuse": refused[0] if refused else None,
    }
