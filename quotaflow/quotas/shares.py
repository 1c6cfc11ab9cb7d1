"""Agent shares: an agent's part of each model's limits. Pure values.

A share gives an agent, on the rolling limits of every model (RPM, TPM, ...):

* a **ceiling**: at most this fraction of each limit, whatever else is free;
* a **floor**: while the agent's use of a limit is below this fraction, its oldest waiting
  request is served before the line (checked on every dispatch). Unused floor is lent to others
  (work-conserving); a greedy agent cannot push a demanding one below its floor for longer than
  the one period it takes capacity to come back.

Shares become limits named ``"<limit>@<agent>"`` in each model's scope, charged only to that
agent's calls; so they hold across processes wherever the scope's state lives.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from quotaflow.errors import ConfigError
from quotaflow.limits import Calendar, Limit

__all__ = ["DEFAULT_SHARE", "Share", "agent_limits", "agent_name_problem", "floors_for"]

DEFAULT_SHARE = "*"
"""The key of a shares mapping whose share every agent the mapping does not name uses,
together (a policy's ``[default]`` share)."""


def agent_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name an agent (``None``: it can): a non-empty string of printable
    characters, without ``@``, surrounding spaces, control or invisible characters."""
    if not isinstance(name, str) or not name:
        return "give a non-empty string"
    if "@" in name or name != name.strip():
        return "give a name without '@' or surrounding spaces"
    for ch in name:
        if not ch.isprintable() or unicodedata.category(ch) in ("Cf", "Zl", "Zp"):
            return f"give printable characters only ({ch!r} is not)"
    return None


@dataclass(frozen=True)
class Share:
    """An agent's part of each model's rolling limits.

    Args:
        ceiling: at most this fraction (0 < x <= 1) of each limit.
        floor: below this fraction of a limit, the agent's requests go first.
        dimensions: the limits it applies to (default: every non-calendar limit).
    """

    ceiling: float | None = None
    floor: float | None = None
    dimensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ceiling", "floor"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise ConfigError(f"Share({name}={value!r}): give a fraction, 0 < {name} <= 1")
        if self.ceiling is not None and self.floor is not None and self.floor > self.ceiling:
            raise ConfigError(
                f"Share(floor={self.floor}, ceiling={self.ceiling}): a floor above the ceiling "
                "can never be reached; lower the floor"
            )

    def applies_to(self, limit: Limit) -> bool:
        """True if this share covers ``limit``."""
        if self.dimensions:
            return limit.name in self.dimensions
        return not isinstance(limit.reset, Calendar)


def agent_limits(base: tuple[Limit, ...], shares: Mapping[str, Share]) -> tuple[Limit, ...]:
    """The per-agent limits (``"rpm@researcher"``, ...) of a model whose limits are ``base``."""
    out: list[Limit] = []
    for agent, share in sorted(shares.items()):
        if share.ceiling is None and share.floor is None:
            continue
        for lim in base:
            if "@" in lim.name or not share.applies_to(lim):
                continue
            frac = share.ceiling if share.ceiling is not None else 1.0
            amount = max(1, math.floor(lim.amount * frac + 1e-9)) if lim.amount else 0
            out.append(
                Limit(f"{lim.name}@{agent}", amount, lim.period, lim.metric, lim.reset, False)
            )
    return tuple(out)


def floors_for(
    agent: str | None, base: tuple[Limit, ...], shares: Mapping[str, Share]
) -> dict[str, int]:
    """``{"rpm@agent": floor amount, ...}`` for an agent with a floor (empty otherwise)."""
    share = shares.get(agent) if agent is not None else None
    if share is None or share.floor is None:
        return {}
    return {
        f"{lim.name}@{agent}": math.floor(lim.amount * share.floor + 1e-9)
        for lim in base
        if "@" not in lim.name and share.applies_to(lim)
    }
