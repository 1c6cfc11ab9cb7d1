"""The Redis backend: one quota for a fleet of processes (see docs/redis.md).

* :mod:`~quotaflow.backends.redis.backend`: :class:`RedisBackend`;
* ``engine``, ``script`` and ``lua/``: the scope rules as Lua, run by the engine"s flows;
* ``link``, ``lean``, ``clients``, ``ledger``, ``sync``: connections, calls, leases, the
  sync face.
"""

from __future__ import annotations

from quotaflow.backends.redis.backend import RedisBackend, SyncRedisBackend

__all__ = ["RedisBackend", "SyncRedisBackend"]
