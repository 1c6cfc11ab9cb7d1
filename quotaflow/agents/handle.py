"""Agent handles: one agent's transports, google-genai options and ``acquire``.

Example:
    >>> import quotaflow
    >>> from quotaflow.agents import Policy
    >>> policy = Policy.from_dict({"agents": {"indexer": {"grants": {"embeddings": "write"}}}})
    >>> from quotaflow.agents import Agents
    >>> indexer = Agents(quotaflow.Limiter(tier="tier1"), policy).agent("indexer")
    >>> options = indexer.http_options()  # genai.Client(api_key=..., http_options=options)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from quotaflow import context
from quotaflow.agents._call import decision_for
from quotaflow.agents._local import BudgetExhaustedError
from quotaflow.agents.audit import AuditLog
from quotaflow.agents.grants import GrantDecision
from quotaflow.agents.layer import AgentGate, Agents
from quotaflow.agents.policy import AgentPolicy
from quotaflow.errors import ConfigError, QuotaError
from quotaflow.gemini import classify
from quotaflow.gemini._canonical import valid_model
from quotaflow.limiter import Acquiring
from quotaflow.permit import Permit
from quotaflow.transports import QuotaTransport, SyncQuotaTransport, genai_http_options

if TYPE_CHECKING:
    from google.genai import types as genai_types

    from quotaflow.transports.httpx2_async import Httpx2QuotaTransport
    from quotaflow.transports.httpx2_sync import SyncHttpx2QuotaTransport

__all__ = ["AgentGate", "AgentHandle", "AgentPermit", "Agents"]


class AgentPermit:
    """A model permit and, when the agent has a budget, its budget permit, used as one."""

    def __init__(self, permit: Permit, budget: Permit | None) -> None:
        self.permit = permit
        self.budget = budget

    @property
    def waited(self) -> float:
        """Seconds waited for the model's quota."""
        return self.permit.waited

    @property
    def priority(self) -> int:
        """The priority it was granted at."""
        return self.permit.priority

    def mark_sent(self) -> None:
        """The call leaves now (see :meth:`quotaflow.Permit.mark_sent`)."""
        self.permit.mark_sent()
        if self.budget is not None:
            self.budget.mark_sent()

    def mark_response_started(self) -> None:
        """The response began now."""
        self.permit.mark_response_started()

    async def settle(self, input_tokens: int | None = None, **metrics: int) -> None:
        """Settle the model permit and the budget with the real usage."""
        await self.permit.settle(input_tokens, **metrics)
        if self.budget is not None:
            await self.budget.settle(input_tokens)

    async def release(self) -> None:
        """Give everything back (the call never left)."""
        await self.permit.release()
        if self.budget is not None:
            await self.budget.release()

    async def _exit(self, failed: bool) -> None:
        await self.permit._exit(failed)
        if self.budget is not None:
            await self.budget._exit(failed)

    def __repr__(self) -> str:
        return f"AgentPermit({self.permit!r}, budget={self.budget!r})"


class AgentHandle:
    """One agent's way to Gemini: transports, google-genai options, ``acquire``.

    Get one with ``agents.agent("researcher")`` (:class:`Agents`). A handle without a name
    (``agents.agent()``) serves agent loops that share one client: each call's agent comes
    from ``quotaflow.agent(name)`` or the ``x-quotaflow-agent`` header.

    Args:
        agents: the agents layer.
        name: the agent (``None``: per call).
        audit: the audit log (default: the one the policy's ``[audit]`` table describes).
    """

    def __init__(
        self, agents: Agents, name: str | None = None, *, audit: AuditLog | None = None
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name or "@" in name):
            raise ConfigError(f"agent name {name!r}: give a non-empty name without '@'")
        self.runtime = agents
        self.name = name
        self.audit = audit if audit is not None else self.runtime.audit

    @property
    def policy(self) -> AgentPolicy | None:
        """This agent's policy (its own or the default), ``None`` if it gets nothing."""
        return self.runtime.policy.for_agent(self.name)

    def check(
        self,
        method: str,
        url: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> GrantDecision:
        """The policy's answer for a request, without sending it: the same decision the
        transports make (the canonical request, the model a create names in its body, the
        resources the body names)."""
        agent = self.name or context.current()[2]
        call = classify(method, url, body, headers=headers)
        return decision_for(self.runtime, agent, call, dict(body or {}))[2]

    # ---- transports ------------------------------------------------------------------------

    def _gate(self) -> AgentGate:
        return AgentGate(self.runtime, self.name, self.audit)

    def transport(self, transport: Any = None, **options: Any) -> QuotaTransport:
        """An async httpx transport (``httpx.AsyncClient(transport=...)``): a
        :class:`~quotaflow.QuotaTransport` whose calls this agent makes."""
        return QuotaTransport(self.runtime.limiter, transport, policy=self._gate(), **options)

    def sync_transport(self, transport: Any = None, **options: Any) -> SyncQuotaTransport:
        """A sync httpx transport (``httpx.Client(transport=...)``)."""
        return SyncQuotaTransport(
            self.runtime.sync_limiter, transport, policy=self._gate(), **options
        )

    def httpx2_transport(self, transport: Any = None, **options: Any) -> Httpx2QuotaTransport:
        """An async ``httpx2`` transport."""
        from quotaflow.transports.httpx2_async import Httpx2QuotaTransport

        return Httpx2QuotaTransport(self.runtime.limiter, transport, policy=self._gate(), **options)

    def sync_httpx2_transport(
        self, transport: Any = None, **options: Any
    ) -> SyncHttpx2QuotaTransport:
        """A sync ``httpx2`` transport."""
        from quotaflow.transports.httpx2_sync import SyncHttpx2QuotaTransport

        return SyncHttpx2QuotaTransport(
            self.runtime.sync_limiter, transport, policy=self._gate(), **options
        )

    def http_options(
        self,
        *,
        backend: Literal["auto", "httpx", "httpx2"] = "auto",
        base_url: str | None = None,
        api_version: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: int | None = None,
        **options: Any,
    ) -> genai_types.HttpOptions:
        """google-genai ``HttpOptions`` whose async and sync clients go through this agent.

        Args:
            backend: the HTTP package (``auto``: the SDK's own choice).
            base_url, api_version, headers, timeout: passed to ``HttpOptions``.
            **options: quota transport options, and any other ``HttpOptions`` field (as
                :func:`quotaflow.genai_http_options` merges them).

        Raises:
            ConfigError: as :func:`quotaflow.genai_http_options`.
        """
        return genai_http_options(
            self.runtime.limiter,
            sync_limiter=self.runtime.sync_limiter,
            backend=backend,
            base_url=base_url,
            api_version=api_version,
            headers=headers,
            timeout=timeout,
            policy=self._gate(),
            **options,
        )

    # ---- acquire ---------------------------------------------------------------------------

    def acquire(
        self,
        model: str,
        tokens: int = 0,
        *,
        cost: Mapping[str, int] | None = None,
        priority: int | str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Acquiring[AgentPermit]:
        """:meth:`quotaflow.Limiter.acquire` as this agent: its share, its priority (the
        highest it may ask), and its budget first.

        Raises:
            BudgetExhaustedError: the agent's daily budget is spent (at once).
            QuotaError: as :meth:`quotaflow.Limiter.acquire`.
        """
        return Acquiring(self._acquire, (model, tokens, cost, priority, timeout, deadline))

    async def _acquire(
        self,
        model: str,
        tokens: int,
        cost: Mapping[str, int] | None,
        priority: int | str | None,
        timeout: float | None,
        deadline: float | None,
    ) -> AgentPermit:
        agent = self.name or context.current()[2]
        if agent is None:
            raise ConfigError("acquire on a handle without a name: set quotaflow.agent(name)")
        if not isinstance(model, str) or not valid_model(model):
            raise ConfigError(
                f"model={model!r}: an agent acquires for a Gemini model only (e.g. "
                "'gemini-2.5-flash'); the project's spend and the budgets are not its to take"
            )
        spec = self.runtime.policy.for_agent(agent)
        prio: int | None = None
        if spec is not None:
            asked = context.current()[0] if priority is None else context.priority_value(priority)
            prio = spec.priority_level if asked is None else min(asked, spec.priority_level)
        budget: Permit | None = None
        scope = self.runtime.budget_scope(agent)
        if scope is not None:
            requests = dict(cost or {}).get("requests", 1)
            try:
                budget = await self.runtime.budget.acquire_nowait(
                    scope, tokens, cost={"requests": requests}
                )
            except QuotaError as exc:
                raise BudgetExhaustedError.from_quota(agent, exc, self.runtime.clock.now()) from exc
        try:
            permit = await self.runtime.limiter.acquire(
                model,
                tokens,
                cost=cost,
                priority=prio,
                timeout=timeout,
                deadline=deadline,
                agent=agent,
            )
        except BaseException:
            if budget is not None:
                await budget.release()
            raise
        return AgentPermit(permit, budget)

    def __repr__(self) -> str:
        return f"AgentHandle({self.name!r}, policy={self.policy is not None})"
