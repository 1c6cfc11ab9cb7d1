"""The Redis backend's one background thread per process: wake-ups, heartbeats, recovery.

* **Wake-ups.** Scripts publish the decisions they take about another process's tickets on that
  process's channel (``<namespace>:o:<owner>``); this thread receives them and hands them to the
  registered listeners, so a release in process A wakes a waiter in process B at once.
* **Heartbeats.** Every ``lease_ttl / 3`` it refreshes this process's tickets and leases (so
  the fleet drops those of a process that died) and reports what became of each, recovering a
  decision lost while the subscription was down, or re-queuing a ticket that vanished with a
  Redis restart. Each beat also serves the line, which keeps it moving if a head's owner died.
* **Deferred settles.** A settle the async face deferred goes out with the scope's next call or
  on its event loop's timer; if that loop stopped first, this thread sends it.
* **Recovery.** While Redis is unreachable it probes with backoff; under ``on_error='local'``
  it moves waiting tickets to the local fallback; when Redis is back it replays the outbox
  (settles, releases, cancels that failed), so no capacity is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from quotaflow.backends.base import Decision
from quotaflow.backends.redis import replies as rp
from quotaflow.backends.redis.effects import EngineFlow, Unavailable
from quotaflow.backends.redis.engine import Engine

__all__ = ["Link"]

log = logging.getLogger("quotaflow.redis")


class Link(threading.Thread):
    """Subscriber, heartbeat and reconnection loop of one backend (a daemon thread)."""

    def __init__(
        self,
        engine: Engine,
        client: Any,
        run: Callable[[EngineFlow], Any],
        transient: tuple[type[BaseException], ...],
        beat_every: float,
    ) -> None:
        super().__init__(name=f"quotaflow-redis-{engine.codec.owner[:8]}", daemon=True)
        self._engine = engine
        self._client = client
        self._run = run
        self._transient = transient
        self._beat_every = beat_every
        self._halt = threading.Event()
        self._pubsub: Any = None

    def stop(self) -> None:
        """Ask the thread to end (it ends within a quarter second)."""
        self._halt.set()
        self._engine.wake.set()

    def run(self) -> None:
        eng = self._engine
        next_beat = time.monotonic() + self._beat_every
        backoff = 0.05
        alive = time.monotonic()
        while not self._halt.is_set():
            # a gap longer than half a lease's life since the last turn: this process was
            # stopped (SIGSTOP, a VM pause) or starved; grants read now may be stale
            turn = time.monotonic()
            frozen, alive = turn - alive > eng.codec.ttl / 2, turn
            try:
                if not eng.up:
                    self._drop_pubsub()
                    if eng.on_error == "local":
                        migrate(eng, eng.lnow())
                    self._client.ping()
                    eng.came_up()
                    backoff = 0.05
                    next_beat = 0.0  # recover at once
                if self._pubsub is None:
                    self._subscribe()
                    next_beat = 0.0
                msg = self._pubsub.get_message(
                    ignore_subscribe_messages=True,
                    timeout=max(0.0, min(0.25, next_beat - time.monotonic())),
                )
                frozen = frozen or time.monotonic() - alive > eng.codec.ttl / 2
                while msg is not None:
                    if msg.get("type") == "message":
                        self._on_message(msg["data"], frozen)
                    msg = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
                if frozen:
                    next_beat = 0.0  # refresh what is held at once: some of it has expired
                if eng.outbox:
                    self._run(flush(eng))
                if eng.pending:  # deferred settles whose event loop never sent them
                    for scope in eng.due(0.05)[0]:
                        self._run(eng.flush(scope, eng.lnow()))
                if time.monotonic() >= next_beat or eng.wake.is_set():
                    eng.wake.clear()
                    next_beat = time.monotonic() + self._beat_every
                    self._beat()
            except Unavailable:
                self._wait(backoff)
                backoff = min(2.0, backoff * 2)
            except self._transient as exc:
                self._drop_pubsub()
                if not self._alive():  # a broken subscription alone is not an outage
                    eng.went_down(exc)
                    self._wait(backoff)
                    backoff = min(2.0, backoff * 2)
            except Exception:  # a bug must not kill the thread that wakes everyone
                log.exception("quotaflow redis link: unexpected error")
                self._wait(1.0)
        self._drop_pubsub()

    def _alive(self) -> bool:
        try:
            self._client.ping()
        except self._transient:
            return False
        return True

    def _wait(self, seconds: float) -> None:
        self._halt.wait(seconds)

    def _subscribe(self) -> None:
        ps = self._client.pubsub()
        ps.subscribe(self._engine.codec.channel)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # wait for the confirmation
            msg = ps.get_message(timeout=0.1)
            if msg is not None and msg.get("type") == "subscribe":
                break
        self._pubsub = ps
        self._engine.subscribed.set()

    def _drop_pubsub(self) -> None:
        ps, self._pubsub = self._pubsub, None
        if ps is not None:
            with contextlib.suppress(Exception):
                ps.close()

    def _on_message(self, data: Any, stale: bool = False) -> None:
        eng = self._engine
        scope, redis_now, decisions = rp.decode_message(data)
        shift = 0.0 if eng.exact else eng.lnow() - redis_now
        if stale:  # a grant made while this process was stopped may have expired since:
            fresh = []  # ask again (a lease still held is granted again at once)
            for d in decisions:
                with eng.lock:
                    t = eng.tickets.get(d.id) if d.outcome == "granted" else None
                if t is None:
                    fresh.append(d)
                    continue
                again = self._run(eng.submit(scope, t[1], eng.lnow(), wait=False))
                with eng.lock:
                    listeners = list(eng.listeners.get(scope, ()))
                for listener in listeners:
                    listener(again)
            decisions = fresh
        eng.deliver(scope, decisions, shift)

    def _beat(self) -> None:
        eng = self._engine
        with eng.lock:
            scopes = {t[0] for t in eng.tickets.values()} | set(eng.leases.values())
        for scope in sorted(scopes):
            self._run(beat(eng, scope, eng.lnow()))


def beat(eng: Engine, scope: str, now: float) -> EngineFlow:
    """Refresh this process's tickets and leases in ``scope``; recover lost decisions."""
    with eng.lock:
        tickets = [i for i, t in eng.tickets.items() if t[0] == scope]
        leases = [i for i, s in eng.leases.items() if s == scope]
    args = [str(len(tickets)), *tickets, *leases]
    t0 = time.monotonic()
    reply, shift = yield from eng.op("beat", scope, lambda cur: args, now, False)
    # a reply read more than half a lease's life after the call was sent: this process was
    # stopped (or starved) meanwhile, and a grant it reports may have expired since: ask again
    stale = time.monotonic() - t0 > eng.codec.ttl / 2
    fresh = [d for d in reply.decisions if not (stale and d.outcome == "granted")]
    eng.deliver(scope, fresh, shift)
    for d in reply.decisions if stale else ():
        if d.outcome == "granted":
            yield from _ask_again(eng, scope, d.id)
    for row in reply.result:
        rid, state, at = (rp._text(x) for x in row)
        with eng.lock:
            t = eng.tickets.get(rid)
            if state == "x" and t is None:  # expired, or lost with the state: nothing held
                eng.leases.pop(rid, None)
                eng.ledger.dropped(rid)
        if t is None:
            continue
        if state == "g" and stale:
            yield from _ask_again(eng, scope, rid)
        elif state == "g":
            eng.deliver(scope, [Decision(rid, "granted", reply.now)], shift)
        elif state == "h" and rp._num(at) != t[2]:
            eng.deliver(scope, [Decision(rid, "waiting", rp._num(at))], shift)
        elif state == "x":  # the ticket vanished (Redis restarted): queue it again
            d = yield from eng.submit(scope, t[1], eng.lnow(), wait=False)
            with eng.lock:
                listeners = list(eng.listeners.get(scope, ()))
            for listener in listeners:
                listener(d)


def _ask_again(eng: Engine, scope: str, rid: str) -> EngineFlow:
    """Submit this process's ticket ``rid`` again (a lease still held is granted again at
    once) and hand the decision to the listeners."""
    with eng.lock:
        t = eng.tickets.get(rid)
    if t is None:
        return None
    d = yield from eng.submit(scope, t[1], eng.lnow(), wait=False)
    with eng.lock:
        listeners = list(eng.listeners.get(scope, ()))
    for listener in listeners:
        listener(d)
    return None


def migrate(eng: Engine, now: float) -> None:
    """Redis is down and on_error='local': move waiting tickets to the local backend."""
    with eng.lock:
        moving = list(eng.tickets.items())
        eng.tickets.clear()
    for rid, (scope, request, _) in moving:
        eng.local_scope(scope, now)
        with eng.lock:
            eng.local_ids.add(rid)
            eng.outbox.append(("cancel", scope, (rid,)))
        d = eng.local.submit(scope, request, now)
        eng.deliver_local(scope, d)


def flush(eng: Engine) -> EngineFlow:
    """Replay cancels, settles and releases that failed while Redis was down."""
    while eng.up:
        with eng.lock:
            if not eng.outbox:
                return None
            op, scope, args = eng.outbox.popleft()
        won = yield from eng.remote(op, scope, args, eng.lnow())
        if won is not None:  # a cancel that lost the race: give the grant back
            yield from eng.remote("release", scope, args[:1], eng.lnow())
        elif op == "cancel":
            with eng.lock:
                eng.ledger.dropped(args[0])
    return None
