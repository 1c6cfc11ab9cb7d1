"""What the Redis engine's flows yield and what is thrown into them.

A flow (see :mod:`~quotaflow.backends.redis.engine`) yields effects, :class:`Exec` (run the
scope script or a plain command) and :class:`Backoff` (back off), to the driver that runs it; a
driver throws :class:`Transient` into it when Redis is unreachable, and the engine raises
:class:`Unavailable` when a flow may not wait for Redis. No redis import here.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

__all__ = ["Backoff", "EngineFlow", "Exec", "Transient", "Unavailable"]


@dataclass(frozen=True)
class Exec:
    """Effect: run the scope script with these keys and arguments (or, given ``command``,
    that plain command)."""

    keys: list[str]
    argv: list[str]
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backoff:
    """Effect: back off for ``seconds``."""

    seconds: float


class Transient(Exception):
    """Thrown into a flow by a driver when Redis is unreachable (wraps the redis-py error)."""


class Unavailable(Exception):
    """Raised inside the engine when Redis is down and the flow may not wait."""


EngineFlow = Generator[Exec | Backoff, Any, Any]
