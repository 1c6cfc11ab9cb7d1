"""Helpers for the gateway tests: a served gateway in front of the emulator, with tokens made
through the token file and every upstream request recorded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from quotaflow.emulator import ApiKeyConfig, EmulatorConfig, ModelConfig, OAuthClientConfig
from quotaflow.gateway import (
    Gateway,
    ServedGateway,
    TokenFile,
    gateway_config_from_dict,
    new_token,
)
from quotaflow.gateway._upstream import Upstream

KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv"  # shaped like a real key; searched for
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
PERIOD = 1.0
# the OAuth client the emulator's token endpoint knows (an authorized user's), and the lifetime
# of the access tokens it issues; the secrets are shaped like real ones and searched for
CLIENT_ID = "123456789012-emulator.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-emulatorClientSecret0123456"
REFRESH_TOKEN = "1//0emulatorRefreshToken-abcdefghijklmnopqrstuvwxyz0123456789"
EXPIRES = 2

POLICY: dict[str, Any] = {
    "agents": {
        "researcher": {
            "grants": {
                "content": {"access": "write", "models": ["gemini-2.5-flash*"]},
                "files": "write",
                "counting": "read",
            }
        },
        "indexer": {"grants": {"embeddings": "write"}},
    }
}


def emulator_config(rpm: int = 600, **kw: object) -> EmulatorConfig:
    kw.setdefault(
        "oauth_clients",
        [
            OAuthClientConfig(
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                refresh_token=REFRESH_TOKEN,
                project="proj",
                expires_in=EXPIRES,
            )
        ],
    )
    return EmulatorConfig(
        keys=[ApiKeyConfig(key=KEY, project="proj")],
        minute_seconds=PERIOD,
        models=[
            ModelConfig(name=FLASH, rpm=rpm, tpm=1_000_000, rpd=100_000),
            ModelConfig(name=PRO, rpm=rpm, tpm=1_000_000, rpd=100_000),
            ModelConfig(
                name="gemini-embedding-001", kind="embed", rpm=rpm, tpm=1_000_000, rpd=100_000
            ),
        ],
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Seen:
    """What reached the upstream through the gateway: method, URL, headers."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class Recording(httpx.AsyncBaseTransport):
    """The gateway's own upstream transport, recording each request it really sends."""

    def __init__(self, seen: Seen) -> None:
        self._inner = Upstream()
        self._seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._seen.requests.append((request.method, str(request.url), dict(request.headers)))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Running:
    served: ServedGateway
    gateway: Gateway
    tokens: dict[str, str]
    token_file: TokenFile
    seen: Seen
    audit_path: Path

    @property
    def base_url(self) -> str:
        return self.served.base_url


def gateway_config(
    upstream: str,
    tmp: Path,
    policy: Mapping[str, Any] = POLICY,
    gateway: Mapping[str, Any] | None = None,
    limiter: Mapping[str, Any] | None = None,
    upstream_auth: Mapping[str, Any] | None = None,
    transport: Mapping[str, Any] | None = None,
) -> Any:
    data: dict[str, Any] = {
        "gateway": {
            "upstream": upstream,
            "tokens_file": str(tmp / "tokens.toml"),
            "tokens_recheck": 0,
            **(gateway or {}),
        },
        "limiter": {
            "tier": "tier1",
            "minute_seconds": PERIOD,
            **(limiter or {}),
        },
        **policy,
        "audit": {"path": str(tmp / "audit.jsonl")},
    }
    if upstream_auth is not None:
        data["upstream"] = dict(upstream_auth)
    if transport is not None:
        data["transport"] = dict(transport)
    return gateway_config_from_dict(data)


def user_credentials(tmp: Path, refresh_token: str = REFRESH_TOKEN, **extra: str) -> Path:
    """An authorized-user JSON, as ``gcloud auth application-default login`` writes it."""
    import json

    path = tmp / "authorized-user.json"
    info = {
        "type": "authorized_user",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": refresh_token,
        **extra,
    }
    path.write_text(json.dumps(info), encoding="utf-8")
    return path


@contextlib.contextmanager
def running(
    upstream: str,
    tmp: Path,
    agents: tuple[str, ...] = ("researcher", "indexer"),
    serve_options: Mapping[str, Any] | None = None,
    **kw: Any,
) -> Iterator[Running]:
    config = gateway_config(upstream, tmp, **kw)
    tf = TokenFile(config.tokens_file)
    tokens: dict[str, str] = {}
    for agent in agents:
        token, entry = new_token(agent)
        tf.add(entry)
        tokens[agent] = token
    seen = Seen()
    gw = Gateway(config, key=KEY, upstream=Recording(seen))
    with ServedGateway(gw, **dict(serve_options or {})) as served:
        yield Running(served, gw, tokens, tf, seen, tmp / "audit.jsonl")


UPSTREAM_THREAD = "stand-in-upstream"


class ServedApp:
    """Any ASGI app served by uvicorn from a thread (named :data:`UPSTREAM_THREAD`) on a free
    loopback port."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        )
        self._thread: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        import threading
        import time

        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            daemon=True,
            name=UPSTREAM_THREAD,
        )
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()
