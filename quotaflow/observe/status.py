"""What a limiter or a fleet holds right now: ``quotaflow status`` and :func:`snapshot`.

A snapshot is plain data (JSON-ready)::

    {"time": <epoch s>, "source": "redis://.../ns" | "process",
     "models": [{"scope", "project", "model", "dimensions": [{"name", "metric", "limit",
                 "origin", "used", "free", "in_flight", "paused_for_s", "next_return_in_s"}],
                 "waiting": {"<priority>": n}, "agents": {"<agent>": [<dimension>...]}}],
     "budgets": [{"scope", "project", "agent", "dimensions": [...]}]}

From Redis (:class:`RedisReader`) the fleet's state is read with the scope script's ``status``
op run with its writes turned off (:func:`read_levels`: nothing is written, so no grant, no
lease moved, no figure changed; a scope no process has configured yet is skipped), and the
waiting lines with a read-only script. From a running
process, :func:`snapshot` reads a :class:`~quotaflow.Limiter`.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from quotaflow.context import PRIORITIES
from quotaflow.errors import BackendError, ConfigError
from quotaflow.scheduler.buckets import Level

if TYPE_CHECKING:
    from quotaflow.limiter import Limiter

__all__ = ["RedisReader", "read_levels", "render_text", "snapshot", "watch"]

_NAMES = {v: k for k, v in PRIORITIES.items()}

# the waiting line of one scope: per waiter its priority and the agents its cost names
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
    from quotaflow.backends.redis import script as rs

    if _read_only is None:
        _read_only = _ReadOnlyScript()
    argv = codec.argv("status", scope, [], limits, None, time.time())
    reply = rs.decode_reply(_read_only(client, codec.keys(scope), argv))
    if reply.status != "ok":
        return None
    rows = rs.decode_levels(reply.result)
    return {k: rs.shift_level(v, 0.0) for k, v in rows.items()}, reply.now


def _calendar(param: str) -> Any:
    """The calendar a limit's signature names (``days(tz)``, ``months(tz)``,
    ``fixed(<period>s@<origin>)``), or ``None``."""
    from quotaflow.limits import fixed_windows, pacific_days, pacific_months

    try:
        if param.startswith("days(") and param.endswith(")"):
            return pacific_days(param[5:-1])
        if param.startswith("months(") and param.endswith(")"):
            return pacific_months(param[7:-1])
        if param.startswith("fixed(") and param.endswith(")") and "s@" in param:
            period, origin = param[6:-1].split("s@", 1)
            return fixed_windows(float(period), float(origin))
    except Exception:  # a calendar this reader cannot rebuild: its scope is skipped
        return None
    return None


def _priority_name(p: int) -> str:
    return _NAMES.get(p, str(p))


def _secs(t: float | None, now: float) -> float | None:
    if t is None or not math.isfinite(t):
        return None
    return round(max(0.0, t - now), 3)


def _dimension(name: str, level: Level, now: float, limit: Any, origin: str) -> dict[str, Any]:
    return {
        "name": name,
        "metric": getattr(limit, "metric", None),
        "period_s": getattr(limit, "period", None),
        "limit": level.limit,
        "origin": origin,
        "used": level.used,
        "free": level.free,
        "in_flight": level.in_flight,
        "paused_for_s": _secs(level.paused_until, now),
        "next_return_in_s": _secs(level.next_return, now),
    }


def _split_scope(scope: str) -> tuple[str, str, str]:
    """``(namespace, project, name)`` of a scope key ``<namespace><project>/<name>``."""
    head, _, name = scope.rpartition("/")
    ns, _, project = head.rpartition(":")
    return (ns + ":" if ns else ""), project, name


def _entry(
    scope: str,
    levels: Mapping[str, Level],
    now: float,
    limits: Mapping[str, Any],
    origins: Mapping[str, str],
    line: Sequence[tuple[int, str]],
) -> tuple[str, dict[str, Any]]:
    ns, project, name = _split_scope(scope)
    dims: list[dict[str, Any]] = []
    agents: dict[str, list[dict[str, Any]]] = {}
    for dim, level in levels.items():
        base, _, agent = dim.partition("@")
        origin = origins.get(base, "share" if agent else "configured")
        row = _dimension(dim, level, now, limits.get(dim) or limits.get(base), origin)
        if agent:
            row["name"] = base
            agents.setdefault(agent, []).append(row)
        else:
            dims.append(row)
    waiting: dict[str, int] = {}
    waiting_agents: dict[str, int] = {}
    for prio, who in line:
        key = _priority_name(prio)
        waiting[key] = waiting.get(key, 0) + 1
        for a in filter(None, who.split(",")):
            waiting_agents[a] = waiting_agents.get(a, 0) + 1
    if ns == "budget:":
        return "budgets", {"scope": scope, "project": project, "agent": name, "dimensions": dims}
    return "models", {
        "scope": scope,
        "project": project,
        "model": name,
        "dimensions": dims,
        "waiting": waiting,
        "agents": {
            a: {"dimensions": rows, "waiting": waiting_agents.get(a, 0)}
            for a, rows in sorted(agents.items())
        },
    }


async def snapshot(limiter: Limiter, models: Sequence[str] | None = None) -> dict[str, Any]:
    """What ``limiter`` holds now for ``models`` (default: every model it has admitted calls
    for), as :mod:`quotaflow.observe.status` describes: the view of a running process."""
    names = list(models) if models is not None else sorted(limiter._core.lanes)
    now = limiter.clock.now()
    out: dict[str, Any] = {"time": time.time(), "source": "process", "models": [], "budgets": []}
    for model in names:
        key, _, limits = await limiter._scope(model)
        levels = await limiter._ops.call("status", key, limiter.clock.now())
        line_of = getattr(limiter.backend, "line", None)
        line: list[tuple[int, str]] = list(line_of(key)) if callable(line_of) else []
        origins = {d: o.kind for d, o in limiter.origins(model).items()}
        kind, entry = _entry(key, levels, now, {lim.name: lim for lim in limits}, origins, line)
        if not line and not callable(line_of):
            n = int(await limiter._ops.call("waiting", key))
            entry["waiting"] = {"?": n} if n else {}
        out[kind].append(entry)
    return out


class RedisReader:
    """Reads a fleet's state from Redis without changing what it decides.

    Args:
        url: the fleet's Redis URL (quotaflow's query options, e.g. ``?namespace=``, are read).
        namespace: the backend's key prefix (default: the URL's, else ``"quotaflow"``).
        tier: the tier the fleet runs: names the origin of each figure, and gives the calendar
            limits' days to the status op.
        minute_seconds, day_seconds: the fleet's compressed minute and day, if any.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        tier: str = "free",
        minute_seconds: float = 60.0,
        day_seconds: float | None = None,
        timeout: float = 5.0,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ConfigError(
                "reading a fleet needs the 'redis' extra: pip install 'quotaflow[redis]'"
            ) from exc
        from quotaflow.backends.redis import script as rs
        from quotaflow.limiter import Limiter

        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"--redis {url!r}: give a redis://, rediss:// or unix:// URL")
        query = dict(parse_qsl(parts.query))
        ns = namespace or query.get("namespace") or "quotaflow"
        rest = [(k, v) for k, v in parse_qsl(parts.query) if k not in _BACKEND_OPTIONS]
        clean = urlunsplit((*parts[:3], urlencode(rest), parts.fragment))
        host = parts.hostname or ""
        host = f"{host}:{parts.port}" if parts.port else host  # never the URL's password
        self.where = f"{urlunsplit((parts.scheme, host, parts.path, '', ''))} namespace={ns}"
        self._client = redis.Redis.from_url(
            clean, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._rs = rs
        self._codec = rs.Codec(ns, f"status-{uuid.uuid4().hex[:8]}", 30.0)
        self._ns = ns
        self._book = Limiter(tier, minute_seconds=minute_seconds, day_seconds=day_seconds)
        self._budgets = Limiter(None, minute_seconds=minute_seconds, day_seconds=day_seconds)
        self._line_sha: str | None = None
        self._specs_sha: str | None = None

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def _call(self, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except redis.exceptions.ConnectionError as exc:
            raise BackendError(
                f"cannot reach Redis at {self.where}: {exc}; check the URL and that the server runs"
            ) from None
        except redis.exceptions.ResponseError as exc:
            raise BackendError(f"Redis at {self.where} answered: {exc}") from None

    def scopes(self) -> list[str]:
        """The scopes of the namespace (every model and budget some process configured)."""
        prefix = f"{self._ns}:{{"
        pattern = "".join("[" + c + "]" if c in "*?[]\\" else c for c in prefix) + "*}:H"
        found = []
        for raw in self._call(lambda: list(self._client.scan_iter(match=pattern, count=500))):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            found.append(key[len(prefix) : -3])
        return sorted(found)

    def _limits(self, scope: str) -> tuple[Any, dict[str, str]]:
        ns, _, name = _split_scope(scope)
        if ns == "budget:":
            return (), {}
        try:
            limits = self._book.quota(name)
            origins: dict[str, str] = {d: o.kind for d, o in self._book.origins(name).items()}
        except Exception:  # a model the tier does not know: its rolling limits still show
            return (), {}
        return limits, origins

    def _origins(
        self,
        scope: str,
        levels: Mapping[str, Level],
        limits: Mapping[str, Any],
        book: Mapping[str, str],
    ) -> dict[str, str]:
        """Per dimension: ``learned``/``adaptive`` when the fleet shares a learned figure, the
        tier book's origin when the fleet's figure is the book's, else ``configured``."""
        import json

        key = self._codec.keys(scope)[0][:-1] + "F"  # the fleet's learned figures
        raw = self._call(self._client.hgetall, key) or {}
        shared: dict[str, str] = {}
        for k, v in raw.items():
            try:
                data = json.loads(v)
            except ValueError:
                continue
            kind = data.get("kind", "learned") if isinstance(data, dict) else "learned"
            shared[k.decode() if isinstance(k, bytes) else str(k)] = str(kind)
        out: dict[str, str] = {}
        for dim, level in levels.items():
            lim = limits.get(dim)
            if dim in shared:
                out[dim] = shared[dim]
            elif lim is not None and lim.amount == level.limit and dim in book:
                out[dim] = book[dim]
            else:
                out[dim] = "configured"
        return out

    def _line(self, scope: str) -> list[tuple[int, str]]:
        key = self._codec.keys(scope)[2]
        if self._line_sha is None:
            self._line_sha = self._call(self._client.script_load, _LINE_SCRIPT)
        rows = self._call(self._client.evalsha, self._line_sha, 1, key)
        out = []
        for p, who in rows or ():
            text = p.decode() if isinstance(p, bytes) else str(p)
            try:
                prio = int(float(text))
            except ValueError:
                prio = 0
            out.append((prio, who.decode() if isinstance(who, bytes) else str(who)))
        return out

    def _calendars(self, scope: str) -> list[Any]:
        """Limits standing for the scope's calendar limits (their windows are what the status
        op needs), rebuilt from the fleet's configuration."""
        from quotaflow.limits import Limit

        if self._specs_sha is None:
            self._specs_sha = self._call(self._client.script_load, _SPECS_SCRIPT)
        rows = self._call(self._client.evalsha, self._specs_sha, 1, self._codec.keys(scope)[0])
        out = []
        for name, sig in rows or ():
            text = sig.decode() if isinstance(sig, bytes) else str(sig)
            kind, _, rest = text.partition(":")
            if kind != "c":
                continue
            _period, _, param = rest.partition(":")
            cal = _calendar(param)
            if cal is not None:
                n = name.decode() if isinstance(name, bytes) else str(name)
                out.append(Limit(n, 1, 86_400.0, reset=cal))
        return out

    def _levels(self, scope: str, limits: Sequence[Any]) -> tuple[dict[str, Level], float] | None:
        return self._call(read_levels, self._client, self._codec, scope, limits)  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, Any]:
        """The fleet's state now (see :mod:`quotaflow.observe.status`)."""
        self._call(self._client.ping)
        out: dict[str, Any] = {
            "time": time.time(),
            "source": self.where,
            "models": [],
            "budgets": [],
        }
        for scope in self.scopes():
            limits, origins = self._limits(scope)
            got = self._levels(scope, self._calendars(scope))
            if got is None:
                continue
            levels, now = got
            by_name = {lim.name: lim for lim in limits}
            origins = self._origins(scope, levels, by_name, origins)
            kind, entry = _entry(scope, levels, now, by_name, origins, self._line(scope))
            out[kind].append(entry)
        return out


_BACKEND_OPTIONS = (
    "namespace",
    "on_error",
    "local_fraction",
    "lease_ttl",
    "aging",
    "backfill_depth",
)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def render_text(snap: Mapping[str, Any]) -> str:
    """A snapshot as plain text: a table per model, then agents and budgets."""
    lines = [f"quotaflow status: {snap['source']}"]
    if not snap["models"] and not snap["budgets"]:
        lines.append("  no model in use (no process has configured a scope here yet)")
    for m in snap["models"]:
        waiting = ", ".join(f"{k} {v}" for k, v in m["waiting"].items()) or "none"
        lines.append(f"\n{m['project']}/{m['model']}  waiting: {waiting}")
        lines.append(
            f"  {'dimension':<12} {'limit':>10} {'origin':<10} {'used':>10} {'free':>10} "
            f"{'in flight':>10} {'paused for':>10}"
        )
        for d in m["dimensions"]:
            lines.append(
                f"  {d['name']:<12} {d['limit']:>10} {d['origin']:<10} {d['used']:>10} "
                f"{d['free']:>10} {d['in_flight']:>10} {_fmt(d['paused_for_s']):>10}"
            )
        for agent, a in m["agents"].items():
            share = ", ".join(f"{d['name']} {d['used']}/{d['limit']}" for d in a["dimensions"])
            lines.append(f"  agent {agent}: share {share}; waiting {a['waiting']}")
    for b in snap["budgets"]:
        left = ", ".join(f"{d['name']} {d['free']} of {d['limit']}" for d in b["dimensions"])
        lines.append(f"\nbudget of agent {b['agent']} ({b['project']}): left {left}")
    return "\n".join(lines)


def _rich_view(snap: Mapping[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(f"quotaflow status: {snap['source']}", style="bold")]
    for m in snap["models"]:
        waiting = ", ".join(f"{k} {v}" for k, v in m["waiting"].items()) or "none"
        t = Table(title=f"{m['project']}/{m['model']}  waiting: {waiting}", title_justify="left")
        for col in ("dimension", "limit", "origin", "used", "free", "in flight", "paused for"):
            t.add_column(col, justify="left" if col in ("dimension", "origin") else "right")
        for d in m["dimensions"]:
            t.add_row(
                d["name"],
                str(d["limit"]),
                d["origin"],
                str(d["used"]),
                str(d["free"]),
                str(d["in_flight"]),
                _fmt(d["paused_for_s"]),
            )
        for agent, a in m["agents"].items():
            for d in a["dimensions"]:
                t.add_row(
                    f"{d['name']}@{agent}",
                    str(d["limit"]),
                    "share",
                    str(d["used"]),
                    str(d["free"]),
                    str(d["in_flight"]),
                    f"waiting {a['waiting']}",
                )
        parts.append(t)
    for b in snap["budgets"]:
        left = ", ".join(f"{d['name']} {d['free']} of {d['limit']}" for d in b["dimensions"])
        parts.append(Text(f"budget of agent {b['agent']}: left {left}"))
    if not snap["models"] and not snap["budgets"]:
        parts.append(Text("no model in use yet"))
    parts.append(Text(time.strftime("updated %H:%M:%S  (Ctrl-C to stop)"), style="dim"))
    return Group(*parts)


def watch(reader: RedisReader, *, interval: float = 1.0, once: bool = False) -> int:
    """Refresh a live view of ``reader``'s fleet until Ctrl-C (rich on a terminal when it is
    installed; otherwise the plain table, redrawn). Returns the exit code (0)."""
    try:
        import rich.live  # noqa: F401

        have_rich = True
    except ImportError:
        have_rich = False
    try:
        if have_rich and sys.stdout.isatty():
            from rich.console import Console
            from rich.live import Live

            console = Console()
            with Live(_rich_view(reader.snapshot()), console=console, auto_refresh=False) as live:
                while not once:
                    time.sleep(interval)
                    live.update(_rich_view(reader.snapshot()), refresh=True)
            return 0
        clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
        while True:
            print(clear + render_text(reader.snapshot()), flush=True)
            if once:
                return 0
            time.sleep(interval)
            if not clear:
                print(flush=True)
    except KeyboardInterrupt:
        return 0
