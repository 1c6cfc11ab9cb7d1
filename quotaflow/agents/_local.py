"""The agents' refusals (a policy denial, a spent budget) and their typed errors; their
answers follow the one rule of :mod:`quotaflow.flow.refusal`."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from quotaflow.agents.grants import GrantDecision
from quotaflow.errors import QuotaExhaustedError, QuotaflowError
from quotaflow.flow.refusal import Refusal
from quotaflow.limits import PACIFIC

__all__ = ["BudgetExhaustedError", "PolicyDeniedError", "budget_refusal", "denied_refusal"]

_BUDGET_NAMES = {"rpd": "requests_per_day", "tpd": "tokens_per_day"}
_QUOTA_IDS = {"requests_per_day": "AgentRequestsPerDay", "tokens_per_day": "AgentTokensPerDay"}


class BudgetExhaustedError(QuotaExhaustedError):
    """Raised at once by an agent's ``acquire`` (and by its transports made with
    ``local_errors="raise"``; by default they answer a Gemini-shaped 429) when an agent's
    daily budget is spent.

    Attributes:
        agent: the agent.
        budget: ``requests_per_day`` or ``tokens_per_day``.
        resets_at: the next midnight Pacific time (epoch seconds); ``retry_after`` the seconds
            until then.
    """

    def __init__(self, message: str, *, agent: str, budget: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.agent = agent
        self.budget = budget

    @classmethod
    def from_quota(cls, agent: str, exc: Exception, now: float) -> BudgetExhaustedError:
        """The budget error for the limiter error ``exc`` raised on ``agent``'s budget scope."""
        dim = str(getattr(exc, "dimension", "") or "")
        budget = _BUDGET_NAMES.get(dim, dim or "budget")
        resets = getattr(exc, "resets_at", None)
        if resets is None:
            from quotaflow.limits import pacific_days

            resets = pacific_days().window_end(now)
        when = datetime.fromtimestamp(resets, ZoneInfo(PACIFIC)).isoformat()
        wait = max(0.0, resets - now)
        return cls(
            f"agent {agent!r}: its {budget} budget is spent; it resets at midnight Pacific time "
            f"({when}, in {wait:.0f}s). Raise the budget in the policy or wait for the reset.",
            agent=agent,
            budget=budget,
            model=f"budget@{agent}",
            dimension=dim,
            retry_after=wait,
            resets_at=resets,
        )


class PolicyDeniedError(QuotaflowError, PermissionError):
    """Raised by an agent transport made with ``local_errors="raise"`` when the policy denies
    a call (``status`` 403), or the request is malformed (400); by default the transports
    answer a Gemini-shaped error response instead.

    Attributes:
        agent, method, area, needed, grant: what was asked, and the grant the agent holds.
        reason: why (``no_grant``, ``read_only``, ``not_owner``, ``malformed``, ...).
        status: the HTTP status of the local answer (403, or 400 for a malformed request).
    """

    def __init__(self, message: str, *, decision: GrantDecision, status: int) -> None:
        super().__init__(message)
        self.agent = decision.agent
        self.method = decision.method
        self.area = decision.area
        self.needed = decision.needed
        self.grant = decision.grant
        self.reason = decision.reason
        self.status = status


def denied_refusal(decision: GrantDecision) -> Refusal:
    """The refusal of a call the policy denies: a 403 ``PERMISSION_DENIED`` naming agent,
    method, area, access needed and grant held; a malformed request (see
    :attr:`quotaflow.gemini.Call.problem`) gets a 400 ``INVALID_ARGUMENT`` instead."""
    malformed = decision.reason == "malformed"
    status = 400 if malformed else 403
    return Refusal(
        status=status,
        code="QUOTAFLOW_INVALID_REQUEST" if malformed else "QUOTAFLOW_POLICY_DENIED",
        reason=decision.reason,
        message=decision.message,
        error=PolicyDeniedError(decision.message, decision=decision, status=status),
        metadata=(
            ("agent", decision.agent or ""),
            ("method", decision.method),
            ("area", decision.area),
            ("needed", decision.needed),
            ("grant", decision.grant),
        ),
    )


def budget_refusal(error: BudgetExhaustedError) -> Refusal:
    """The refusal of a call whose agent's budget is spent: a 429 ``RESOURCE_EXHAUSTED``
    shaped like Gemini's per-day quota error, naming the agent, the budget and when it
    resets."""
    return Refusal(
        status=429,
        code="QUOTAFLOW_BUDGET_EXHAUSTED",
        reason="budget",
        message=str(error),
        error=error,
        dimension=error.dimension,
        retry_after=error.retry_after,
        resets_at=error.resets_at,
        metadata=(("agent", error.agent), ("budget", error.budget)),
        quota=(
            f"quotaflow/agent_budget/{error.budget}",
            _QUOTA_IDS.get(error.budget, "AgentBudgetPerDay"),
            (("agent", error.agent),),
        ),
    )
