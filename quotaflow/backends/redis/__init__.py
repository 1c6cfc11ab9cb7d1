"""The Redis backend: one quota for a fleet of processes (see docs/redis.md).

* :mod:`~quotaflow.backends.redis.backend`: :class:`RedisBackend`; ``sync``: its sync face;
* ``engine`` (over ``engine_call``, ``engine_lean``, ``engine_state``, ``effects``): the
  operations as flows with two drivers;
* ``script``, ``replies`` and ``lua/``: the scope rules as Lua, its arguments and replies;
* ``link``, ``lean``, ``clients``, ``settle_timer``, ``ledger``: connections, calls, deferred
  settles, leases.
"""

from __future__ import annotations

from quotaflow.backends.redis.backend import RedisBackend, SyncRedisBackend

__all__ = ["RedisBackend", "SyncRedisBackend"]
