"""The engine's half of the async face's lean calls: a submit or a flush encoded and sent
without the flow machinery (:class:`Started`), and a fast-path grant taken from its reply; any
other reply, or a failure, goes to the general flow (see :mod:`~quotaflow.backends.redis.lean`
for the call itself).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from quotaflow.backends.base import Decision, Request
from quotaflow.backends.redis import script as rs
from quotaflow.backends.redis.engine_state import EngineState

__all__ = ["LeanCalls", "Started"]


@dataclass(slots=True)
class Started:
    """A submit the async face sent itself (see :meth:`Engine.start_submit`)."""

    keys: list[bytes]  # with argv: the call for clients that take no packed command
    argv: list[str]
    t0: float
    taken: list[rs.Settle]
    packed: bytes = b""  # the whole command, encoded (see Codec.packed_submit)
    raw: Any = None


_NOKEYS: list[Any] = []


class LeanCalls(EngineState):
    """The lean calls' part of the engine (their general flow is the engine's)."""

    def start_submit(
        self, scope: str, request: Request, now: float, packed: bool = False
    ) -> Started | None:
        """The async face's lean submit: the call to send now (deferred settles of the scope
        included): encoded whole if ``packed``, else keys and ARGV; or None to take the
        general flow."""
        limits = self.limits.get(scope)
        if limits is None or self.exact or not self.up:
            return None
        t0 = time.monotonic()
        self.skew = now - t0
        taken: list[rs.Settle] = []
        if self.pending:
            with self.lock:
                taken = self.pending.pop(scope, [])
                self.pending_since.pop(scope, None)
        if packed:
            cmd = self.codec.packed_submit(scope, request, now, limits, now + self.roff, taken)
            return Started(_NOKEYS, _NOKEYS, t0, taken, cmd)
        argv = self.codec.argv(
            "submit",
            scope,
            rs.submit_args(request, now, False),
            limits,
            None,
            now + self.roff,
            rs.settle_args(taken, now, False) if taken else (),
            rs.cost_arg(request.cost),
        )
        return Started(self.codec.keys_bytes(scope), argv, t0, taken)

    def end_submit(self, scope: str, request: Request, now: float, s: Started) -> Decision | None:
        """The grant of a lean submit answered by the fast path; None: run :meth:`submit` with
        ``first=s`` (any other reply) or ``first=None`` after putting ``s``'s settles back."""
        raw = s.raw
        if raw.__class__ is not bytes or raw[:1] != b"G":
            return None
        rnow = float(raw[1:])
        end = now + (time.monotonic() - s.t0)
        self.roff = rnow - end
        self.calm[scope] = True
        self.contact[scope] = time.monotonic()
        with self.lock:
            self.leases[request.id] = scope
            self.ledger.granted(request.id, request.cost)
        if s.taken:
            self._applied(scope, s.taken)
        return Decision(request.id, "granted", end)

    def unstart(self, scope: str, s: Started) -> None:
        """A lean submit failed to send: its settles go back to the front of the queue."""
        self._putback(scope, s.taken, s.t0)

    def start_flush(self, scope: str, now: float) -> Started | None:
        """The async face's lean flush: the scope's deferred settles as one encoded call to
        send now (its reply goes to :meth:`flush` as ``first``), or None (nothing deferred,
        or the general flow must send it)."""
        limits = self.limits.get(scope)
        if limits is None or self.exact or not self.up:
            return None
        with self.lock:
            taken = self.pending.pop(scope, [])
            self.pending_since.pop(scope, None)
        if not taken:
            return None
        t0 = time.monotonic()
        self.skew = now - t0
        argv = self.codec.argv(
            "flush", scope, (), limits, None, now + self.roff, rs.settle_args(taken, now, False)
        )
        keys = self.codec.keys_bytes(scope)
        return Started(keys, argv, t0, taken, rs.packed_command(rs.SCRIPT_SHA, keys, argv))
