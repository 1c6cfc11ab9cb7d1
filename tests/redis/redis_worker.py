"""A worker process for the multi-process tests: one Limiter on a shared Redis, N tasks.

Usage: python redis_worker.py <json config>. Prints one JSON line per event on stdout:
``{"ev": "grant", "t": <Redis TIME at send>, "tokens": n, "prio": p, "wait": s}``,
``{"ev": "ready"}`` once configured, ``{"ev": "holding", "id": ...}`` in hold mode.
Modes: ``run`` (acquire, "send" (read Redis TIME), settle; until ``seconds`` pass),
``hold`` (acquire ``count`` permits and never settle), ``wait`` (block in acquire).
"""

from __future__ import annotations

import json
import random
import sys
import time

import anyio
import redis.asyncio

from quotaflow import Concurrent, Limit, Limiter, Rolling


def out(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


async def main(cfg: dict) -> None:  # type: ignore[type-arg]
    quotas = {
        "m": [
            Limit(n, a, p, metric=m, reset=Concurrent() if rest else Rolling())
            for n, a, p, m, *rest in cfg["limits"]
        ]
    }
    url = f"{cfg['url']}?namespace={cfg['ns']}&lease_ttl={cfg.get('lease_ttl', 30)}"
    limiter = Limiter(tier=None, quotas=quotas, backend=url, project="p")
    r = redis.asyncio.Redis.from_url(cfg["url"])
    await limiter.status("m")
    out(ev="ready")
    rng = random.Random(cfg.get("seed", 0))
    mode = cfg.get("mode", "run")
    stop = time.monotonic() + cfg.get("seconds", 5.0)
    prio = cfg.get("priority", "normal")

    async def task() -> None:
        while time.monotonic() < stop:
            tokens = rng.randint(*cfg.get("tokens", [0, 0]))
            started = time.monotonic()
            try:
                permit = await limiter.acquire("m", tokens=tokens, priority=prio, timeout=30)
            except Exception as exc:
                out(ev="error", error=repr(exc))
                return
            waited = time.monotonic() - started
            if mode == "hold":
                out(ev="holding", id=permit.id)
                await anyio.sleep(3600)
            sec, usec = await r.time()
            permit.mark_response_started()
            out(ev="grant", t=sec + usec / 1e6, tokens=tokens, prio=prio, wait=waited)
            await permit.settle(input_tokens=tokens)

    async with anyio.create_task_group() as tg:
        for _ in range(cfg.get("tasks", 1)):
            tg.start_soon(task)
    out(ev="done")


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
