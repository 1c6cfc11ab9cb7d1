"""Where the gateway meets the agents layer: the limiter with the policy, an agent's handle,
its transport, and the audit log to flush. Everything the gateway asks of that layer goes
through these few functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from quotaflow.agents.handle import AgentHandle
from quotaflow.agents.policy import Policy
from quotaflow.agents.transports import AgentTransport
from quotaflow.limiter import Limiter

__all__ = ["agent", "agent_transport", "flush_audit", "make_limiter"]


def make_limiter(policy: Policy, options: Mapping[str, Any]) -> Limiter:
    """The gateway's limiter, holding the agents' policy."""
    return Limiter(policy=policy, **dict(options))


def agent(limiter: Limiter, name: str) -> AgentHandle:
    """The handle of agent ``name`` (its acquire, budget and audit log)."""
    return limiter.agent(name)


def agent_transport(
    limiter: Limiter, name: str, inner: httpx.AsyncBaseTransport, options: Mapping[str, Any]
) -> AgentTransport:
    """Agent ``name``'s transport over ``inner`` (made once per agent and kept)."""
    return limiter.agent(name).transport(inner, **dict(options))


def flush_audit(limiter: Limiter) -> None:
    """Write out the audit records still queued."""
    runtime = getattr(limiter, "_agents", None)
    if runtime is not None and runtime._audit is not None:
        runtime._audit.flush()
