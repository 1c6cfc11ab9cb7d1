"""The emulator's OAuth token endpoint and bearer tokens: the refresh-token grant as Google's
endpoint answers it, tokens accepted until they expire by the emulator's clock, API keys
refused on the collections that need a principal, the OpenAI routes' bearer key unchanged."""

from __future__ import annotations

import httpx
import pytest

from quotaflow.clock import ManualClock
from quotaflow.emulator import ApiKeyConfig, Emulator, EmulatorConfig, OAuthClientConfig

CLIENT = OAuthClientConfig(
    client_id="cid", client_secret="csecret", refresh_token="rtoken", project="p", expires_in=60
)
GRANT = {
    "grant_type": "refresh_token",
    "client_id": "cid",
    "client_secret": "csecret",
    "refresh_token": "rtoken",
}
GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"parts": [{"text": "hi"}]}]}


@pytest.mark.anyio
async def test_token_grant_bearer_expiry_and_oauth_only() -> None:
    clock = ManualClock(1000.0)
    emulator = Emulator(
        EmulatorConfig(
            keys=[ApiKeyConfig(key="k", project="p")],
            oauth_clients=[CLIENT],
            oauth_only=["tunedModels"],
        ),
        clock=clock,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator), base_url="http://e"
    ) as http:
        token_path = "/_emulator/oauth2/token"
        bad = await http.post(token_path, data={**GRANT, "refresh_token": "nope"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
        who = await http.post(token_path, data={**GRANT, "client_secret": "nope"})
        assert who.status_code == 401 and who.json()["error"] == "invalid_client"
        kind = await http.post(token_path, data={**GRANT, "grant_type": "password"})
        assert kind.json()["error"] == "unsupported_grant_type"
        ok = await http.post(token_path, json=GRANT)  # JSON bodies too
        assert ok.status_code == 200
        body = ok.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 60
        bearer = {"authorization": "Bearer " + body["access_token"]}
        assert (await http.post(GEN, json=BODY, headers=bearer)).status_code == 200
        assert (await http.get("/v1beta/tunedModels", headers=bearer)).status_code == 200
        keyed = await http.get("/v1beta/tunedModels", headers={"x-goog-api-key": "k"})
        assert keyed.status_code == 401
        assert keyed.json()["error"]["details"][0]["reason"] == "CREDENTIALS_MISSING"
        unknown = await http.post(GEN, json=BODY, headers={"authorization": "Bearer ya29.x"})
        assert unknown.status_code == 401
        assert unknown.json()["error"]["status"] == "UNAUTHENTICATED"
        # the OpenAI routes take the key as the bearer token, as before
        chat = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "x"}]}
        oai = await http.post(
            "/v1beta/openai/chat/completions", json=chat, headers={"authorization": "Bearer k"}
        )
        assert oai.status_code == 200
        oai_token = await http.post("/v1beta/openai/chat/completions", json=chat, headers=bearer)
        assert oai_token.status_code == 200
        clock.advance(61)
        expired = await http.post(GEN, json=BODY, headers=bearer)
        assert expired.status_code == 401
        assert expired.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    assert emulator.stats()["oauth"] == {"issued": 1, "refused": 3}
