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
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from quotaflow.context import PRIORITIES
from quotaflow.errors import BackendError, ConfigError
from quotaflow.observe._scripts import _LINE_SCRIPT, _SPECS_SCRIPT, read_levels
from quotaflow.observe.render import render_text, watch
from quotaflow.scheduler.buckets import Level

if TYPE_CHECKING:
    from quotaflow.limiter import Limiter

__all__ = ["RedisReader", "read_levels", "render_text", "snapshot", "watch"]

_NAMES = {v: k for k, v in PRIORITIES.items()}


# the waiting line of one scope: per waiter its priority and the agents its cost names
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
