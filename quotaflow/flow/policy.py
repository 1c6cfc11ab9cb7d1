"""The policy stage of the call flow: what a transport asks a layer above it about each call.

The core defines this protocol and knows nothing of who implements it; the agents layer
(:mod:`quotaflow.agents`) does, with grants, budgets, ownership and the audit log. A transport
made with ``policy=`` runs :func:`~quotaflow.flow.call_flow` with it: the flow
classifies the request once, asks :meth:`CallPolicy.admit`, and then, for the ticket it gets,
answers a denial locally, takes the budget as one more acquire, reads what a create made, and
hands the finished call back (:meth:`CallTicket.finish`) for its audit record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from quotaflow.flow.refusal import Refusal
from quotaflow.gemini import Call

if TYPE_CHECKING:
    from quotaflow.flow import CallInfo
    from quotaflow.limiter import Limiter
    from quotaflow.sync import SyncLimiter

__all__ = ["CallPolicy", "CallTicket"]


class CallTicket(Protocol):
    """The policy's answer for one call, and what it wants to know about the call's life."""

    @property
    def agent(self) -> str | None:
        """The agent the call is made for (its share applies)."""
        ...

    @property
    def priority(self) -> int | None:
        """The priority the call waits at (``None``: the limiter's default)."""
        ...

    @property
    def refusal(self) -> Refusal | None:
        """The local answer (403, or 400 for a malformed request) when the call is denied."""
        ...

    def budget_cost(
        self, tokens: int, spend_micros: int | None
    ) -> tuple[str, int, dict[str, int]] | None:
        """``(scope, tokens, cost)`` to take from the budget limiter at once, or ``None``."""
        ...

    def budget_refused(self, exc: Exception) -> Refusal:
        """The local answer (429) when the budget has no room for the call."""
        ...

    def budget_amounts(self, info: CallInfo) -> dict[str, int]:
        """What the budget permit settles with once the call is over."""
        ...

    def responded(self, status: int) -> bool:
        """The final response's status; returns whether its body must be read (a create's
        answer names the new resource; a streamed answer is watched as it passes)."""
        ...

    def created(self, decoded: bytes) -> bool:
        """The body of a create's response (read because :meth:`responded` asked), or, for a
        streamed answer, the data of one event, each as it passes, until this returns
        ``True`` (the new resource is named)."""
        ...

    def finish(
        self,
        info: CallInfo,
        *,
        refusal: Refusal | None = None,
        error: BaseException | None = None,
        raised: bool = False,
    ) -> None:
        """The call is over: answered (``info.statuses``), refused here (``refusal``; raised
        to the caller when ``raised``), or failed with ``error``. Called once."""
        ...


class CallPolicy(Protocol):
    """A layer that decides each call before it is sized and admitted."""

    @property
    def budget_limiter(self) -> Limiter | None:
        """The async limiter budgets are taken from (``None``: no budgets)."""
        ...

    @property
    def sync_budget_limiter(self) -> SyncLimiter | None:
        """The same budgets for sync transports."""
        ...

    def admit(
        self,
        call: Call,
        url: str,
        body: Mapping[str, Any],
        content: bytes,
        headers: Mapping[str, str],
        agent: str | None,
        priority: int | None,
    ) -> CallTicket:
        """The ticket of one call: ``call`` is its classification, ``body`` its parsed JSON
        (``{}`` when none or not read), ``content`` its raw bytes, ``agent`` and ``priority``
        what the request asked (``x-quotaflow-*`` headers or ``quotaflow.agent()``)."""
        ...
