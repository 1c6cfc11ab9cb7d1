"""The fleet's levels read from Redis without a write: the scope script's ``status`` op run
with its writes turned off (:func:`read_levels`), and the read-only scripts for the waiting
lines and the configured limits of a scope."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quotaflow.scheduler.buckets import Level

if TYPE_CHECKING:
    pass


__all__ = ["read_levels"]

_LINE_SCRIPT = """
local out = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, w = pcall(cmsgpack.unpack, v)
  if ok and type(w) == 'table' then
    local agents = {}
    if type(w.c) == 'table' then
      for k, _ in pairs(w.c) do
        if type(k) == 'string' then
          local at = string.find(k, '@', 1, true)
          if at then agents[string.sub(k, at + 1)] = true end
        end
      end
    end
    local names = {}
    for a, _ in pairs(agents) do names[#names + 1] = a end
    out[#out + 1] = {tostring(w.p or 0), table.concat(names, ',')}
  end
end
return out
"""


# the scope's limits as the fleet configured them: name and signature (kind:period:param)
_SPECS_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], 's')
if not raw then return {} end
local ok, st = pcall(cmsgpack.unpack, raw)
if not ok or type(st) ~= 'table' or type(st.names) ~= 'table' then return {} end
local out = {}
for _, name in ipairs(st.names) do
  local b = type(st.b) == 'table' and st.b[name] or nil
  out[#out + 1] = {name, type(b) == 'table' and tostring(b.sig or '') or ''}
end
return out
"""


# Read-only runs of the scope script: its ``status`` op computes each limit's level as every
# op does (expiries applied in memory), but every write command is a no-op here and Redis runs
# the script as ``no-writes`` (Redis 7; a write slipping through is refused, not made). The
# fleet's keys stay as they are: no purge saved, no lease moved, no waiter granted.
_WRITES = [
    "DEL",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HMSET",
    "HSET",
    "HSETNX",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "EXPIRE",
    "EXPIREAT",
    "PUBLISH",
    "SPUBLISH",
    "SET",
    "SETEX",
    "PSETEX",
    "UNLINK",
    "ZADD",
    "ZINCRBY",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
]
_READ_ONLY_HEAD = (
    "local redis = setmetatable({}, {__index = redis})\n"
    "do\n"
    "  local call, pcall_ = redis.call, redis.pcall\n"
    "  local writes = {" + ", ".join(f"{w}=true" for w in _WRITES) + "}\n"
    "  redis.call = function(cmd, ...)\n"
    "    if writes[string.upper(cmd)] then return 0 end\n"
    "    return call(cmd, ...)\n"
    "  end\n"
    "  redis.pcall = function(cmd, ...)\n"
    "    if writes[string.upper(cmd)] then return 0 end\n"
    "    return pcall_(cmd, ...)\n"
    "  end\n"
    "end\n"
)


class _ReadOnlyScript:
    """The scope script with its writes turned off (see ``_READ_ONLY_HEAD``)."""

    def __init__(self) -> None:
        import hashlib

        from quotaflow.backends.redis import script as rs

        plain = _READ_ONLY_HEAD + rs.SCRIPT
        self._bodies = ["#!lua flags=no-writes\n" + plain, plain]  # the flag needs Redis 7
        self._shas = [hashlib.sha1(b.encode()).hexdigest() for b in self._bodies]
        self._pick = 0

    def __call__(self, client: Any, keys: Sequence[str], argv: Sequence[str]) -> Any:
        import redis

        while True:
            body, sha = self._bodies[self._pick], self._shas[self._pick]
            try:
                try:
                    return client.evalsha(sha, len(keys), *keys, *argv)
                except redis.exceptions.NoScriptError:
                    return client.eval(body, len(keys), *keys, *argv)
            except redis.exceptions.ResponseError as exc:
                text = str(exc).lower()
                if self._pick == 0 and ("shebang" in text or "near '#'" in text):
                    self._pick = 1  # a Redis before 7: the writes stay off all the same
                    continue
                raise


_read_only: _ReadOnlyScript | None = None


def read_levels(
    client: Any, codec: Any, scope: str, limits: Sequence[Any]
) -> tuple[dict[str, Level], float] | None:
    """Each limit's level of ``scope`` (Redis times) and Redis's time, read without writing
    anything; ``None`` when no process has configured the scope (or its calendar windows are
    not the ones given). ``codec``: a :class:`~quotaflow.backends.redis.script.Codec` of the
    fleet's namespace."""
    global _read_only
    from quotaflow.backends.redis import replies as rp

    if _read_only is None:
        _read_only = _ReadOnlyScript()
    argv = codec.argv("status", scope, [], limits, None, time.time())
    reply = rp.decode_reply(_read_only(client, codec.keys(scope), argv))
    if reply.status != "ok":
        return None
    rows = rp.decode_levels(reply.result)
    return {k: rp.shift_level(v, 0.0) for k, v in rows.items()}, reply.now
