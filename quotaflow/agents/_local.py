"""Answers given without sending: Gemini-shaped 403 and 429 bodies, and the agents' errors.

Pure: bodies are bytes, the drivers wrap them in their package's ``Response``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from quotaflow.agents.grants import GrantDecision
from quotaflow.errors import QuotaExhaustedError
from quotaflow.gemini import Call
from quotaflow.limits import PACIFIC

__all__ = ["BudgetExhaustedError", "LocalAnswer", "budget_answer", "denied_answer"]

_BUDGET_NAMES = {"rpd": "requests_per_day", "tpd": "tokens_per_day"}
_QUOTA_IDS = {"requests_per_day": "AgentRequestsPerDay", "tokens_per_day": "AgentTokensPerDay"}


class BudgetExhaustedError(QuotaExhaustedError):
    """Raised at once (by an agent's ``acquire``; the transports answer 429 instead) when an
    agent's daily budget is spent.

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


@dataclass(frozen=True)
class LocalAnswer:
    """A response made here: status, headers and a JSON body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _answer(call: Call, status: int, error: dict[str, Any]) -> LocalAnswer:
    payload: Any = {"error": error}
    if call.surface == "openai":  # the OpenAI surface wraps the error object in a list
        payload = [payload]
    body = json.dumps(payload).encode()
    return LocalAnswer(status, (("content-type", "application/json; charset=UTF-8"),), body)


def denied_answer(call: Call, decision: GrantDecision) -> LocalAnswer:
    """A 403 ``PERMISSION_DENIED`` shaped like Gemini's, naming agent, method, area, access
    needed and grant held; a malformed request (see :attr:`quotaflow.gemini.Call.problem`)
    gets a 400 ``INVALID_ARGUMENT`` instead."""
    code, status = (400, "INVALID_ARGUMENT") if decision.reason == "malformed" else (403, "")
    return _answer(
        call,
        code,
        {
            "code": code,
            "message": decision.message,
            "status": status or "PERMISSION_DENIED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "QUOTAFLOW_POLICY_DENIED",
                    "domain": "quotaflow",
                    "metadata": {
                        "agent": decision.agent or "",
                        "method": decision.method,
                        "area": decision.area,
                        "needed": decision.needed,
                        "grant": decision.grant,
                        "reason": decision.reason,
                    },
                }
            ],
        },
    )


def budget_answer(call: Call, error: BudgetExhaustedError) -> LocalAnswer:
    """A 429 ``RESOURCE_EXHAUSTED`` shaped like Gemini's per-day quota error, naming the agent,
    the budget and when it resets."""
    delay = f"{max(0, round(error.retry_after or 0.0))}s"
    return _answer(
        call,
        429,
        {
            "code": 429,
            "message": str(error),
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": f"quotaflow/agent_budget/{error.budget}",
                            "quotaId": _QUOTA_IDS.get(error.budget, "AgentBudgetPerDay"),
                            "quotaDimensions": {"agent": error.agent},
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        },
    )
