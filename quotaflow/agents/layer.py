"""The agents layer of one limiter (:class:`Agents`: policy, owners, budgets, audit log) and
the policy stage its handles' transports run (:class:`AgentGate`)."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quotaflow.agents._call import AgentCall
from quotaflow.agents._ownership import Ownership
from quotaflow.agents.audit import AuditLog, JsonLinesSink, LoggingSink, Sink
from quotaflow.agents.grants import GrantDecision
from quotaflow.agents.policy import Policy, load_policy
from quotaflow.errors import ConfigError
from quotaflow.gemini import Call
from quotaflow.limiter import Limiter
from quotaflow.quotas.book import QuotaBook
from quotaflow.quotas.shares import DEFAULT_SHARE
from quotaflow.sync import SyncLimiter

if TYPE_CHECKING:
    from quotaflow.agents.handle import AgentHandle

__all__ = ["AgentGate", "Agents"]

_LOCK = threading.Lock()


class Agents:
    """The agents layer of one limiter: the policy, resource owners, budgets, the default
    audit log, and a handle per agent (:meth:`agent`).

    Budgets are limits of a scope per agent in the limiter's backend, so they hold across
    processes that share a Redis backend. Their scopes live in a key space of their own
    (``budget:<project>/<agent>``) that no model name reaches. An agent the policy covers with
    ``[default]`` gets the default's budget as its own. The policy's shares join the
    limiter's (:meth:`quotaflow.Limiter.add_shares`). Resource owners are kept in memory.

    Args:
        limiter: the limiter whose quotas the agents share.
        policy: a :class:`~quotaflow.agents.Policy` or the path of a policy TOML file.

    Example:
        >>> import quotaflow
        >>> from quotaflow.agents import Agents, Policy
        >>> policy = Policy.from_dict({"agents": {"indexer": {"grants": {"embeddings": "write"}}}})
        >>> agents = Agents(quotaflow.Limiter(tier="tier1"), policy)
        >>> indexer = agents.agent("indexer")
    """

    def __init__(self, limiter: Limiter, policy: Policy | str | os.PathLike[str]) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigError(
                f"limiter={limiter!r}: give the quotaflow.Limiter whose quotas the agents share"
            )
        if not isinstance(policy, (Policy, str, os.PathLike)):
            raise ConfigError(
                f"policy={policy!r}: give a quotaflow.agents.Policy or the path of a policy "
                "TOML file"
            )
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        limiter.add_shares(self.policy.shares())
        self.limiter = limiter
        self.clock = limiter.clock
        self.ownership = Ownership()
        # grant decisions by (agent, call, model, owner): see decision_for
        self.decided: dict[tuple[Any, ...], GrantDecision] = {}
        self.budgets = self.policy.budgets()
        default = self.policy.default.budget if self.policy.default is not None else None
        self.default_budget = default.limits() if default is not None else ()
        # every agent the policy does not name spends one budget (a scope no agent is named)
        self.pooled = default is not None and default.per == "pool"
        self.budget = Limiter(
            tier=None,
            quotas=self.budgets,
            unknown_model=self.default_budget or None,
            backend=limiter.backend,
            clock=limiter.clock,
            project=limiter.project,
            probe=None,  # budgets are figures of the policy: nothing to learn or probe
            spend=False,
        )
        core = self.budget._core
        core.namespace = "budget:"
        # scopes named by agent (checked by the policy), which QUOTAFLOW_LIMITS never changes
        core.book = QuotaBook(None, self.budgets, None, self.default_budget or None, 0.0, False)
        core.book.check_names = False
        core.book.probe = None
        self.sync_limiter = SyncLimiter.sharing(limiter)
        self.sync_budget = SyncLimiter.sharing(self.budget)
        for lim in (self.budget, self.sync_budget):  # no figures of the fleet to read either
            lim._shares_figures = False
            lim._later = None
        self._audit: AuditLog | None = None

    def agent(self, name: str | None = None, *, audit: AuditLog | None = None) -> AgentHandle:
        """The handle of agent ``name``: its transports, google-genai options and ``acquire``,
        held to the policy's grants, share, priority and budget.

        ``name=None`` gives a handle for clients shared by several agents: each call names its
        agent with ``quotaflow.agent(name)`` or the ``x-quotaflow-agent`` header.
        """
        from quotaflow.agents.handle import AgentHandle

        return AgentHandle(self, name, audit=audit)

    def budget_scope(self, agent: str | None) -> str | None:
        """The scope of ``agent``'s budget, or ``None`` when it has none (a named agent's own
        budget; every other agent's is the ``[default]`` one, kept per agent, or one for them
        all with ``per = "pool"``)."""
        if agent is None:
            return None
        if agent in self.policy.agents:
            return agent if agent in self.budgets else None
        if not self.default_budget:
            return None
        return DEFAULT_SHARE if self.pooled else agent

    @property
    def audit(self) -> AuditLog:
        """The default audit log, from the policy's ``[audit]`` settings (made on first use;
        closed at exit)."""
        with _LOCK:
            if self._audit is None:
                s = self.policy.audit
                sink: Sink = (
                    JsonLinesSink(s.path, s.max_bytes, s.backups)
                    if s.path
                    else LoggingSink("quotaflow.audit")
                )
                self._audit = AuditLog([sink], content_hash=s.content_hash)
                atexit.register(self._audit.close)
            return self._audit

    def flush(self) -> None:
        """Write out the default audit log's queued records (if it was made)."""
        if self._audit is not None:
            self._audit.flush()

    def __repr__(self) -> str:
        return f"Agents(agents={sorted(self.policy.agents)}, limiter={self.limiter!r})"


class AgentGate:
    """The policy stage of one handle's transports (a
    :class:`~quotaflow.flow.policy.CallPolicy`): each call's :class:`AgentCall` ticket."""

    __slots__ = ("_audit", "_bound", "_runtime")

    def __init__(self, runtime: Agents, bound: str | None, audit: AuditLog) -> None:
        self._runtime = runtime
        self._bound = bound
        self._audit = audit

    @property
    def budget_limiter(self) -> Limiter | None:
        """The agents' budgets (async)."""
        return self._runtime.budget

    @property
    def sync_budget_limiter(self) -> SyncLimiter | None:
        """The agents' budgets (sync)."""
        return self._runtime.sync_budget

    def admit(
        self,
        call: Call,
        url: str,
        body: Mapping[str, Any],
        content: bytes,
        headers: Mapping[str, str],
        agent: str | None,
        priority: int | None,
    ) -> AgentCall:
        """The ticket of one call."""
        return AgentCall(
            self._runtime,
            self._bound,
            call,
            url,
            body,
            content,
            headers,
            agent,
            priority,
            self._audit,
        )

    def __repr__(self) -> str:
        return f"AgentGate(agent={self._bound!r})"
