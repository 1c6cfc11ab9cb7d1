"""Agents: grant each agent exactly the Gemini API access it needs, share the quota between
agents, and check and log every call.

* :mod:`~quotaflow.agents.policy`: who may call what (pydantic; TOML or Python objects);
* :mod:`~quotaflow.agents.grants`: the decision for one call (pure);
* :mod:`~quotaflow.agents.layer`: :class:`Agents` (the layer of one limiter);
* :mod:`~quotaflow.agents.handle`: ``agents.agent(name)``: quota transports that make the
  agent's calls (local 403 and 429 answers), google-genai options, ``acquire``;
* :mod:`~quotaflow.agents.audit`: one record per call; JSON lines, logging, callback sinks.

Example:
    >>> import quotaflow
    >>> from quotaflow.agents import Agents, Policy
    >>> policy = Policy.from_dict(
    ...     {"agents": {"researcher": {"grants": {"content": {"access": "write"}}}}}
    ... )
    >>> agents = Agents(quotaflow.Limiter(tier="free"), policy)
    >>> handle = agents.agent("researcher")
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
from quotaflow.agents.layer import AgentGate, Agents
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
    "AgentGate",
    "AgentHandle",
    "AgentPermit",
    "AgentPolicy",
    "Agents",
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
