"""Faults: Redis killed and restarted, SCRIPT FLUSH, processes SIGKILLed, policies, Cluster."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import anyio
import pytest
import redis
from redis_helpers import read_until, spawn_worker

from quotaflow import BackendError, Limit, Limiter, SyncLimiter
from quotaflow.backends.redis import RedisBackend
from quotaflow.limits import Concurrent

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RPM = {"m": [Limit("rpm", 20, 1.0)]}


async def _hammer(limiter: Limiter, until: float, stamps: list[float], model: str = "m") -> None:
    while time.monotonic() < until:
        async with limiter.acquire(model) as permit:
            permit.mark_sent()
            stamps.append(time.monotonic())
            await permit.settle()


@pytest.mark.anyio
async def test_redis_killed_and_restarted(own_redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "quotaflow.redis")
    limiter = Limiter(tier=None, quotas=RPM, backend=own_redis.url)  # on_error="wait"
    stamps: list[float] = []
    t0 = time.monotonic()
    with anyio.fail_after(60):  # a hang fails the test instead of the whole run
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(_hammer, limiter, t0 + 4.0, stamps)
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(own_redis.restart, 0.7)
            restarted = time.monotonic()
    await limiter.backend.aclose()  # type: ignore[union-attr]
    assert any(t > restarted + 0.1 for t in stamps), "admissions resumed after the restart"
    msgs = [r.getMessage() for r in caplog.records]
    assert 1 <= sum("unreachable" in m for m in msgs) <= 2
    assert 1 <= sum("reachable again" in m for m in msgs) <= 2


def test_script_flush_mid_run(own_redis: Any) -> None:
    limiter = SyncLimiter(tier=None, quotas=RPM, backend=own_redis.url)
    c = redis.Redis.from_url(own_redis.url)
    for i in range(6):
        if i % 2:
            c.script_flush()
        with limiter.acquire("m") as permit:
            permit.mark_sent()
    assert limiter.status("m")["rpm"].used == 6


def test_killed_holding_reservations_returns_them_after_the_period(
    redis_url: str, namespace: str
) -> None:
    cfg = {
        "url": redis_url,
        "ns": namespace,
        "tasks": 3,
        "mode": "hold",
        "lease_ttl": 1.0,
        "limits": [["rpm", 3, 1.0, "requests"]],
        "seconds": 60,
    }
    p = spawn_worker(cfg)
    read_until(p, "holding", 3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.stdout is not None
    p.stdout.close()
    killed = time.monotonic()
    limiter = SyncLimiter(
        tier=None,
        quotas={"m": [Limit("rpm", 3, 1.0)]},
        project="p",
        backend=f"{redis_url}?namespace={namespace}&lease_ttl=1.0",
    )
    with limiter.acquire("m", timeout=10) as permit:
        permit.mark_sent()
    waited = time.monotonic() - killed
    # the leases expire within lease_ttl, their amounts return one period later
    assert 0.8 < waited < 1.0 + 1.0 + 0.8


def test_killed_while_waiting_does_not_jam_the_line(redis_url: str, namespace: str) -> None:
    quotas = {"m": [Limit("c", 1, 1.0, reset=Concurrent())]}
    url = f"{redis_url}?namespace={namespace}&lease_ttl=1.0"
    limiter = SyncLimiter(tier=None, quotas=quotas, project="p", backend=url)
    held = limiter.acquire_nowait("m")
    cfg = {
        "url": redis_url,
        "ns": namespace,
        "tasks": 1,
        "mode": "run",
        "lease_ttl": 1.0,
        "priority": "critical",
        "limits": [["c", 1, 1.0, "requests", "conc"]],
        "seconds": 60,
    }
    p = spawn_worker(cfg)
    read_until(p, "ready")
    deadline = time.monotonic() + 10
    while limiter.waiting("m") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limiter.waiting("m") == 1
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.stdout is not None
    p.stdout.close()
    got: list[float] = []

    def low() -> None:
        with limiter.acquire("m", priority="low", timeout=10) as permit:
            got.append(time.monotonic())
            permit.release()

    t = threading.Thread(target=low)
    t.start()
    time.sleep(0.2)
    released = time.monotonic()
    held.release()
    t.join(15)
    assert got and got[0] - released < 2 * 1.0 + 1.0


def test_policy_raise_maps_errors_and_reconnects(own_redis: Any) -> None:
    backend = RedisBackend(own_redis.url, on_error="raise")
    limiter = SyncLimiter(tier=None, quotas=RPM, backend=backend)
    with limiter.acquire("m") as permit:
        permit.mark_sent()
    own_redis.kill()
    with pytest.raises(BackendError), limiter.acquire("m"):
        pass
    own_redis.start()
    deadline = time.monotonic() + 10
    while not backend._engine.up and time.monotonic() < deadline:
        time.sleep(0.05)
    with limiter.acquire("m") as permit:
        permit.mark_sent()
    backend.close()


def test_policy_local_falls_back_at_a_fraction(own_redis: Any) -> None:
    backend = RedisBackend(own_redis.url, on_error="local", local_fraction=0.5)
    limiter = SyncLimiter(tier=None, quotas={"m": [Limit("rpm", 10, 1.0)]}, backend=backend)
    with limiter.acquire("m") as permit:
        permit.mark_sent()
    own_redis.kill()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 0.8:
        with limiter.acquire("m", timeout=2) as permit:
            permit.mark_sent()
            n += time.monotonic() - t0 < 0.9
    assert 4 <= n <= 5  # half of the limit, from the memory backend
    own_redis.start()
    deadline = time.monotonic() + 10
    while not backend._engine.up and time.monotonic() < deadline:
        time.sleep(0.05)
    with limiter.acquire("m", timeout=5) as permit:
        permit.mark_sent()
    assert limiter.status("m")["rpm"].used >= 1
    backend.close()


def test_cluster_slot_owner_restarted(redis_cluster: list[Any]) -> None:
    from redis.cluster import RedisCluster

    nodes = ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster)
    url = f"redis+cluster://{nodes}?namespace=qfc{int(time.time())}"
    quotas = {m: [Limit("rpm", 100, 1.0)] for m in ("a", "b", "c")}
    limiter = SyncLimiter(tier=None, quotas=quotas, backend=url)
    for m in quotas:
        with limiter.acquire(m) as permit:
            permit.mark_sent()
    backend: Any = limiter.backend
    key = backend._e.codec.keys("default/a")[0]
    rc = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
    port = int(rc.get_node_from_key(key).port)
    rc.close()
    owner = next(n for n in redis_cluster if n.port == port)
    done: list[str] = []

    def run(model: str) -> None:
        for _ in range(20):
            with limiter.acquire(model, timeout=30) as permit:
                permit.mark_sent()
                time.sleep(0.05)
        done.append(model)

    threads = [threading.Thread(target=run, args=(m,)) for m in quotas]
    for t in threads:
        t.start()
    time.sleep(0.3)
    owner.restart(0.5)
    for t in threads:
        t.join(60)
    assert sorted(done) == ["a", "b", "c"]
