"""The lean fast path: its argument and lease layouts, and the lean call's replies and time
bound (the async face's uncontended submit)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.exceptions as rexc

from quotaflow import Limit
from quotaflow.backends import redis as qredis
from quotaflow.backends.base import Request
from quotaflow.backends.redis import clients as _redis_clients
from quotaflow.backends.redis import script as rs
from quotaflow.limits import RPM

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


class Scope:
    """One scope driven through the script with the caller's clock (exact times)."""

    def __init__(self, client: redis.Redis, namespace: str, limits: tuple[Limit, ...]) -> None:
        self.client = client
        self.codec = rs.Codec(namespace, "owner1", 30.0)
        self.keys = self.codec.keys("p/m")
        self.limits = limits

    def call(self, op: str, args: list[str], now: float, **kw: Any) -> Any:
        argv = self.codec.argv(
            op, "p/m", args, self.limits, now, now, kw.get("settles", ()), kw.get("cost", "")
        )
        return self.client.eval(rs.SCRIPT, len(self.keys), *self.keys, *argv)

    def configure(self, now: float) -> None:
        self.call("configure", rs.configure_args(self.limits, None, 4), now)

    def submit(self, rid: str, cost: dict[str, int], now: float) -> Any:
        req = Request(rid, cost)
        return self.call("submit", rs.submit_args(req, now, True), now, cost=rs.cost_arg(cost))

    def settle(self, settles: list[rs.Settle], now: float) -> Any:
        return self.call("flush", [], now, settles=rs.settle_args(settles, now, True))

    def level(self, name: str, now: float) -> tuple[int, int]:
        """(used, in flight) of a limit."""
        for row in self.call("status", [], now)[2]:
            if row[0].decode() == name:
                return int(row[2]), int(row[3])
        raise KeyError(name)


def test_the_cost_argument_holds_positive_amounts_in_request_order() -> None:
    assert rs.cost_arg({"rpm": 1, "tpm": 0, "rpd": 1}) == "rpm\x1f1\x1frpd\x1f1\x1f"
    assert rs.cost_arg({}) == ""
    assert rs.settle_args([("a", None, 2.0), ("b", {}, 2.0)], 1.0, False) == [
        "a\x1fr1.0\x1f-1",
        "b\x1fr1.0\x1f0",
    ]


@pytest.mark.parametrize("rid", ["r1", "r\u00e9"])  # ASCII, and not: framed by bytes
def test_the_lean_call_is_one_well_framed_command(rid: str) -> None:
    codec = rs.Codec("ns", "owner1", 30.0)
    req = Request(rid, {"rpm": 1, "tpm": 0, "rpd": 1})
    packed = codec.packed_submit("p/m", req, 10.0, (RPM(10, 1.0),), 10.0, [("a", {"tpm": 5}, 9.5)])
    head, rest = packed.split(b"\r\n", 1)
    args = []
    while rest:
        size, rest = rest.split(b"\r\n", 1)
        args.append(rest[: int(size[1:])])
        assert rest[int(size[1:]) : int(size[1:]) + 2] == b"\r\n"
        rest = rest[int(size[1:]) + 2 :]
    assert int(head[1:]) == len(args) == 3 + 7 + 5
    assert args[:3] == [b"EVALSHA", rs.SCRIPT_SHA_BYTES, b"7"]
    assert (
        args[11].decode() == f"{rid}\x1f0\x1f\x1f0\x1f0"
    )  # id, priority, deadline, nowait, floors
    assert args[12:] == [b"rpm\x1f1\x1frpd\x1f1\x1f", b"", b"a\x1fr-0.5\x1f1\x1ftpm\x1f5"]


def test_a_settle_sent_twice_in_one_call_is_applied_once(
    client: redis.Redis, namespace: str
) -> None:
    s = Scope(client, namespace, (RPM(10, 1.0), Limit("tpm", 1000, 1.0, "input_tokens")))
    s.configure(1000.0)
    assert s.submit("a", {"rpm": 1, "tpm": 0}, 1000.1)[:1] == b"G"  # the fast path
    twice = [("a", {"rpm": 3, "tpm": 40}, 1000.1)] * 2
    assert s.settle(twice, 1000.2)[:1] == b"K"  # the fast path: settles alone
    assert s.level("rpm", 1000.3) == (3, 0)
    assert s.level("tpm", 1000.3) == (40, 0)  # not reserved, still counted, once


def test_a_fast_lease_moves_to_l_and_e_with_its_expiry(client: redis.Redis, namespace: str) -> None:
    s = Scope(client, namespace, (RPM(10, 60.0),))
    s.configure(1000.0)
    assert s.submit("a", {"rpm": 1}, 1000.1)[:1] == b"G"
    raw = client.hget(s.keys[0], "l:a")
    assert raw is not None and raw[:1] == b"\x01"  # the fast layout: \1, expiry, cost as sent
    assert s.level("rpm", 1000.2) == (1, 1)  # the full path ran: it moved the lease
    assert not client.hexists(s.keys[0], "l:a") and client.hexists(s.keys[4], "a")
    assert client.zscore(s.keys[5], "a") == pytest.approx(1030.1)  # expires a TTL (30 s) on
    # expired: anchored half a TTL after its last sign of life (1015.1), back a period later
    assert s.level("rpm", 1030.2) == (1, 0)
    assert s.level("rpm", 1075.0) == (1, 0)
    assert s.level("rpm", 1075.3) == (0, 0)


def test_a_retried_grant_takes_nothing_more_after_the_fast_path_settles_from_l(
    client: redis.Redis, namespace: str
) -> None:
    s = Scope(client, namespace, (RPM(10, 60.0),))
    s.configure(1000.0)
    assert s.submit("a", {"rpm": 1}, 1000.1)[:1] == b"G"
    assert s.submit("c", {"rpm": 1}, 1000.1)[:1] == b"G"
    assert s.level("rpm", 1000.2) == (2, 2)  # the full path ran: a and c moved to L
    # b, granted by the fast path with a's settle riding along: a leaves L
    argv = s.codec.argv(
        "submit",
        "p/m",
        rs.submit_args(Request("b", {"rpm": 1}), 1000.3, True),
        s.limits,
        1000.3,
        1000.3,
        rs.settle_args([("a", None, 1000.3)], 1000.3, True),
        rs.cost_arg({"rpm": 1}),
    )
    assert client.eval(rs.SCRIPT, len(s.keys), *s.keys, *argv)[:1] == b"G"
    # c's submit again (its reply was lost): c is still in L, so it takes nothing more
    assert s.submit("c", {"rpm": 1}, 1000.4)[:1] == b"G"
    assert s.submit("b", {"rpm": 1}, 1000.4)[:1] == b"G"  # and b's, held in S
    assert s.level("rpm", 1000.5) == (3, 2)  # a settled; b and c in flight, once each


def test_a_fast_lease_of_the_older_layout_falls_through_and_is_moved(
    client: redis.Redis, namespace: str
) -> None:
    s = Scope(client, namespace, (RPM(10, 1.0),))
    s.configure(1000.0)
    assert s.submit("a", {"rpm": 1}, 1000.1)[:1] == b"G"
    # as an older fast path wrote it: cmsgpack {c, o, e}
    client.eval(
        "redis.call('HSET', KEYS[1], 'l:a', cmsgpack.pack({c = {'rpm', 1}, o = 'owner1',"
        " e = 1030.1})) return 1",
        1,
        s.keys[0],
    )
    reply = s.settle([("a", {"rpm": 2}, 1000.2)], 1000.2)
    assert isinstance(reply, list) and reply[0] == b"ok"  # the full path answered
    assert not client.hexists(s.keys[0], "l:a") and not client.hexists(s.keys[4], "a")
    assert s.level("rpm", 1000.3) == (2, 0)


def test_the_fast_reply_carries_redis_time(client: redis.Redis, namespace: str) -> None:
    # "G<seconds>.<6 digits>" from TIME: microseconds below 100000 are padded (a tenth of
    # the calls here)
    s = Scope(client, namespace, (RPM(10**6, 60.0),))
    s.configure(0.0)
    for i in range(100):
        req = Request(f"t{i}", {"rpm": 1})
        argv = s.codec.argv(
            "submit",
            "p/m",
            rs.submit_args(req, 0.0, False),
            s.limits,
            None,
            0.0,
            (),
            "rpm\x1f1\x1f",
        )
        sec, usec = client.time()
        before = sec + usec / 1e6
        reply = client.eval(rs.SCRIPT, len(s.keys), *s.keys, *argv)
        sec, usec = client.time()
        if i == 0:  # configured at time 0 (exact): the full path runs first, at TIME
            assert reply[0] == b"ok"
            continue
        assert reply[:1] == b"G" and len(reply.split(b".")[1]) == 6
        assert before <= float(reply[1:]) <= sec + usec / 1e6


def _packed(*args: str | bytes) -> bytes:
    """A command in RESP, as the engine encodes its submit."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        raw = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the lean call is asyncio's
async def test_the_lean_call_reads_what_scripts_answer(redis_url: str, namespace: str) -> None:
    # the replies a script gives, read by redis-py's parser through the connection's public
    # calls, on a real server; an error reply leaves the connection usable
    backend = qredis.RedisBackend(redis_url, namespace=namespace, exact_time=True)
    try:
        lean = backend._lean()
        assert lean.pool is not None

        async def call(script: str) -> Any:
            return await backend._call_packed(lean, _packed("EVAL", script, "0"))

        assert await call("return 'G1795900231.012345'") == b"G1795900231.012345"
        assert await call("return {'ok', {7, ''}, false}") == [b"ok", [7, b""], None]
        assert await call("return redis.status_reply('OK')") == b"OK"
        with pytest.raises(rexc.NoScriptError):
            await backend._call_packed(lean, _packed("EVALSHA", "0" * 40, "0"))
        with pytest.raises(rexc.ResponseError, match="boom"):
            await call("return redis.error_reply('ERR boom')")
        assert await call("return 5") == 5  # the connection survived the error replies
        assert len(lean.free) == 1  # one connection, kept out of the pool between calls
    finally:
        await backend.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("own", [False, True], ids=["default-bound", "url-socket-timeout"])
async def test_a_lean_call_to_a_silent_server_times_out(
    monkeypatch: pytest.MonkeyPatch, own: bool
) -> None:
    # a server that accepts and never answers: the call must fail within its bound (the
    # backend's default, or the URL's own socket_timeout), as a TimeoutError, leaving the task
    # uncancelled
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(-1)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    if own:
        url += "?socket_timeout=0.2"
    else:
        monkeypatch.setattr(
            _redis_clients, "_TIMEOUTS", {"socket_timeout": 0.2, "socket_connect_timeout": 2.0}
        )
    backend = qredis.RedisBackend(url, exact_time=True)
    try:
        lean = backend._lean()
        t0 = time.monotonic()
        if sys.version_info < (3, 11):  # no watchdog (it needs Task.uncancel): redis-py's bound
            assert lean.limit is None
            with pytest.raises(rexc.TimeoutError):
                await backend._call_packed(lean, b"*1\r\n$4\r\nPING\r\n")
            assert 0.2 <= time.monotonic() - t0 < 1.0
            return
        assert lean.limit == 0.2
        with pytest.raises(TimeoutError):
            await backend._call_packed(lean, b"*1\r\n$4\r\nPING\r\n")
        assert 0.2 <= time.monotonic() - t0 < 1.0
        task: Any = asyncio.current_task()
        assert task.cancelling() == 0
        await asyncio.sleep(0)  # no cancellation is left pending
        assert not lean.calls and not lean.expired
        # a cancellation from outside stays a cancellation
        call = asyncio.ensure_future(backend._call_packed(lean, b"*1\r\n$4\r\nPING\r\n"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        await backend.aclose()
        server.close()
        for writer in accepted:
            writer.close()
        await server.wait_closed()
