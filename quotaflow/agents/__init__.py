"""Agents: grant each agent exactly the Gemini API access it needs, share the quota between
agents, and check and log every call.

* :mod:`~quotaflow.agents.policy`: who may call what (pydantic; TOML or Python objects);
* :mod:`~quotaflow.agents.grants`: the decision for one call (pure);
* :mod:`~quotaflow.agents.handle`: ``limiter.agent(name)``: transports, google-genai options,
  ``acquire``;
* :mod:`~quotaflow.agents.transports`: the httpx/httpx2 transports (local 403 and 429 answers);
* :mod:`~quotaflow.agents.audit`: one record per call; JSON lines, logging, callback sinks.

Example:
    >>> import quotaflow
    >>> from quotaflow.agents import Policy
    >>> policy = Policy.from_dict(
    ...     {"agents": {"researcher": {"grants": {"content": {"access": "write"}}}}}
    ... )
    >>> handle = quotaflow.Limiter(tier="free", policy=policy).agent("researcher")
"""

from __future__ import annotations

from quotaflow.agents._local import BudgetExhaustedError, PolicyDeniedError
from quotaflow.agents._ownership import Ownership
from quotaflow.agents.audit import (
    AuditLog,
    AuditRecord,
    CallbackSink,
    JsonLinesSink,
    LoggingSink,
    Sink,
    key_fingerprint,
)
from quotaflow.agents.grants import GrantDecision, decide
from quotaflow.agents.handle import AgentHandle, AgentPermit
from quotaflow.agents.policy import (
    AREAS,
    METHODS,
    AgentPolicy,
    AreaGrant,
    AuditSettings,
    Budget,
    Policy,
    PolicyError,
    ShareSpec,
    load_policy,
)

__all__ = [
    "AREAS",
    "METHODS",
    "AgentHandle",
    "AgentPermit",
    "AgentPolicy",
    "AreaGrant",
    "AuditLog",
    "AuditRecord",
    "AuditSettings",
    "Budget",
    "BudgetExhaustedError",
    "CallbackSink",
    "GrantDecision",
    "JsonLinesSink",
    "LoggingSink",
    "Ownership",
    "Policy",
    "PolicyDeniedError",
    "PolicyError",
    "ShareSpec",
    "Sink",
    "decide",
    "key_fingerprint",
    "load_policy",
]
