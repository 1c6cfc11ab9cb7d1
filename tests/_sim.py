"""A discrete-event simulation of a scope (pure rules, virtual time) for property tests.

Requests arrive, wait in the line, are granted by ``ScopeState``; a granted call is either
released before sending (a cancel) or sent, counted by the "server" at a random moment between
its sending and the start of its response, and settled with its real usage. The simulation
records what the server counted, so tests can check every window.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from quotaflow.backends.base import Decision, Request
from quotaflow.limits import Limit
from quotaflow.scheduler.scope import ScopeState


@dataclass
class Arrival:
    t: float
    tokens: int
    priority: int = 0
    latency: float = 0.0  # grant -> response start
    duration: float = 0.0  # response start -> settle
    actual_ratio: float = 1.0  # real tokens / estimate (<= 1 keeps the guarantee exact)
    release: bool = False  # released before sending
    cancel_after: float | None = None  # leaves the line after waiting this long


@dataclass
class SimResult:
    counted: list[tuple[float, int, int]] = field(default_factory=list)  # (t, requests, tokens)
    grants: list[tuple[float, str, float]] = field(default_factory=list)  # (t, id, arrival)
    refused: list[Decision] = field(default_factory=list)
    state: ScopeState | None = None


def simulate(
    limits: list[Limit],
    arrivals: list[Arrival],
    *,
    until: float,
    seed: int = 0,
    aging: float | None = None,
    backfill_depth: int = 8,
) -> SimResult:
    """Run the arrivals through one scope until ``until`` (virtual seconds)."""
    rng = random.Random(seed)
    st = ScopeState(limits, 0.0, aging=aging, backfill_depth=backfill_depth)
    res = SimResult(state=st)
    events: list[tuple[float, int, str, object]] = []
    seq = 0

    def push(t: float, kind: str, payload: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, payload))

    by_id: dict[str, Arrival] = {}
    for i, a in enumerate(arrivals):
        rid = f"r{i}"
        by_id[rid] = a
        push(a.t, "arrive", rid)
    timer: float | None = None

    def handle(now: float, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.outcome == "granted":
                a = by_id[d.id]
                res.grants.append((now, d.id, a.t))
                if a.release:
                    push(now, "release", d.id)
                else:
                    push(now + a.latency, "respond", (d.id, now))
            elif d.outcome == "refused":
                res.refused.append(d)

    def cost(a: Arrival) -> dict[str, int]:
        out = {}
        for lim in limits:
            out[lim.name] = 1 if lim.metric == "requests" else a.tokens
        return out

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if now > until:
            break
        if kind == "arrive":
            rid = str(payload)
            a = by_id[rid]
            mine, others = st.submit(Request(rid, cost(a), a.priority), now)
            handle(now, [mine, *others])
            if mine.outcome == "waiting" and a.cancel_after is not None:
                push(now + a.cancel_after, "cancel", rid)
        elif kind == "cancel":
            won, others = st.cancel(str(payload), now)
            handle(now, others)
            if won is not None:  # granted meanwhile: nothing to cancel
                pass
        elif kind == "release":
            handle(now, st.release(str(payload), now))
        elif kind == "respond":
            rid, granted = payload  # type: ignore[misc]
            a = by_id[rid]
            server_t = granted + rng.random() * (now - granted) if now > granted else now
            real = math.floor(a.tokens * a.actual_ratio)
            res.counted.append((server_t, 1, real))
            push(now + a.duration, "settle", (rid, now, real))
        elif kind == "settle":
            rid, started, real = payload  # type: ignore[misc]
            handle(now, st.settle(rid, {"tpm": real, "tpd": real}, started, now))
        elif kind == "timer":
            handle(now, st.dispatch(now, timer=True))
        head_at = st.head_at
        if head_at is not None and math.isfinite(head_at) and head_at != timer:
            timer = head_at
            push(head_at, "timer", None)
    return res


def max_window(counted: list[tuple[float, int, int]], period: float, index: int) -> int:
    """The largest sum of ``counted[*][index]`` in any half-open window of ``period``."""
    pts = sorted((t, c[index]) for c in counted for t in [c[0]])
    best = total = 0
    j = 0
    for i in range(len(pts)):
        total += pts[i][1]
        while pts[i][0] - pts[j][0] >= period - 1e-9:
            total -= pts[j][1]
            j += 1
        best = max(best, total)
    return best
