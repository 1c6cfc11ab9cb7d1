"""The ``redis`` extra: the Redis backend against a throwaway redis-server, async and sync."""

from __future__ import annotations

import shutil

import anyio
from _common import SmokeError, check, free_port, installed, main, process, wait_up

import quotaflow


def run() -> str:
    installed()
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise SmokeError("redis-server is not on PATH")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with process(cmd) as proc:
        wait_up(proc, redis.Redis(port=port).ping, "redis-server")
        limiter = quotaflow.Limiter(None, quotas={"m": [quotaflow.RPM(10)]}, backend=url)

        async def use() -> int:
            async with limiter.acquire("m") as permit:
                permit.mark_sent()
                await permit.settle()
            status = await limiter.status("m")
            limiter.close()
            await limiter.backend.aclose()
            return status["rpm"].used

        used = anyio.run(use)
        check(used == 1, f"async: rpm used {used}, expected 1")
        sync = quotaflow.SyncLimiter(None, quotas={"m": [quotaflow.RPM(10)]}, backend=url)
        with sync.acquire("m") as permit:
            permit.mark_sent()
            permit.settle()
        used = sync.status("m")["rpm"].used
        sync.close()
        check(used == 2, f"sync: rpm used {used}, expected 2 (the async call's and its own)")
    return f"redis {redis.__version__}: Limiter and SyncLimiter share one redis-server"


if __name__ == "__main__":
    main(run)
