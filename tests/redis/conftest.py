"""Redis fixtures: a real ``redis-server`` (``REDIS_URL`` if set, else one started here).

Tests never FLUSHDB: each uses its own namespace and deletes its keys afterwards. Tests that
kill or restart Redis, and the Cluster tests, start servers of their own. Without a
``redis-server`` the tests skip (``apt-get install redis-server``), unless
``QUOTAFLOW_REQUIRE_REDIS=1`` (CI), where a missing server fails.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis_helpers import REDIS_CLI, REDIS_SERVER, RedisServer, free_port, need_redis


@pytest.fixture(autouse=True)
def _close_backends(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stop the background thread of every RedisBackend a test created (a thread left
    reconnecting to a killed server would outlive its test)."""
    from quotaflow.backends.redis import RedisBackend

    made: list[RedisBackend] = []
    init = RedisBackend.__init__

    def record(self: RedisBackend, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(RedisBackend, "__init__", record)
    yield
    for backend in made:
        with contextlib.suppress(Exception):
            backend.close()
    gc.collect()  # an unclosed connection warns here, in the test that leaked it


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis shared by the session's tests (they keep to their own namespaces)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A fresh key namespace; its keys are deleted after the test."""
    import redis

    ns = f"qft-{uuid.uuid4().hex[:12]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    with contextlib.suppress(Exception):
        keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may kill and restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def make_redis() -> Iterator[Any]:
    """Start Redis servers with extra arguments; all are killed after the test."""
    servers: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        servers.append(RedisServer(*args).start())
        return servers[-1]

    yield make
    for s in servers:
        s.kill()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[list[RedisServer]]:
    """Three cluster masters created with ``redis-cli --cluster create``."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        need_redis("redis-server and redis-cli")
    nodes = []
    for _ in range(3):
        port = free_port(bus=True)
        nodes.append(
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "1000",
                port=port,
            )
        )
    for n in nodes:
        n.start()
    try:
        assert REDIS_CLI is not None
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(
                [REDIS_CLI, "-p", str(nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if "cluster_state:ok" in out:
                break
            time.sleep(0.1)
        yield nodes
    finally:
        for n in nodes:
            n.kill()
