"""The Live API's WebSocket through the gateway, with google-genai's Live client, against a
Live upstream served over loopback (the emulator has no Live API): the grant, the session
limit, the real key upstream, usage settled and audited per session.

asyncio only: google-genai's Live client runs on the websockets package's asyncio client."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from gateway_helpers import FLASH, KEY, POLICY, UPSTREAM_THREAD, ServedApp, running
from google import genai
from google.genai import types
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

pytestmark = pytest.mark.anyio

PATH = "/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class LiveUpstream:
    def __init__(self) -> None:
        self.sessions: list[dict[str, str]] = []
        self.messages: list[Any] = []

    def app(self) -> Starlette:
        async def live(ws: WebSocket) -> None:
            self.sessions.append(dict(ws.headers))
            if ws.headers.get("x-goog-api-key") != KEY:
                await ws.close(code=1008)
                return
            await ws.accept()
            self.messages.append(json.loads(await ws.receive_text()))
            await ws.send_text(json.dumps({"setupComplete": {}}))
            while True:
                try:
                    msg = json.loads(await ws.receive_text())
                except Exception:
                    return
                self.messages.append(msg)
                await ws.send_text(
                    json.dumps(
                        {
                            "serverContent": {
                                "modelTurn": {"parts": [{"text": "live hello"}]},
                                "turnComplete": True,
                            },
                            "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 9},
                        }
                    )
                )

        return Starlette(routes=[WebSocketRoute(PATH, live)])


LIVE_POLICY = {
    "agents": {
        **POLICY["agents"],
        "talker": {"grants": {"live": {"access": "write", "models": ["gemini-2.5-flash*"]}}},
    }
}


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, str]:
    """A self-signed certificate for 127.0.0.1: google-genai's Live client always connects
    with wss://, so the gateway is served with TLS here (in production: a reverse proxy)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: apt-get install openssl (needed to make a certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def _client(base_url: str, token: str, tls: dict[str, str]) -> genai.Client:
    ctx = ssl.create_default_context(cafile=tls["ssl_certfile"])
    options = types.HttpOptions(base_url=base_url, async_client_args={"ssl": ctx})
    return genai.Client(api_key=token, http_options=options)


async def _talk(c: genai.Client) -> str:
    config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
    async with c.aio.live.connect(model=FLASH, config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="hi")]), turn_complete=True
        )
        text = ""
        async for message in session.receive():
            text += message.text or ""
            if message.server_content and message.server_content.turn_complete:
                break
        return text


async def test_a_live_session_goes_through_with_the_real_key(
    tmp_path: Path, tls: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    up = LiveUpstream()
    with (
        ServedApp(up.app()) as upstream,
        running(
            upstream.base_url,
            tmp_path,
            agents=("talker",),
            policy=LIVE_POLICY,
            serve_options=tls,
        ) as run,
    ):
        assert await _talk(_client(run.base_url, run.tokens["talker"], tls)) == "live hello"
    assert len(up.sessions) == 1
    assert run.tokens["talker"] not in json.dumps(up.sessions)
    assert up.messages[0]["setup"]["model"] == f"models/{FLASH}"
    record = json.loads(run.audit_path.read_text().splitlines()[-1])
    assert record["area"] == "live" and record["decision"] == "allowed"
    assert record["tokens_actual"] == 5
    # everything but the stand-in upstream's log lines (it is Google here: it gets the key) and
    # the agent's own SDK's (it holds its token)
    ours = [
        r
        for r in caplog.records
        if r.threadName != UPSTREAM_THREAD
        and not (r.threadName == "MainThread" and r.name.startswith("websockets"))
    ]
    written = run.audit_path.read_text() + "\n".join(r.getMessage() for r in ours)
    assert any(r.name == "quotaflow.gateway.access" for r in caplog.records)
    for secret in (KEY, run.tokens["talker"]):
        assert secret not in written


async def test_no_live_grant_or_bad_token_never_reaches_upstream(
    tmp_path: Path, tls: dict[str, str]
) -> None:
    up = LiveUpstream()
    with (
        ServedApp(up.app()) as upstream,
        running(
            upstream.base_url,
            tmp_path,
            agents=("researcher", "talker"),
            policy=LIVE_POLICY,
            serve_options=tls,
        ) as run,
    ):
        with pytest.raises(Exception):  # noqa: B017 - the SDK raises on the closed socket
            await _talk(_client(run.base_url, run.tokens["researcher"], tls))
        with pytest.raises(Exception):  # noqa: B017
            await _talk(_client(run.base_url, "qfg_000000000000_" + "A" * 43, tls))
    assert up.sessions == []
    reasons = [json.loads(x)["reason"] for x in run.audit_path.read_text().splitlines()]
    assert reasons == ["no_grant"]


async def test_concurrent_session_limit(tmp_path: Path, tls: dict[str, str]) -> None:
    up = LiveUpstream()
    with (
        ServedApp(up.app()) as upstream,
        running(
            upstream.base_url,
            tmp_path,
            agents=("talker",),
            policy=LIVE_POLICY,
            gateway={"live_max_per_agent": 1},
            serve_options=tls,
        ) as run,
    ):
        c = _client(run.base_url, run.tokens["talker"], tls)
        config = types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])
        async with c.aio.live.connect(model=FLASH, config=config):
            with pytest.raises(Exception):  # noqa: B017
                await _talk(c)
        for _ in range(1000):  # the gateway (another thread) frees the slot after the close
            if not run.gateway.live.per_agent["talker"]:
                break
            await anyio.sleep(0.01)
        assert await _talk(c) == "live hello"  # the slot is free again
    assert len(up.sessions) == 2
