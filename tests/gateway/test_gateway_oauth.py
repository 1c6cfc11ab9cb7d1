"""OAuth credentials upstream: google-auth refreshes an authorized user's access token against
the emulator's token endpoint over loopback, the gateway sends it as ``Authorization: Bearer``
(the emulator accepts only the tokens it issued, until they expire), refreshes it ahead of
expiry once for all concurrent calls, and answers agents a Gemini-shaped 502/503 when the token
endpoint fails."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from gateway_helpers import (
    CLIENT_SECRET,
    EXPIRES,
    FLASH,
    KEY,
    POLICY,
    REFRESH_TOKEN,
    Running,
    emulator_config,
    gateway_config,
    running,
    user_credentials,
)
from google import genai
from google.genai import types

from quotaflow.emulator import ServedEmulator, serve
from quotaflow.gateway import Gateway, TokenFile, new_token

BODY = {"contents": [{"parts": [{"text": "hello"}]}]}
TUNING_POLICY: dict[str, Any] = {
    "agents": {
        "researcher": {
            "grants": {**POLICY["agents"]["researcher"]["grants"], "tuning": "read"},
        }
    }
}


@pytest.fixture(scope="module")
def oauth_served() -> Iterator[ServedEmulator]:
    # the tuned-model routes refuse API keys, as Google's do for calls that need a principal
    with serve(emulator_config(oauth_only=["tunedModels"])) as served:
        yield served


@pytest.fixture
def upstream(oauth_served: ServedEmulator) -> ServedEmulator:
    oauth_served.emulator.reset()
    return oauth_served


def token_uri(emulator: ServedEmulator) -> str:
    return emulator.base_url + "/_emulator/oauth2/token"


def oauth(emulator: ServedEmulator, tmp: Path, mode: str = "oauth", **kw: Any) -> dict[str, Any]:
    return {
        "credentials": mode,
        "credentials_file": str(user_credentials(tmp, **kw)),
        "quota_project": "quota-proj",
        # google-auth refreshes an authorized user at Google's endpoint, whatever its file says
        "token_uri": token_uri(emulator),
    }


def issued(emulator: ServedEmulator) -> int:
    return int(emulator.emulator.stats()["oauth"]["issued"])


def bearers(run: Running) -> list[str]:
    return [h["authorization"] for _, _, h in run.seen.requests if "authorization" in h]


def generate(run: Running, token: str) -> str:
    c = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=run.base_url))
    return c.models.generate_content(model=FLASH, contents="hello").text or ""


def test_every_call_carries_an_access_token_refreshed_after_expiry(
    upstream: ServedEmulator, tmp_path: Path
) -> None:
    with running(upstream.base_url, tmp_path, upstream_auth=oauth(upstream, tmp_path)) as run:
        tok = run.tokens["researcher"]
        assert generate(run, tok)
        assert generate(run, tok)
        assert issued(upstream) == 1  # one refresh serves both calls
        first = bearers(run)
        assert len(first) == 2 and first[0] == first[1]
        assert first[0].startswith("Bearer ya29.emulator-")
        for _, _, headers in run.seen.requests:
            assert "x-goog-api-key" not in headers  # no key is held at all
            assert headers["x-goog-user-project"] == "quota-proj"
        time.sleep(EXPIRES + 0.3)
        # the emulator refuses the expired token: the next call only passes with a fresh one
        stale = httpx.post(
            f"{upstream.base_url}/v1beta/models/{FLASH}:generateContent",
            json=BODY,
            headers={"authorization": first[0]},
        )
        assert stale.status_code == 401
        assert stale.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
        assert generate(run, tok)
        assert issued(upstream) == 2
        assert bearers(run)[-1] != first[0]
        assert run.gateway.config.upstream_auth.credentials == "oauth"


def test_key_and_oauth_send_the_token_only_where_a_principal_is_needed(
    upstream: ServedEmulator, tmp_path: Path
) -> None:
    auth = oauth(upstream, tmp_path, mode="key+oauth")
    with running(upstream.base_url, tmp_path, upstream_auth=auth, policy=TUNING_POLICY) as run:
        tok = run.tokens["researcher"]
        assert generate(run, tok)
        listed = httpx.get(f"{run.base_url}/v1beta/tunedModels", headers={"x-goog-api-key": tok})
        assert listed.status_code == 200, listed.text
        (gen, gen_headers), (tuned, tuned_headers) = [(u, h) for _, u, h in run.seen.requests]
        assert ":generateContent" in gen and gen_headers["x-goog-api-key"] == KEY
        assert "authorization" not in gen_headers
        assert "/tunedModels" in tuned and "x-goog-api-key" not in tuned_headers
        assert tuned_headers["authorization"].startswith("Bearer ya29.emulator-")
    assert issued(upstream) == 1
    # the key alone is refused there, so the gateway's 200 came with the token
    refused = httpx.get(f"{upstream.base_url}/v1beta/tunedModels", headers={"x-goog-api-key": KEY})
    assert refused.status_code == 401
    assert refused.json()["error"]["details"][0]["reason"] == "CREDENTIALS_MISSING"


@pytest.mark.anyio
async def test_concurrent_calls_share_one_refresh_made_ahead_of_expiry(
    upstream: ServedEmulator, tmp_path: Path
) -> None:
    config = gateway_config(upstream.base_url, tmp_path, upstream_auth=oauth(upstream, tmp_path))
    token, entry = new_token("researcher")
    TokenFile(config.tokens_file).add(entry)
    gateway = Gateway(config)
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
        ) as http:

            async def call() -> None:
                r = await http.post(
                    f"/v1beta/models/{FLASH}:generateContent",
                    json=BODY,
                    headers={"x-goog-api-key": token},
                )
                statuses.append(r.status_code)

            async def burst() -> None:
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(call)

            await burst()
            assert statuses == [200] * 8
            assert issued(upstream) == 1  # one refresh in flight, shared by the 8 calls
            # past half the token's lifetime, before its expiry: refreshed ahead of it
            await anyio.sleep(EXPIRES / 2 + 0.2)
            await burst()
            assert issued(upstream) == 2
            await anyio.sleep(EXPIRES + 0.2)  # past its expiry: refreshed again
            await burst()
            assert issued(upstream) == 3
            assert statuses == [200] * 24
            assert gateway._auth.tokens is not None and gateway._auth.tokens.refreshes == 3
    finally:
        await gateway.aclose()
    assert upstream.emulator.stats()["models"][FLASH]["received"] == 24


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.mark.parametrize(
    ("how", "status", "says"),
    [
        ("refused", 502, "invalid_grant"),
        ("unreachable", 503, "cannot be reached"),
    ],
)
def test_a_failing_token_endpoint_answers_a_gemini_error_and_leaks_nothing(
    upstream: ServedEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    how: str,
    status: int,
    says: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    if how == "refused":
        auth = oauth(upstream, tmp_path, refresh_token="1//0revoked-" + "x" * 40)
    else:
        auth = oauth(upstream, tmp_path)
        auth["token_uri"] = f"http://127.0.0.1:{closed_port()}/token"
    with running(
        upstream.base_url, tmp_path, upstream_auth=auth, transport={"max_5xx_retries": 1}
    ) as run:
        tok = run.tokens["researcher"]
        r = httpx.post(
            f"{run.base_url}/v1beta/models/{FLASH}:generateContent",
            json=BODY,
            headers={"x-goog-api-key": tok},
        )
        assert r.status_code == status
        err = r.json()["error"]
        assert err["status"] == "UNAVAILABLE"
        assert err["details"][0]["reason"] == "GATEWAY_UPSTREAM_AUTH"
        assert says in err["message"]
        oai = httpx.post(
            f"{run.base_url}/v1beta/openai/chat/completions",
            json={"model": FLASH, "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {tok}"},
        )
        assert oai.status_code == status and isinstance(oai.json(), list)  # OpenAI's shape
        everything = r.text + oai.text + json.dumps(dict(r.headers))
    assert run.seen.requests == []  # nothing was sent upstream
    assert upstream.emulator.stats()["models"].get(FLASH, {}).get("received", 0) == 0
    everything += run.audit_path.read_text()
    everything += "".join(rec.getMessage() + str(rec.args) for rec in caplog.records)
    everything += repr(run.gateway._auth) + repr(run.gateway._auth.tokens)
    assert any("OAuth token refresh failed" in rec.getMessage() for rec in caplog.records)
    for secret in (CLIENT_SECRET, REFRESH_TOKEN, "1//0revoked-", KEY, tok):
        assert secret not in everything
