"""The ``[upstream]`` table: typed errors naming the key and the fix, credentials files that
cannot be used refused at start without echoing a secret, a service account's default scopes,
application default credentials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import FLASH, REFRESH_TOKEN, running, user_credentials

from quotaflow.emulator import ServedEmulator
from quotaflow.gateway import Gateway, GatewayConfigError, gateway_config_from_dict

AGENTS = {"agents": {"bot": {"grants": {"content": "write"}}}}


@pytest.mark.parametrize(
    ("upstream", "gateway", "key"),
    [
        ({"credentials": "token"}, {}, "upstream.credentials"),
        ({"credentials_file": "sa.json"}, {}, "upstream.credentials_file"),
        ({"quota_project": "p"}, {}, "upstream.quota_project"),
        ({"credentials": "oauth"}, {"key_file": "k"}, "gateway.key_file"),
        ({"credentials": "oauth"}, {"key_env": "K"}, "gateway.key_env"),
        ({"credentials": "oauth", "scopes": "x"}, {}, "upstream.scopes"),
        ({"credentials": "oauth", "scopes": []}, {}, "upstream.scopes"),
        ({"credentials": "oauth", "scopes": ["cloud-platform"]}, {}, "upstream.scopes"),
        ({"credentials": "oauth", "quota_project": "a b"}, {}, "upstream.quota_project"),
        ({"credentials": "oauth", "token_uri": "ftp://x"}, {}, "upstream.token_uri"),
        ({"credentials": "oauth", "refresh_margin": -1}, {}, "upstream.refresh_margin"),
        ({"credentials": "oauth", "credentials_file": ""}, {}, "upstream.credentials_file"),
        ({"credentials": "oauth", "client_id": "x"}, {}, "upstream.client_id"),
        ({"credentials": 1}, {}, "upstream.credentials"),
    ],
)
def test_bad_upstream_table_names_the_key(
    upstream: dict[str, Any], gateway: dict[str, Any], key: str
) -> None:
    with pytest.raises(GatewayConfigError) as info:
        gateway_config_from_dict({"gateway": gateway, "upstream": upstream, **AGENTS})
    assert info.value.key == key
    assert key in str(info.value)


def config(tmp_path: Path, **upstream: Any) -> Any:
    return gateway_config_from_dict(
        {
            "gateway": {"tokens_file": str(tmp_path / "tokens.toml")},
            "upstream": {"credentials": "oauth", **upstream},
            **AGENTS,
        },
        path=tmp_path / "gateway.toml",
    )


def test_unusable_credentials_files_are_refused_at_start_without_their_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(GatewayConfigError) as info:
        Gateway(config(tmp_path, credentials_file="missing.json"))
    assert info.value.key == "upstream.credentials_file" and "cannot read" in str(info.value)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"type": "external_account", "refresh_token": REFRESH_TOKEN}))
    with pytest.raises(GatewayConfigError) as info:
        Gateway(config(tmp_path, credentials_file="odd.json"))
    assert "authorized-user" in str(info.value) and REFRESH_TOKEN not in str(info.value)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"type": "authorized_user", "refresh_token": REFRESH_TOKEN}))
    with pytest.raises(GatewayConfigError) as info:
        Gateway(config(tmp_path, credentials_file="partial.json"))
    assert "client_id" in str(info.value)  # google-auth's word on what is missing
    assert REFRESH_TOKEN not in str(info.value)
    with pytest.raises(GatewayConfigError) as info:  # key+oauth needs the key too
        Gateway(
            config(tmp_path, credentials="key+oauth", credentials_file="partial.json"),
        )
    assert info.value.key in ("gateway.key_env", "gateway.key_file")


def test_a_service_account_gets_the_default_scopes_and_hides_its_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "gateway@proj.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    (tmp_path / "sa.json").write_text(json.dumps(info))
    gw = Gateway(config(tmp_path, credentials_file="sa.json", quota_project="billing-proj"))
    tokens: Any = gw._auth.tokens
    creds = tokens._credentials
    assert creds.service_account_email == info["client_email"]
    assert tuple(creds.default_scopes) == (
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/generative-language.retriever",
    )
    assert gw._auth.quota_project == "billing-proj"
    shown = repr(gw) + repr(gw.config) + repr(gw._auth) + repr(tokens)
    assert pem[40:80] not in shown and "0123456789abcdef" not in shown
    scoped = Gateway(config(tmp_path, credentials_file="sa.json", scopes=["https://x.test/s"]))
    assert list(scoped._auth.tokens._credentials.scopes) == ["https://x.test/s"]


def test_application_default_credentials(
    emulator: ServedEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(user_credentials(tmp_path)))
    auth = {"credentials": "oauth", "token_uri": emulator.base_url + "/_emulator/oauth2/token"}
    with running(emulator.base_url, tmp_path, upstream_auth=auth) as run:
        r = httpx.post(
            f"{run.base_url}/v1beta/models/{FLASH}:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": run.tokens["researcher"]},
        )
        assert r.status_code == 200, r.text
        assert run.seen.requests[0][2]["authorization"].startswith("Bearer ya29.emulator-")
    assert emulator.emulator.stats()["oauth"]["issued"] == 1


def test_the_docs_oauth_example_runs(tmp_path: Path) -> None:
    import re
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    from quotaflow.emulator import EmulatorConfig, serve
    from quotaflow.gateway import ServedGateway, TokenFile, new_token

    text = (Path(__file__).parents[2] / "docs" / "gateway.md").read_text()
    gw_block = re.search(r"```toml\n# gateway-oauth.toml[^\n]*\n(.*?)```", text, re.S)
    emu_block = re.search(r"```toml\n# emulator.toml[^\n]*\n(.*?)```", text, re.S)
    user = re.search(r"`(\{\"type\": \"authorized_user\".*?\})`", text, re.S)
    assert gw_block and emu_block and user
    (tmp_path / "authorized-user.json").write_text(user.group(1).replace("\n", " "))
    with serve(EmulatorConfig(**tomllib.loads(emu_block.group(1)))) as emulator:
        data = tomllib.loads(gw_block.group(1).replace("http://127.0.0.1:8000", emulator.base_url))
        gw_config = gateway_config_from_dict(data, path=tmp_path / "gateway-oauth.toml")
        token, entry = new_token("researcher")
        TokenFile(gw_config.tokens_file).add(entry)
        with ServedGateway(Gateway(gw_config)) as served:
            r = httpx.post(
                f"{served.base_url}/v1beta/models/{FLASH}:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                headers={"x-goog-api-key": token},
            )
            assert r.status_code == 200, r.text
            tuned = httpx.get(f"{served.base_url}/v1beta/tunedModels?key={token}")
            assert tuned.status_code == 200, tuned.text
        assert emulator.emulator.stats()["oauth"]["issued"] == 1
