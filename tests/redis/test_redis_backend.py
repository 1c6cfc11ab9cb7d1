"""The Redis backend through the public limiters: async (asyncio and trio), sync, keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis

from quotaflow import Limit, Limiter, SyncLimiter, WouldBlockError
from quotaflow.backends.redis import RedisBackend
from quotaflow.limits import Concurrent, fixed_windows

pytestmark = pytest.mark.redis

QUOTAS = {
    "m": [Limit("rpm", 5, 1.0), Limit("tpm", 1000, 1.0, metric="input_tokens")],
    "other": [Limit("rpm", 5, 1.0)],
}


@pytest.fixture
def url(redis_url: str, namespace: str) -> str:
    return f"{redis_url}?namespace={namespace}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


# redis.asyncio runs on asyncio; under trio the backend runs the sync client in a worker
# thread (anyio.to_thread), so both anyio backends are tested.
@pytest.mark.anyio
async def test_async_limiter_admits_at_the_limit(url: str) -> None:
    limiter = Limiter(tier=None, quotas=QUOTAS, backend=url)
    t0 = time.monotonic()
    stamps: list[float] = []

    async def one() -> None:
        async with limiter.acquire("m", tokens=100) as permit:
            permit.mark_sent()
            stamps.append(time.monotonic() - t0)
            await permit.settle(input_tokens=100)

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(one)
    stamps.sort()
    assert stamps[4] < 0.5 < stamps[5]  # 5 at once, then the next period
    assert stamps[10] > 2.0
    status = await limiter.status("m")
    assert status["rpm"].limit == 5
    assert await limiter.waiting("m") == 0
    await limiter.backend.aclose()  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_nowait_and_pause_are_fleet_wide(url: str) -> None:
    a = Limiter(tier=None, quotas=QUOTAS, backend=url)
    b = Limiter(tier=None, quotas=QUOTAS, backend=RedisBackend.from_url(url))
    await a.pause("m", "rpm", a.clock.now() + 0.5)
    with pytest.raises(WouldBlockError) as info:
        await b.acquire_nowait("m")
    assert info.value.retry_after is not None and 0.2 < info.value.retry_after <= 0.6
    t0 = time.monotonic()
    async with b.acquire("m") as permit:
        permit.mark_sent()
    assert 0.3 < time.monotonic() - t0 < 1.5
    for lim in (a, b):
        await lim.backend.aclose()  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_release_in_one_backend_wakes_a_waiter_in_another(url: str) -> None:
    quotas = {"c": [Limit("conc", 1, 1.0, reset=Concurrent())]}
    a = Limiter(tier=None, quotas=quotas, backend=url)
    b = Limiter(tier=None, quotas=quotas, backend=RedisBackend.from_url(url))
    held = await a.acquire("c")
    got: list[float] = []

    async def waiter() -> None:
        async with b.acquire("c") as p:
            got.append(time.monotonic())
            await p.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.3)
        assert not got
        released = time.monotonic()
        await held.release()
    for lim in (a, b):
        await lim.backend.aclose()  # type: ignore[union-attr]
    assert got and got[0] - released < 0.2  # woken by pub/sub, not by a poll


def test_sync_limiter_uses_the_sync_face(url: str) -> None:
    limiter = SyncLimiter(tier=None, quotas=QUOTAS, backend=url)
    assert type(limiter.backend).__name__ == "SyncRedisBackend"
    t0 = time.monotonic()
    for _ in range(7):
        with limiter.acquire("m", tokens=10) as permit:
            permit.mark_sent()
            permit.settle(input_tokens=10)
    assert 0.8 < time.monotonic() - t0 < 2.0
    used = limiter.status("m")["tpm"].used
    assert 0 < used <= 50 and used % 10 == 0


def test_keys_share_a_hash_tag_and_expire(url: str, namespace: str, client: redis.Redis) -> None:
    from redis.crc import key_slot

    limiter = SyncLimiter(tier=None, quotas=QUOTAS, backend=url)
    for model in ("m", "other"):
        with limiter.acquire(model) as permit:
            permit.mark_sent()
            permit.settle()
    keys = [k.decode() for k in client.scan_iter(match=f"{namespace}:*")]
    assert keys
    slots: dict[str, set[int]] = {}
    for key in keys:
        ttl = client.pttl(key)
        assert 0 < ttl <= 3_600_000, f"{key} has no TTL"
        tag = key[key.index("{") + 1 : key.index("}")]
        slots.setdefault(tag, set()).add(key_slot(key.encode()))
    assert set(slots) == {"default/m", "default/other"}
    assert all(len(s) == 1 for s in slots.values())  # one scope, one slot
    assert slots["default/m"] != slots["default/other"]  # models spread over slots


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the lean submit is asyncio's
async def test_fast_leases_live_in_the_scope_hash_until_the_full_path_moves_them(
    url: str, client: redis.Redis
) -> None:
    backend = RedisBackend.from_url(url)
    limiter = Limiter(tier=None, quotas=QUOTAS, backend=backend)
    await limiter.status("m")  # configured; the line is empty
    a = await limiter.acquire("m", tokens=10)
    b = await limiter.acquire("m", tokens=20)
    ks, kl, ke = (backend._engine.codec.keys("default/m")[i] for i in (0, 4, 5))
    fields = {f.decode() for f in client.hkeys(ks)}
    assert {f"l:{a.id}", f"l:{b.id}"} <= fields  # granted by the fast path: in S alone
    assert not client.hexists(kl, a.id)
    a.mark_sent()
    await a.settle(input_tokens=10)  # deferred; rides on the next call (the full path's)
    level = (await limiter.status("m"))["tpm"]
    assert (level.used, level.in_flight) == (30, 20)  # used counts what is in flight
    assert not [f for f in client.hkeys(ks) if f.startswith(b"l:")]  # moved to L and E
    assert client.hexists(kl, b.id) and not client.hexists(kl, a.id)
    score = client.zscore(ke, b.id)
    assert score is not None and score > client.time()[0]
    for key in (ks, kl, ke):
        assert client.pttl(key) > 0
    b.mark_sent()
    await b.settle(input_tokens=5)  # a lease of L, settled by the fast path
    await backend.aclose()
    other = RedisBackend.from_url(url)
    level = (await Limiter(tier=None, quotas=QUOTAS, backend=other).status("m"))["tpm"]
    assert (level.used, level.in_flight) == (15, 0)
    assert not client.hexists(kl, b.id)
    await other.aclose()


def test_memory_per_scope_is_bounded(url: str, namespace: str, client: redis.Redis) -> None:
    quotas = {"m": [Limit("tpm", 10**9, 1.0, metric="input_tokens")]}
    limiter = SyncLimiter(tier=None, quotas=quotas, backend=url)
    for i in range(400):
        with limiter.acquire("m", tokens=10**6) as permit:
            permit.mark_sent()
            permit.settle(input_tokens=10**6 - i)
    z = next(k for k in client.scan_iter(match=f"{namespace}:*Z"))
    assert client.zcard(z) <= 601  # slots + 1, whatever the volume


def test_calendar_limits_and_exhaust(url: str) -> None:
    quotas = {"m": [Limit("rpd", 3, 4.0, reset=fixed_windows(4.0))]}
    limiter = SyncLimiter(tier=None, quotas=quotas, backend=url)
    resets = limiter.exhaust("m", "rpd")
    assert resets is not None and 0 < resets - limiter.clock.now() <= 4.5
    from quotaflow import QuotaExhaustedError

    with pytest.raises(QuotaExhaustedError), limiter.acquire("m"):
        pass


def test_url_options_and_password(make_redis: Any) -> None:
    server = make_redis("--requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/0?namespace=pw&on_error=raise&lease_ttl=9"
    backend = RedisBackend.from_url(url)
    assert backend.namespace == "pw"
    assert backend._engine.on_error == "raise" and backend._engine.codec.ttl == 9.0
    limiter = SyncLimiter(tier=None, quotas=QUOTAS, backend=backend)
    with limiter.acquire("m") as permit:
        permit.mark_sent()
    backend.close()


def test_sentinel_url(make_redis: Any, tmp_path: Any) -> None:
    import subprocess

    from redis_helpers import REDIS_SERVER, free_port

    master = make_redis()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
    )
    assert REDIS_SERVER is not None
    proc = subprocess.Popen(
        [REDIS_SERVER, str(conf), "--sentinel", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        url = f"redis+sentinel://127.0.0.1:{port}/mymaster?namespace=sentinel"
        limiter = SyncLimiter(tier=None, quotas=QUOTAS, backend=url)
        with limiter.acquire("m") as permit:
            permit.mark_sent()
        assert limiter.status("m")["rpm"].used == 1
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.anyio
async def test_a_deferred_settle_reaches_other_processes_without_another_call(url: str) -> None:
    # On asyncio, a settle made while nobody waits returns at once and rides on the scope's next
    # script call; with no next call, its timer sends it within milliseconds.
    quotas = {"m": [Limit("tpm", 1000, 60.0, metric="input_tokens")]}
    a = Limiter(tier=None, quotas=quotas, backend=url)
    b = Limiter(tier=None, quotas=quotas, backend=RedisBackend.from_url(url))
    p = await a.acquire("m", tokens=900)
    p.mark_sent()
    await p.settle(input_tokens=100)
    for _ in range(1000):  # b sees the real use though a made no call since
        if (await b.status("m"))["tpm"].used == 100:
            break
        await anyio.sleep(0.005)
    assert (await b.status("m"))["tpm"].used == 100
    assert (await a.status("m"))["tpm"].in_flight == 0
    for lim in (a, b):
        await lim.backend.aclose()  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_settles_ride_on_acquires_and_wake_a_waiter_elsewhere(url: str) -> None:
    quotas = {"m": [Limit("tpm", 100, 60.0, metric="input_tokens")]}
    a = Limiter(tier=None, quotas=quotas, backend=url)
    b = Limiter(tier=None, quotas=quotas, backend=RedisBackend.from_url(url))
    for _ in range(20):  # 20 estimates of 70 with real use 1: only settles make room
        p = await a.acquire("m", tokens=70)
        p.mark_sent()
        await p.settle(input_tokens=1)
    held = await a.acquire("m", tokens=70)
    held.mark_sent()
    got: list[int] = []

    async def waiter() -> None:
        async with b.acquire("m", tokens=50) as q:
            got.append(1)
            q.mark_sent()

    with anyio.fail_after(10):  # woken by the settle, not by the period's end (60 s)
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.2)
            assert not got  # 20 + 70 + 50 > 100
            await held.settle(input_tokens=10)  # deferred (a saw no line); its timer wakes b
    assert got
    status = await b.status("m")
    assert status["tpm"].used == 20 + 10 + 50 and status["tpm"].in_flight == 0
    for lim in (a, b):
        await lim.backend.aclose()  # type: ignore[union-attr]


def test_a_program_that_ends_without_close_still_sends_its_deferred_settles(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    import subprocess
    import sys
    import textwrap

    child = textwrap.dedent(
        """
        import asyncio, sys
        from quotaflow import Limit, Limiter
        async def main() -> None:
            lim = Limiter(None, quotas={"m": [Limit("tpm", 10_000, 60.0, metric="input_tokens")]},
                          backend=sys.argv[1])
            for _ in range(3):
                async with lim.acquire("m", tokens=500) as p:
                    p.mark_sent()
                    await p.settle(input_tokens=1)  # the last one is deferred: nobody waits
        asyncio.run(main())  # and no aclose()
        """
    )
    url = f"{redis_url}?namespace={namespace}"
    out = subprocess.run([sys.executable, "-c", child, url], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    lim = SyncLimiter(
        tier=None, quotas={"m": [Limit("tpm", 10_000, 60.0, metric="input_tokens")]}, backend=url
    )
    status = lim.status("m")["tpm"]
    assert (status.used, status.in_flight) == (3, 0)  # the real use, nothing held


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # settles are deferred on asyncio only
async def test_a_deferred_settle_survives_the_cancelled_call_it_rode_on(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import quotaflow.backends.redis.backend as qr

    backend = RedisBackend.from_url(url)
    lim = Limiter(tier=None, quotas=QUOTAS, backend=backend)
    for _ in range(2):  # the second settle is deferred (the line was empty at the last reply)
        p = await lim.acquire("m")
        p.mark_sent()
        await p.settle()
    assert backend._engine.pending
    real = qr._exec_async

    async def slow(client: Any, effect: Any, limit: Any) -> Any:  # e.g. waiting for a pool
        await anyio.sleep(0.5)
        return await real(client, effect, limit)

    monkeypatch.setattr(qr, "_exec_async", slow)
    with anyio.move_on_after(0.05):
        await lim.status("m")  # carries the deferred settle; cancelled before it is sent
    monkeypatch.setattr(qr, "_exec_async", real)
    assert backend._engine.pending  # kept, to ride on the next call
    status = (await lim.status("m"))["rpm"]
    assert (status.used, status.in_flight) == (2, 0)
    await backend.aclose()


def _tls_server(make_redis: Any, tmp_path: Any) -> tuple[int, str]:
    """A private redis-server with TLS on a free port and a self-signed certificate."""
    import shutil
    import subprocess

    from redis_helpers import free_port

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: apt-get install openssl (needed to make a certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
        check=True,
        capture_output=True,
    )
    port = free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    try:
        make_redis(*tls, "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS (BUILD_TLS=yes)")
    return port, str(cert)


def test_rediss_url_with_a_verified_certificate(make_redis: Any, tmp_path: Any) -> None:
    port, cert = _tls_server(make_redis, tmp_path)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required&namespace=tls"
    backend = RedisBackend.from_url(url)
    limiter = SyncLimiter(tier=None, quotas=QUOTAS, backend=backend)
    with limiter.acquire("m") as permit:
        permit.mark_sent()
    assert limiter.status("m")["rpm"].used == 1
    backend.close()


@pytest.mark.anyio
async def test_rediss_url_async(make_redis: Any, tmp_path: Any) -> None:
    port, cert = _tls_server(make_redis, tmp_path)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&namespace=tls-async"
    limiter = Limiter(tier=None, quotas=QUOTAS, backend=url)
    async with limiter.acquire("m") as permit:
        permit.mark_sent()
    assert (await limiter.status("m"))["rpm"].used == 1
    await limiter.backend.aclose()  # type: ignore[union-attr]


def test_rediss_refuses_an_unverified_server(make_redis: Any, tmp_path: Any) -> None:
    port, _ = _tls_server(make_redis, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_ca = _tls_server(make_redis, other)  # a certificate the server does not have
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={wrong_ca}&namespace=tls-bad&on_error=raise"
    from quotaflow.errors import BackendError

    backend = RedisBackend.from_url(url)
    with pytest.raises(BackendError, match=r"CERTIFICATE_VERIFY_FAILED"):
        limiter = SyncLimiter(tier=None, quotas=QUOTAS, backend=backend)
        with limiter.acquire("m", timeout=5):
            pass
    backend.close()


def test_a_configure_answered_cal_keeps_the_fast_paths_tail_counted_once(
    client: redis.Redis, namespace: str
) -> None:
    # configure moved the tail (the newest slot of fast-path settles) into the log, then
    # answered "cal" without saving: a later fast settle into that slot counted it twice
    from quotaflow.backends.base import Request
    from quotaflow.backends.redis import script as rs
    from quotaflow.limits import RPM

    codec = rs.Codec(namespace, "owner1", 30.0)
    keys = codec.keys("p/m")
    one = (RPM(10, 1.0),)
    two = (*one, Limit("rpd", 100, 10.0, "requests", fixed_windows(10.0)))

    def call(op: str, args: list[str], limits: tuple[Limit, ...], now: float, **kw: Any) -> Any:
        settles, estimate = kw.get("settles", ()), kw.get("estimate", now)
        argv = codec.argv(op, "p/m", args, limits, now, estimate, settles, kw.get("cost", ""))
        return client.eval(rs.SCRIPT, len(keys), *keys, *argv)

    call("configure", rs.configure_args(one, None, 4), one, 1000.0)
    for i, rid in enumerate(["a", "b"]):
        t = 1000.0 + 0.01 * (i + 1)
        req = Request(rid, {"rpm": 1})
        call("submit", rs.submit_args(req, t, True), one, t, cost=rs.cost_arg(req.cost))
    t = 1000.5
    call("flush", [], one, t, settles=rs.settle_args([("a", None, t)], t, True))  # the tail
    reply = call("configure", rs.configure_args(two, None, 4), two, t, estimate=t + 100.0)
    assert reply[0] == b"cal"  # no calendar window given holds the script's time
    call("flush", [], one, t, settles=rs.settle_args([("b", None, t)], t, True))
    assert int(call("status", [], one, 1000.6)[2][0][2]) == 2
    assert int(call("status", [], one, 1002.0)[2][0][2]) == 0  # both came back, no more


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the lean call is asyncio's
async def test_lean_calls_leave_connections_for_the_general_path(make_redis: Any) -> None:
    server = make_redis()
    url = f"{server.url}?namespace=maxconn&on_error=raise&max_connections=4"
    backend = RedisBackend.from_url(url)
    lim = Limiter(tier=None, quotas={"m": [Limit("rpm", 10**6, 60.0)]}, backend=backend)
    await lim.status("m")
    outcomes: list[object] = []

    async def one() -> None:
        try:
            outcomes.append(await lim.acquire("m"))
        except Exception as exc:  # a burst above max_connections may be refused
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
    from quotaflow.errors import BackendError

    with anyio.fail_after(10):  # the pool has room again: kept connections were given back
        while True:
            try:
                status = (await lim.status("m"))["rpm"]
                break
            except BackendError:  # "too many connections" counted as down until the link sees
                await anyio.sleep(0.1)  # Redis again
    assert status.in_flight == sum(1 for o in outcomes if not isinstance(o, Exception))
    await backend.aclose()


def test_why_redis_is_unreachable_never_shows_a_password() -> None:
    backend = RedisBackend.from_url("redis://:s3cret@127.0.0.1:1/0?namespace=pw-redact")
    engine = backend._engine
    engine.went_down(OSError("Error connecting to redis://:s3cret@127.0.0.1:1/0"))
    message = str(engine._unavailable(None))  # type: ignore[arg-type]
    assert "127.0.0.1:1" in message and "s3cret" not in message
    backend.close()
