"""Agent policies: who may call what, at which priority, with which share and budget.

A policy names agents and grants each, per area of the Gemini API, ``none``, ``read`` or
``write`` (write includes read), optionally narrowed to models (globs) and to single methods,
and optionally restricted to the resources the agent created (``own``). Everything not
granted is denied. Validated by pydantic; errors name the file, the agent and the key.

Example TOML::

    [agents.researcher]
    priority = "high"
    share = { floor = 0.3 }
    budget = { requests_per_day = 500, tokens_per_day = 2_000_000, usd_per_month = 50 }

    [agents.researcher.grants]
    content = { access = "write", models = ["gemini-2.5-flash*"] }
    counting = { access = "read", models = ["gemini-2.5-flash*"] }

    [agents.admin.grants]
    files = { access = "write", own = true, deny = ["delete"] }
    caching = "write"                      # shorthand for { access = "write" }

Areas (as the API reference groups methods, see :data:`METHODS`): ``content`` (models and
content), ``embeddings``, ``counting`` (token counting), ``files``, ``caching`` (context
caching), ``batch``, ``tuning`` (tuned models), ``live`` (Live API sessions, through the
gateway).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from quotaflow._frozen import Frozen
from quotaflow.agents.areas import AREA_ALIASES, AREAS, METHODS, GrantArea, GrantLevel
from quotaflow.context import priority_value
from quotaflow.errors import ConfigError
from quotaflow.limits import RPD, TPD, Limit, pacific_days, pacific_months
from quotaflow.quotas.pricing import USD_MICROS
from quotaflow.quotas.shares import DEFAULT_SHARE, Share, agent_name_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "AREAS",
    "METHODS",
    "AgentPolicy",
    "AreaGrant",
    "AuditSettings",
    "Budget",
    "GrantArea",
    "GrantLevel",
    "Policy",
    "PolicyError",
    "ShareSpec",
    "load_policy",
    "name_problem",
]


class PolicyError(ConfigError):
    """Raised when a policy (a TOML file or Python objects) fails validation.

    Attributes:
        path: the file, or ``"<policy>"`` for Python objects.
        agent: the agent whose entry is wrong (``""`` when none is).
        key: the dotted key that is wrong.
    """

    def __init__(self, message: str, *, path: str = "", agent: str = "", key: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.agent = agent
        self.key = key


name_problem = agent_name_problem


class _PolicyModel(Frozen):
    """A policy model: strict and immutable, and a boolean is no number."""

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        # pydantic reads true as 1: a boolean where a number or a name goes is a mistake
        if isinstance(data, Mapping):
            for name, value in data.items():
                info = cls.model_fields.get(str(name))
                if info is not None and isinstance(value, bool) and info.annotation is not bool:
                    raise ValueError(f"{name} = {str(value).lower()}: give a number or a name")
        return data


class AreaGrant(_PolicyModel):
    """What an agent may do in one area.

    Attributes:
        access: ``none``, ``read`` or ``write`` (write includes read).
        models: model globs (``gemini-2.5-flash*``); empty allows every model. Calls that name
            no model (lists, files, ...) are not narrowed.
        allow: if given, only these methods (narrows ``access``, never widens it).
        deny: these methods are denied (e.g. ``["delete"]``).
        own: updates, deletes and cancels only on resources this agent created, and only
            its own resources named in a request body; in ``content``, every call on an
            interaction (a read too) and every continuation of one only on its own.
    """

    access: GrantLevel = "none"
    models: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    own: bool = False

    def describe(self) -> str:
        """A short text of the grant, for messages and the audit log."""
        parts: list[str] = [self.access]
        if self.models:
            parts.append("models " + ",".join(self.models))
        if self.allow:
            parts.append("only " + ",".join(self.allow))
        if self.deny:
            parts.append("not " + ",".join(self.deny))
        if self.own:
            parts.append("own resources")
        return "; ".join(parts)


class ShareSpec(_PolicyModel):
    """An agent's share of each model's rolling limits (see :class:`~quotaflow.Share`)."""

    ceiling: float | None = Field(default=None, gt=0.0, le=1.0)
    floor: float | None = Field(default=None, gt=0.0, le=1.0)
    dimensions: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> ShareSpec:
        if self.ceiling is not None and self.floor is not None and self.floor > self.ceiling:
            raise ValueError(f"floor {self.floor} is above the ceiling {self.ceiling}")
        return self

    def share(self) -> Share:
        """The core :class:`~quotaflow.Share`."""
        return Share(ceiling=self.ceiling, floor=self.floor, dimensions=self.dimensions)


class Budget(_PolicyModel):
    """Budgets of an agent across every model: per day (reset at midnight Pacific time, as
    Gemini's RPD) and, in dollars, per month (reset at the start of the Pacific month).

    Dollars are what the calls cost at the limiter's prices (:mod:`quotaflow.quotas.pricing`),
    reserved
    from the estimate and settled from the usage; a model without a price is not charged.

    Attributes:
        requests_per_day: metered requests (generate, embed) per day.
        tokens_per_day: input tokens per day (as Gemini's TPM and TPD count them).
        usd_per_day: US dollars per day.
        usd_per_month: US dollars per calendar month.
        per: for the ``[default]`` budget: ``"agent"`` (each agent the policy does not name
            has a budget of its own) or ``"pool"`` (they spend one budget together, so a name
            made up per call gains nothing). A named agent's budget is always its own.
    """

    requests_per_day: int | None = Field(default=None, gt=0)
    tokens_per_day: int | None = Field(default=None, gt=0)
    usd_per_day: float | None = Field(default=None, gt=0)
    usd_per_month: float | None = Field(default=None, gt=0)
    per: Literal["agent", "pool"] = "agent"

    @property
    def in_dollars(self) -> bool:
        """Whether the budget counts dollars."""
        return self.usd_per_day is not None or self.usd_per_month is not None

    def limits(self) -> tuple[Limit, ...]:
        """The budget as limits of the agent's budget scope (``rpd``, ``tpd``, ``usd_per_day``,
        ``usd_per_month``; dollars on metric ``usd_micros``)."""
        out: list[Limit] = []
        if self.requests_per_day is not None:
            out.append(RPD(self.requests_per_day))
        if self.tokens_per_day is not None:
            out.append(TPD(self.tokens_per_day))
        if self.usd_per_day is not None:
            micros = math.floor(self.usd_per_day * 1_000_000)
            out.append(Limit("usd_per_day", micros, 86_400.0, USD_MICROS, pacific_days()))
        if self.usd_per_month is not None:
            micros = math.floor(self.usd_per_month * 1_000_000)
            month = pacific_months()
            out.append(Limit("usd_per_month", micros, 31 * 86_400.0, USD_MICROS, month))
        return tuple(out)


def _normalize_grants(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for area, grant in value.items():
        name = AREA_ALIASES.get(str(area), str(area))
        if name in spelled:
            raise ValueError(
                f"grants.{area} and grants.{spelled[name]} both grant {name!r}: keep one"
            )
        spelled[name] = str(area)
        out[name] = {"access": grant} if isinstance(grant, str) else grant
    return out


class AgentPolicy(_PolicyModel):
    """One agent's grants, priority, share and budget.

    Attributes:
        grants: per area, an :class:`AreaGrant` (or a level string as shorthand).
        priority: the agent's priority: the default of its calls and the highest they may ask.
        share: its share of each model's limits (ceiling, floor).
        budget: its daily budgets.
    """

    grants: dict[GrantArea, AreaGrant] = Field(default_factory=dict)
    priority: int | str = "normal"
    share: ShareSpec | None = None
    budget: Budget | None = None

    @field_validator("grants", mode="before")
    @classmethod
    def _grants(cls, value: Any) -> Any:
        return _normalize_grants(value)

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: int | str) -> int | str:
        try:
            priority_value(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _methods_exist(self) -> AgentPolicy:
        for area, grant in self.grants.items():
            known = METHODS[area]
            for field in ("allow", "deny"):
                for method in getattr(grant, field):
                    if method not in known:
                        raise ValueError(
                            f"grants.{area}.{field}: {method!r} is not a method of {area}; "
                            f"use one of {', '.join(sorted(known))}"
                        )
        return self

    @property
    def priority_level(self) -> int:
        """The priority as an int."""
        return priority_value(self.priority)

    def grant(self, area: str) -> AreaGrant:
        """The grant of ``area`` (``access="none"`` when not granted)."""
        return self.grants.get(area, _NONE)  # type: ignore[call-overload, no-any-return]


_NONE = AreaGrant()


class AuditSettings(_PolicyModel):
    """Where the default audit log writes (see :mod:`quotaflow.agents.audit`).

    Attributes:
        path: a JSON lines file; without it, records go to the ``quotaflow.audit`` logger.
        max_bytes: rotate the file at this size.
        backups: rotated files kept (``audit.jsonl.1`` ... ``.N``).
        content_hash: add a hash of each request body (never the body itself).
    """

    path: str | None = None
    max_bytes: int = Field(default=10_000_000, gt=0)
    backups: int = Field(default=5, ge=0)
    content_hash: bool = False


class Policy(_PolicyModel):
    """Every agent's grants. Deny by default: unknown agents get ``default`` or nothing.

    Attributes:
        agents: by name.
        default: the policy of agents the policy does not name (``None``: they get nothing).
        audit: where the default audit log writes.

    Example:
        >>> policy = Policy(agents={"indexer": AgentPolicy(grants={"embeddings": "write"})})
        >>> policy.for_agent("indexer").grant("embeddings").access
        'write'
    """

    agents: dict[str, AgentPolicy] = Field(default_factory=dict)
    default: AgentPolicy | None = None
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @field_validator("agents")
    @classmethod
    def _names(cls, value: dict[str, AgentPolicy]) -> dict[str, AgentPolicy]:
        for name in value:
            problem = name_problem(name) if name != DEFAULT_SHARE else "the name is reserved"
            if problem is not None:
                raise ValueError(f"agent name {name!r}: {problem}")
        return value

    @model_validator(mode="after")
    def _pooled_default_only(self) -> Policy:
        for name, agent in self.agents.items():
            if agent.budget is not None and agent.budget.per == "pool":
                raise ValueError(
                    f"agents.{name}.budget.per: 'pool' is for [default.budget] (every agent the "
                    "policy does not name, together); a named agent's budget is its own: "
                    "remove per"
                )
        return self

    def for_agent(self, name: str | None) -> AgentPolicy | None:
        """The policy of agent ``name``: its own, else the default, else ``None``."""
        if name is not None and name in self.agents:
            return self.agents[name]
        return self.default

    def shares(self) -> dict[str, Share]:
        """The core shares of every agent that has one (for ``Limiter(shares=...)``); the
        ``[default]`` share is under :data:`~quotaflow.quotas.shares.DEFAULT_SHARE`, for every agent
        the policy does not name, together."""
        out = {n: a.share.share() for n, a in self.agents.items() if a.share is not None}
        if self.default is not None and self.default.share is not None:
            for name in self.agents:
                out.setdefault(name, Share())  # a named agent never takes the default's share
            out[DEFAULT_SHARE] = self.default.share.share()
        return out

    def budgets(self) -> dict[str, tuple[Limit, ...]]:
        """Per named agent, its budget limits (every other agent gets the ``[default]``
        budget, each its own: see :meth:`for_agent`)."""
        out = {n: a.budget.limits() for n, a in self.agents.items() if a.budget is not None}
        return {n: lims for n, lims in out.items() if lims}

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<policy>") -> Policy:
        """Parse and validate a policy from TOML text; ``source`` names it in errors."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: not valid TOML: {exc}", path=source) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<policy>") -> Policy:
        """Validate a policy from plain data; errors name ``source``, the agent and the key."""
        if not isinstance(data, Mapping):
            raise PolicyError(
                f"{source}: a policy is a table (a dict with 'agents', 'default', 'audit'), "
                f"not {type(data).__name__}",
                path=source,
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise _policy_error(exc, source) from None


def _policy_error(exc: ValidationError, source: str) -> PolicyError:
    lines: list[str] = []
    first_agent = first_key = ""
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        # drop pydantic's union/type tags (``str``, ``AreaGrant``) from the location
        loc = [p for p in loc if p not in ("str", "int", "AreaGrant", "AgentPolicy", "[key]")]
        agent = loc[1] if len(loc) > 1 and loc[0] == "agents" else ""
        key = ".".join(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        who = f" (agent {agent!r})" if agent else ""
        lines.append(f"{source}: {key or '<root>'}{who}: {msg}")
        if not first_key:
            first_agent, first_key = agent, key
    return PolicyError("\n".join(lines), path=source, agent=first_agent, key=first_key)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load and validate a policy TOML file.

    Raises:
        PolicyError: the file is unreadable or invalid (the message names file, agent, key).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{p}: cannot read the policy: {exc.strerror}", path=str(p)) from None
    return Policy.from_toml(text, source=str(p))
