"""Two gateway replicas on one Redis share one quota: saturated from both sides, the emulator
never answers 429 and never admits more than the limit in any window. Readiness fails while
the backend cannot be reached (``on_error="raise"``), and calls are refused without reaching
upstream."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types
from redis_helpers import free_port

sys.path.insert(0, str(Path(__file__).parents[1] / "gateway"))

from gateway_helpers import FLASH, KEY, ServedApp, running

from quotaflow.emulator import ApiKeyConfig, EmulatorConfig, ModelConfig, serve

pytestmark = pytest.mark.redis

RPM = 20


def _emulator() -> EmulatorConfig:
    return EmulatorConfig(
        keys=[ApiKeyConfig(key=KEY, project="proj")],
        minute_seconds=1.0,
        models=[ModelConfig(name=FLASH, rpm=RPM, tpm=1_000_000, rpd=100_000)],
    )


def test_two_replicas_share_one_limit(redis_url: str, namespace: str, tmp_path: Path) -> None:
    limiter = {
        "backend": f"{redis_url}?namespace={namespace}",
        "overrides": {FLASH: {"rpm": RPM, "rpd": 100_000}},
    }
    with serve(_emulator()) as em:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            running(em.base_url, tmp_path / "a", limiter=limiter) as a,
            running(em.base_url, tmp_path / "b", limiter=limiter) as b,
        ):
            stop = threading.Event()
            done: list[int] = []
            failures: list[BaseException] = []

            def loop(base_url: str, token: str) -> None:
                c = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=base_url))
                n = 0
                try:
                    while not stop.is_set():
                        c.models.generate_content(model=FLASH, contents="x")
                        n += 1
                except BaseException as exc:
                    failures.append(exc)
                done.append(n)

            threads = [
                threading.Thread(target=loop, args=(g.base_url, g.tokens["researcher"]))
                for g in (a, b)
                for _ in range(6)
            ]
            for t in threads:
                t.start()
            time.sleep(3.0)  # load duration, not an assertion
            stop.set()
            for t in threads:
                t.join(30)
            assert not failures
            served_a, served_b = len(a.seen.requests), len(b.seen.requests)
    stats = em.emulator.stats()["models"][FLASH]
    assert stats["rejected"] == 0  # no upstream 429
    assert stats["max_requests_in_window"] <= RPM  # one limit for both replicas
    # each replica alone asked for more than the limit: the limit was shared, not doubled
    assert served_a > 0 and served_b > 0
    assert served_a + served_b == stats["received"] == sum(done)


def test_readiness_fails_while_the_backend_is_unreachable(tmp_path: Path) -> None:
    limiter = {"backend": f"redis://127.0.0.1:{free_port()}/0?on_error=raise"}
    with serve(_emulator()) as em, running(em.base_url, tmp_path, limiter=limiter) as run:
        r = httpx.get(run.base_url + "/readyz")
        assert r.status_code == 503
        assert r.json()["reason"] == "backend unreachable"
        assert httpx.get(run.base_url + "/healthz").status_code == 200
        r = httpx.post(
            f"{run.base_url}/v1beta/models/{FLASH}:generateContent",
            json={"contents": [{"parts": [{"text": "x"}]}]},
            headers={"x-goog-api-key": run.tokens["researcher"]},
            timeout=30,
        )
        assert r.status_code == 503
        assert r.json()["error"]["status"] == "UNAVAILABLE"
    assert em.emulator.stats()["models"].get(FLASH, {}).get("received", 0) == 0


LIVE = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def _live_upstream() -> Any:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def live(ws: WebSocket) -> None:
        await ws.accept()
        await ws.receive_text()
        await ws.send_text(json.dumps({"setupComplete": {}}))
        with contextlib.suppress(Exception):
            while True:
                await ws.receive_text()

    return Starlette(routes=[WebSocketRoute(LIVE, live)])


@contextlib.contextmanager
def _open_live(base_url: str, token: str) -> Iterator[Any]:
    """A Live session through a gateway: admitted (the upstream's ``setupComplete`` comes
    back) or refused (the gateway closes it, raising ``ConnectionClosed``)."""
    from websockets.sync.client import connect

    url = base_url.replace("http://", "ws://") + LIVE
    with connect(url, additional_headers={"x-goog-api-key": token}) as ws:
        ws.send(json.dumps({"setup": {"model": f"models/{FLASH}"}}))
        assert "setupComplete" in json.loads(ws.recv(timeout=10))
        yield ws


def test_live_session_limits_hold_across_replicas(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    from websockets.exceptions import ConnectionClosed

    policy = {"agents": {"talker": {"grants": {"live": {"access": "write"}}}}}
    limiter = {"backend": f"{redis_url}?namespace={namespace}"}
    with ServedApp(_live_upstream()) as up:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            running(up.base_url, tmp_path / "a", ("talker",), policy=policy, limiter=limiter,
                    gateway={"live_max_per_agent": 1}) as a,
            running(up.base_url, tmp_path / "b", ("talker",), policy=policy, limiter=limiter,
                    gateway={"live_max_per_agent": 1}) as b,
        ):  # fmt: skip
            with _open_live(a.base_url, a.tokens["talker"]):
                with (
                    pytest.raises(ConnectionClosed) as refused,  # the other replica: over
                    _open_live(b.base_url, b.tokens["talker"]),
                ):
                    pass
                assert refused.value.rcvd is not None and refused.value.rcvd.code == 1013
            for _ in range(1000):  # replica a (another thread) gives the slot back
                if not a.gateway.live.per_agent["talker"]:
                    break
                time.sleep(0.01)
            with _open_live(b.base_url, b.tokens["talker"]):  # free again, on either
                pass
