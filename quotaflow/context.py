"""Per-call settings carried across ``await``s by context variables.

Example:
    >>> import quotaflow
    >>> with quotaflow.priority("high"):
    ...     pass  # every acquire (and every request through a QuotaTransport) in here is high
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from quotaflow.errors import ConfigError

__all__ = [
    "PRIORITIES",
    "agent",
    "current",
    "current_priority",
    "deadline",
    "priority",
    "priority_value",
]

PRIORITIES: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}
"""Named priority levels; any int works too (larger is more important)."""

_priority: ContextVar[int | None] = ContextVar("quotaflow_priority", default=None)
_timeout: ContextVar[float | None] = ContextVar("quotaflow_timeout", default=None)
_agent: ContextVar[str | None] = ContextVar("quotaflow_agent", default=None)


def priority_value(value: int | str) -> int:
    """An int priority from a name (``"low"``, ``"normal"``, ``"high"``, ``"critical"``) or int."""
    if isinstance(value, bool):
        raise ConfigError(f"priority={value!r}: use a level name or an int, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PRIORITIES:
            return PRIORITIES[key]
        try:
            return int(key)
        except ValueError:
            pass
    names = ", ".join(PRIORITIES)
    raise ConfigError(f"priority={value!r} is not a level: use one of {names} or an int")


@contextmanager
def priority(value: int | str) -> Iterator[None]:
    """Run the block's calls at this priority."""
    token = _priority.set(priority_value(value))
    try:
        yield
    finally:
        _priority.reset(token)


@contextmanager
def deadline(timeout: float) -> Iterator[None]:
    """Bound every wait for capacity in the block to ``timeout`` seconds."""
    if not timeout >= 0:
        raise ConfigError(f"deadline(timeout={timeout!r}): timeout must be >= 0 seconds")
    token = _timeout.set(float(timeout))
    try:
        yield
    finally:
        _timeout.reset(token)


@contextmanager
def agent(name: str) -> Iterator[None]:
    """Attribute the block's calls to the agent ``name``."""
    if not name:
        raise ConfigError("agent(name=''): give the agent a non-empty name")
    token = _agent.set(name)
    try:
        yield
    finally:
        _agent.reset(token)


def current_priority() -> int | None:
    """The priority set by an enclosing :func:`priority`, if any."""
    return _priority.get()


def current() -> tuple[int | None, float | None, str | None]:
    """The (priority, timeout, agent) set by the enclosing context managers."""
    return _priority.get(), _timeout.get(), _agent.get()
