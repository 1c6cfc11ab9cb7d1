"""The scope script and its arguments for the Redis backend: the Lua, keys, ARGV, the encoded
command. Pure (no I/O); its replies are decoded by :mod:`~quotaflow.backends.redis.replies`.

The Lua in ``quotaflow/backends/redis/lua/`` is one script in five files (fast, prelude, buckets,
queue, scope), concatenated here and loaded by SHA. The prelude's header documents KEYS, ARGV
and the reply; ``fast.lua`` the fast path that answers uncontended calls.

Calendars are Python callables (``pacific_days``, ``fixed_windows``); the script cannot call
them, so the client passes, per calendar limit, the windows around its estimate of Redis time
(``window_start(t)``, ``window_end(t)`` for ``t`` a second before, at and after the estimate).
The script picks the window that holds Redis ``TIME``; window boundaries depend only on time,
never on state, so this is not client time inside Lua. If no window holds ``TIME`` (a clock
far off), the script answers ``cal`` and the client retries with the script's time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from importlib import resources

from quotaflow.backends.base import Request
from quotaflow.limits import Calendar, Concurrent, Limit, Rolling, TokenBucket

__all__ = ["SCRIPT", "SCRIPT_SHA", "Codec", "Settle"]

_PARTS = ("fast.lua", "prelude.lua", "buckets.lua", "queue.lua", "scope.lua")


def _load_script() -> str:
    base = resources.files("quotaflow.backends.redis") / "lua"
    return "\n".join((base / name).read_text(encoding="utf-8") for name in _PARTS)


SCRIPT = _load_script()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
SCRIPT_SHA_BYTES = SCRIPT_SHA.encode()


def _bulk(b: bytes) -> bytes:
    """One bulk string of the Redis protocol."""
    return b"$%d\r\n%b\r\n" % (len(b), b)


def packed_command(sha: str, keys: Sequence[bytes], argv: Sequence[str]) -> bytes:
    """``EVALSHA sha len(keys) *keys *argv`` in the Redis protocol (RESP)."""
    parts = [b"*%d\r\n" % (3 + len(keys) + len(argv)), _bulk(b"EVALSHA"), _bulk(sha.encode())]
    parts.append(_bulk(b"%d" % len(keys)))
    parts += [_bulk(k) for k in keys]
    parts += [_bulk(a.encode()) for a in argv]
    return b"".join(parts)


def packed_read(command: Sequence[str]) -> bytes | None:
    """A plain command of an :class:`~quotaflow.backends.redis.effects.Exec` encoded for the
    lean call: ``HGETALL`` (the fleet's figures, read now and then; its reply is taken raw, a
    list or a map); ``None`` for the script (the general flow's own calls) and the rest
    (redis-py converts their replies)."""
    if not command or command[0] != "HGETALL":
        return None
    parts = [b"*%d\r\n" % len(command)]
    parts += [_bulk(a.encode()) for a in command]
    return b"".join(parts)


def f17(x: float) -> str:
    """A float as text that reads back bit for bit (``repr`` does; Lua reads it too)."""
    return repr(float(x))


def limit_spec(lim: Limit) -> list[str]:
    """``name kind amount period param fail_fast`` for the configure op."""
    rule = lim.reset
    if isinstance(rule, Rolling):
        kind, param = "w", str(rule.slots)
    elif isinstance(rule, Calendar):
        kind, param = "c", rule.name
    elif isinstance(rule, TokenBucket):
        kind, param = "g", "" if rule.burst is None else str(rule.burst)
    elif isinstance(rule, Concurrent):
        kind, param = "x", ""
    else:  # pragma: no cover - Limit validates its rule
        raise TypeError(f"unknown reset rule {rule!r}")
    return [lim.name, kind, str(lim.amount), f17(lim.period), param, "1" if lim.fail_fast else "0"]


class Codec:
    """Keys and arguments of one backend (namespace, owner, ticket time to live)."""

    def __init__(self, namespace: str, owner: str, ttl: float) -> None:
        self.namespace = namespace
        self.owner = owner
        self.ttl = ttl
        self.channel_prefix = f"{namespace}:o:"
        self._keys: dict[str, list[str]] = {}
        self._bkeys: dict[str, list[bytes]] = {}
        self._heads: dict[str, str] = {}
        self._cal: dict[str, tuple[Sequence[Limit], float, float, str]] = {}
        self._packed: dict[str, bytes] = {}
        self._calk: dict[int, tuple[Sequence[Limit], bool]] = {}
        self.gens: dict[str, str] = {}  # scope -> the state's generation, as last seen

    def set_gen(self, scope: str, gen: str) -> bool:
        """Record the generation of the scope's state; ``True`` if it changed."""
        if self.gens.get(scope) == gen:
            return False
        self.gens[scope] = gen
        self._heads.pop(scope, None)
        self._packed.pop(scope, None)
        return True

    @property
    def channel(self) -> str:
        """The channel this backend's decisions are published on."""
        return self.channel_prefix + self.owner

    def keys(self, scope: str) -> list[str]:
        """The scope's seven keys, sharing one hash tag (one Redis Cluster slot per scope)."""
        keys = self._keys.get(scope)
        if keys is None:
            tag = scope.replace("{", "(").replace("}", ")")
            base = f"{self.namespace}:{{{tag}}}:"
            keys = self._keys[scope] = [base + s for s in "HQWTLEZ"]
        return keys

    def keys_bytes(self, scope: str) -> list[bytes]:
        """:meth:`keys`, encoded once (redis-py passes bytes through untouched)."""
        keys = self._bkeys.get(scope)
        if keys is None:
            keys = self._bkeys[scope] = [k.encode() for k in self.keys(scope)]
        return keys

    def packed_submit(
        self,
        scope: str,
        request: Request,
        now: float,
        limits: Sequence[Limit],
        estimate: float,
        settles: Sequence[Settle],
    ) -> bytes:
        """The whole ``EVALSHA`` of a ``submit`` as bytes of the Redis protocol (RESP), for
        the async face's lean call: :meth:`argv`'s arguments, with the part that never changes
        (command, SHA, keys, header) encoded once per scope; times relative to ``now``."""
        pre = self._packed.get(scope)
        if pre is None:
            head = self.argv("submit", scope, (), limits, None, 0.0)[0]
            pre = self._packed[scope] = b"".join(
                _bulk(x.encode()) for x in ("EVALSHA", SCRIPT_SHA, "7", *self.keys(scope), head)
            )
        cal = self.calendars(scope, limits, estimate, False) if self._has_cal(limits) else ""
        a, c = submit_arg(request, now), cost_arg(request.cost)
        # ids and limit names are ASCII in practice: then characters count bytes, and the
        # arguments are framed and encoded at once
        tail = f"${len(a)}\r\n{a}\r\n${len(c)}\r\n{c}\r\n${len(cal)}\r\n{cal}\r\n"
        for lease_id, actual, at in settles:
            x = settle_arg(lease_id, actual, f"r{at - now!r}")
            tail += f"${len(x)}\r\n{x}\r\n"
        n = 14 + len(settles)
        if tail.isascii():
            return b"*%d\r\n%b%b" % (n, pre, tail.encode())
        parts = [a, c, cal]
        for lease_id, actual, at in settles:
            parts.append(settle_arg(lease_id, actual, f"r{at - now!r}"))
        return b"".join([b"*%d\r\n" % n, pre, *(_bulk(x.encode()) for x in parts)])

    def _has_cal(self, limits: Sequence[Limit]) -> bool:
        hit = self._calk.get(id(limits))
        if hit is None or hit[0] is not limits:
            hit = (limits, any(isinstance(lim.reset, Calendar) for lim in limits))
            self._calk[id(limits)] = hit
        return hit[1]

    def argv(
        self,
        op: str,
        scope: str,
        args: Sequence[str],
        limits: Sequence[Limit],
        redis_now: float | None,
        estimate: float,
        settles: Sequence[str] = (),
        cost: str = "",
    ) -> list[str]:
        """ARGV: header, the op's arguments, the cost (submit), calendar windows, then one
        argument per settle (see the prelude). ``redis_now`` is the test-only clock
        (``None``: Redis TIME)."""
        head = self._heads.get(scope)
        if head is None:
            head = self._heads[scope] = "\x1f".join(
                (f17(self.ttl), self.owner, self.channel_prefix, scope, self.gens.get(scope, ""))
            )
        override = "" if redis_now is None else f17(redis_now)
        out = [
            f"{op}\x1f{override}\x1f{head}",
            "\x1f".join(args),
            cost,
            self.calendars(scope, limits, estimate, redis_now is not None),
        ]
        if settles:
            out += settles
        else:
            while out[-1] == "":  # trailing empty arguments may be left out
                out.pop()
        return out

    def calendars(self, scope: str, limits: Sequence[Limit], t: float, exact: bool) -> str:
        """:func:`calendar_windows`, cached while ``t`` stays inside one window."""
        if exact:
            return calendar_windows(limits, t, exact=True)
        hit = self._cal.get(scope)
        if hit is not None and hit[0] is limits and hit[1] <= t < hit[2]:
            return hit[3]
        text = calendar_windows(limits, t, exact=False)
        lo, hi = -math.inf, math.inf
        for lim in limits:
            cal = lim.reset
            if isinstance(cal, Calendar):
                # while t - 1 and t + 1 stay in t's window, the candidates are that window alone
                lo = max(lo, cal.window_start(t) + 1.0)
                hi = min(hi, cal.window_end(t) - 1.0)
        if lo < hi:
            self._cal[scope] = (limits, lo, hi, text)
        return text


def calendar_windows(limits: Sequence[Limit], t: float, *, exact: bool) -> str:
    """Candidate windows per calendar limit around ``t`` (just ``t``'s window if exact)."""
    lines = []
    for lim in limits:
        cal = lim.reset
        if not isinstance(cal, Calendar):
            continue
        points = (t,) if exact else (t - 1.0, t, t + 1.0)
        wins: list[str] = []
        seen: set[tuple[float, float]] = set()
        for p in points:
            w = (cal.window_start(p), cal.window_end(p))
            if w not in seen:
                seen.add(w)
                wins += [f17(w[0]), f17(w[1])]
        lines.append("\t".join([lim.name, *wins]))
    return "\n".join(lines)


def time_arg(t: float | None, now: float, exact: bool) -> str:
    """A time for the script: absolute when the caller drives the clock, else relative."""
    if t is None:
        return ""
    if exact:
        return "a" + f17(t)
    return "r" + f17(t - now)


def submit_arg(request: Request, now: float) -> str:
    """:func:`submit_args` joined (ARGV[2]), times relative to ``now``: the lean call's."""
    deadline = request.deadline
    floors = request.floors
    head = (
        f"{request.id}\x1f{int(request.priority)}\x1f"
        f"{'' if deadline is None else 'r' + repr(float(deadline - now))}\x1f"
        f"{'1' if request.nowait else '0'}\x1f"
    )
    if not floors:
        return head + "0"
    parts = [head + str(len(floors))]
    for name, amount in floors.items():
        parts.append(name)
        parts.append(str(int(amount)))
    return "\x1f".join(parts)


def submit_args(request: Request, now: float, exact: bool) -> list[str]:
    """ARGV[2] of ``submit`` (its cost is ARGV[3]: :func:`cost_arg`)."""
    out = [
        request.id,
        str(int(request.priority)),
        time_arg(request.deadline, now, exact),
        "1" if request.nowait else "0",
    ]
    floors = list((request.floors or {}).items())
    out.append(str(len(floors)))
    for name, amount in floors:
        out += [name, str(int(amount))]
    return out


def cost_arg(cost: Mapping[str, int]) -> str:
    """ARGV[3] of ``submit``: ``<limit>\\x1f<amount>\\x1f`` per amount > 0, in request order
    (the fast path keeps it verbatim in the lease)."""
    if len(cost) == 1:  # the usual request (one limit, or one metric per limit)
        for name, amount in cost.items():
            return f"{name}\x1f{int(amount)}\x1f" if amount > 0 else ""
    return "".join([f"{name}\x1f{int(amount)}\x1f" for name, amount in cost.items() if amount > 0])


Settle = tuple[str, Mapping[str, int] | None, float]
"""A settle to apply: (lease id, real amounts by limit or None, ``at`` of the limiter clock)."""


def settle_arg(lease_id: str, actual: Mapping[str, int] | None, at: str) -> str:
    """One settle argument (ARGV[5..]): ``id at n [limit amount]*``, ``at`` encoded."""
    if actual is None:
        return f"{lease_id}\x1f{at}\x1f-1"
    if not actual:
        return f"{lease_id}\x1f{at}\x1f0"
    parts = [lease_id, at, str(len(actual))]
    for name, amount in actual.items():
        parts.append(name)
        parts.append(str(int(amount)))
    return "\x1f".join(parts)


def settle_args(settles: Sequence[Settle], now: float, exact: bool) -> list[str]:
    """ARGV[5..]: one per settle, its ``at`` relative to ``now`` (absolute if ``exact``)."""
    return [
        settle_arg(lease_id, actual, time_arg(at, now, exact)) for lease_id, actual, at in settles
    ]


def configure_args(
    limits: Sequence[Limit], aging: float | None, depth: int, grace: float | None = None
) -> list[str]:
    """ARGV tail of ``configure``; ``grace``: the caller's state was lost, and a new one
    holds every limit that long, so that every live process writes back first."""
    out = ["" if aging is None else f17(aging), str(depth), str(len(limits))]
    for lim in limits:
        out += limit_spec(lim)
    out.append("" if grace is None else f17(grace))
    return out


def restore_args(
    leases: Sequence[tuple[str, Mapping[str, int]]],
) -> list[str]:
    """ARGV[2] of ``restore``: the leases in flight, ``n, (id, k, (limit, amount)*k)*n``."""
    out = [str(len(leases))]
    for lease_id, cost in leases:
        pairs = [(k, int(v)) for k, v in cost.items() if v > 0]
        out += [lease_id, str(len(pairs))]
        for name, amount in pairs:
            out += [name, str(amount)]
    return out


def spend_arg(spends: Sequence[tuple[float, Mapping[str, int]]], now: float, exact: bool) -> str:
    """ARGV[3] of ``restore``: one line ``at (limit amount)*`` per spend (times of the limiter
    clock, sent relative to ``now`` unless ``exact``)."""
    lines = []
    for at, amounts in spends:
        parts = [time_arg(at, now, exact)]
        for name, amount in amounts.items():
            if amount:
                parts += [name, str(int(amount))]
        if len(parts) > 1:
            lines.append("\x1f".join(parts))
    return "\n".join(lines)
