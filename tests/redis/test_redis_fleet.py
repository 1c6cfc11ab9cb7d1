"""A fleet of processes on one Redis behaves like one process: windows, use, priority."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest
from redis_helpers import spawn_worker

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def collect(procs: list[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    events = []
    for p in procs:
        stdout, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"worker failed: {p.returncode}"
        events += [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return events


def max_in_window(points: list[tuple[float, int]], period: float) -> int:
    """The largest sum in any half-open window [t, t + period)."""
    pts = sorted(points)
    best = total = j = 0
    for i in range(len(pts)):
        total += pts[i][1]
        while pts[i][0] - pts[j][0] >= period:
            total -= pts[j][1]
            j += 1
        best = max(best, total)
    return best


def test_four_processes_saturate_rpm_and_tpm(redis_url: str, namespace: str) -> None:
    rpm, tpm, period, seconds = 40, 4000, 1.0, 11.0
    cfg = {
        "url": redis_url,
        "ns": namespace,
        "tasks": 16,
        "seconds": seconds,
        "limits": [["rpm", rpm, period, "requests"], ["tpm", tpm, period, "input_tokens"]],
        "tokens": [60, 140],
    }
    procs = [spawn_worker({**cfg, "seed": i}) for i in range(4)]
    events = collect(procs, timeout=90)
    assert not [e for e in events if e["ev"] == "error"]
    grants = [e for e in events if e["ev"] == "grant"]
    reqs = [(e["t"], 1) for e in grants]
    toks = [(e["t"], e["tokens"]) for e in grants]
    assert max_in_window(reqs, period) <= rpm
    assert max_in_window(toks, period) <= tpm
    # use over ten whole periods from the first grant
    t0 = min(t for t, _ in reqs)
    n = 10
    in_span = [e for e in grants if e["t"] < t0 + n * period]
    use = max(len(in_span) / (rpm * n), sum(e["tokens"] for e in in_span) / (tpm * n))
    assert use >= 0.97, f"used {use:.3f} of what the limits allow"


def test_priority_holds_across_processes(redis_url: str, namespace: str) -> None:
    cfg = {
        "url": redis_url,
        "ns": namespace,
        "seconds": 7.0,
        "limits": [["rpm", 30, 1.0, "requests"]],
    }
    procs = [
        spawn_worker({**cfg, "tasks": 3, "priority": "high", "seed": 1}),
        spawn_worker({**cfg, "tasks": 16, "priority": "low", "seed": 2}),
        spawn_worker({**cfg, "tasks": 3, "priority": "high", "seed": 3}),
        spawn_worker({**cfg, "tasks": 16, "priority": "low", "seed": 4}),
    ]
    events = collect(procs, timeout=90)
    assert not [e for e in events if e["ev"] == "error"]

    def p95(prio: str) -> float:
        waits = sorted(e["wait"] for e in events if e["ev"] == "grant" and e["prio"] == prio)
        assert waits, f"no {prio} grant"
        return waits[int(0.95 * (len(waits) - 1))]

    high, low = p95("high"), p95("low")
    # typically ~0.1-0.25x; 0.4x leaves room for a loaded 2-core machine
    assert high < 0.4 * low, f"high p95 {high:.3f}s vs low p95 {low:.3f}s"
    lows = sum(1 for e in events if e["ev"] == "grant" and e["prio"] == "low")
    assert lows >= 30, "low priority must still complete"
    assert len([e for e in events if e["ev"] == "done"]) == 4


def test_unique_namespaces_do_not_share(redis_url: str) -> None:
    a, b = f"qft-{uuid.uuid4().hex[:8]}", f"qft-{uuid.uuid4().hex[:8]}"
    from quotaflow.backends.redis import RedisBackend

    ka = RedisBackend(redis_url, namespace=a)._engine.codec.keys("p/m")
    kb = RedisBackend(redis_url, namespace=b)._engine.codec.keys("p/m")
    assert not set(ka) & set(kb)
