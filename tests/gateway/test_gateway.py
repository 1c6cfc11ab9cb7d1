"""The gateway in front of the emulator, driven by the real google-genai and OpenAI SDKs:
agents hold tokens, never the key; every call goes through the agent's transport; what is
refused never reaches upstream."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
from gateway_helpers import (
    CLIENT_SECRET,
    FLASH,
    KEY,
    PRO,
    REFRESH_TOKEN,
    Running,
    emulator_config,
    running,
    user_credentials,
)
from google import genai
from google.genai import errors, types

from quotaflow.emulator import ServedEmulator


def client(run: Running, token: str) -> genai.Client:
    return genai.Client(api_key=token, http_options=types.HttpOptions(base_url=run.base_url))


def received(emulator: ServedEmulator, model: str = FLASH) -> int:
    models = emulator.emulator.stats()["models"]
    return int(models.get(model, {}).get("received", 0))


def test_genai_generate_stream_and_upload_go_through_with_the_real_key(
    emulator: ServedEmulator, tmp_path: Path
) -> None:
    with running(emulator.base_url, tmp_path) as run:
        c = client(run, run.tokens["researcher"])
        assert "hello" in (c.models.generate_content(model=FLASH, contents="hello").text or "")
        chunks = list(c.models.generate_content_stream(model=FLASH, contents="streamed"))
        assert len(chunks) >= 2
        assert chunks[-1].usage_metadata is not None
        uploaded = c.files.upload(
            file=io.BytesIO(b"x" * 5000), config=types.UploadFileConfig(mime_type="text/plain")
        )
        assert uploaded.size_bytes == 5000
        assert c.files.get(name=uploaded.name or "").name == uploaded.name
    assert received(emulator) == 2
    # upstream saw the real key on every request, and never the agent's token
    assert run.seen.requests
    for _method, url, headers in run.seen.requests:
        assert headers["x-goog-api-key"] == KEY
        assert "authorization" not in headers
        assert run.tokens["researcher"] not in url
        assert "key=" not in url.lower()
    records = [json.loads(line) for line in run.audit_path.read_text().splitlines()]
    assert {r["method"] for r in records} >= {"generateContent", "streamGenerateContent", "upload"}
    assert {r["agent"] for r in records} == {"researcher"}
    stream = next(r for r in records if r["method"] == "streamGenerateContent")
    assert stream["tokens_actual"] is not None  # settled from the stream's last chunk


def test_openai_sdk_with_bearer_token(emulator: ServedEmulator, tmp_path: Path) -> None:
    with running(emulator.base_url, tmp_path) as run:
        oc = openai.OpenAI(
            api_key=run.tokens["researcher"], base_url=run.base_url + "/v1beta/openai/"
        )
        out = oc.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content
        parts = list(
            oc.chat.completions.create(
                model=FLASH, messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert parts
        bad = openai.OpenAI(api_key="not-a-token", base_url=run.base_url + "/v1beta/openai/")
        with pytest.raises(openai.PermissionDeniedError):
            bad.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "x"}])
    assert received(emulator) == 2
    for _m, _url, headers in run.seen.requests:
        assert "authorization" not in headers


def test_missing_bad_and_revoked_tokens_never_reach_upstream(
    emulator: ServedEmulator, tmp_path: Path
) -> None:
    with running(emulator.base_url, tmp_path) as run:
        url = f"{run.base_url}/v1beta/models/{FLASH}:generateContent"
        body = {"contents": [{"parts": [{"text": "x"}]}]}
        r = httpx.post(url, json=body)
        assert r.status_code == 401
        assert r.json()["error"]["status"] == "UNAUTHENTICATED"
        for bad in ("nonsense", "qfg_000000000000_" + "A" * 43, run.tokens["researcher"] + "x"):
            c = client(run, bad)
            with pytest.raises(errors.ClientError) as info:
                c.models.generate_content(model=FLASH, contents="x")
            assert info.value.code == 403
            assert info.value.status == "PERMISSION_DENIED"
        # two different credentials at once are refused too
        r = httpx.post(
            url + f"?key={run.tokens['indexer']}",
            json=body,
            headers={"x-goog-api-key": run.tokens["researcher"]},
        )
        assert r.status_code == 403
        good = client(run, run.tokens["researcher"])
        good.models.generate_content(model=FLASH, contents="ok")
        assert received(emulator) == 1
        # revoked while the gateway runs: refused at once, no restart
        entry = next(e for e in run.token_file.load() if e.agent == "researcher")
        assert run.token_file.revoke(entry.id) is not None
        with pytest.raises(errors.ClientError) as info:
            good.models.generate_content(model=FLASH, contents="after revoke")
        assert info.value.code == 403
        assert run.seen.requests and len(run.seen.requests) == 1
    assert received(emulator) == 1


def test_rotation_takes_effect_without_restart(emulator: ServedEmulator, tmp_path: Path) -> None:
    from quotaflow.gateway import new_token

    with running(emulator.base_url, tmp_path, agents=("indexer",)) as run:
        token, entry = new_token("researcher")
        c = client(run, token)
        with pytest.raises(errors.ClientError):
            c.models.generate_content(model=FLASH, contents="x")
        run.token_file.add(entry)
        c.models.generate_content(model=FLASH, contents="x")
    assert received(emulator) == 1


def test_token_in_query_key_any_spelling(emulator: ServedEmulator, tmp_path: Path) -> None:
    with running(emulator.base_url, tmp_path) as run:
        body = {"contents": [{"parts": [{"text": "x"}]}]}
        for name in ("key", "%6Bey", "$key"):
            r = httpx.post(
                f"{run.base_url}/v1beta/models/{FLASH}:generateContent?{name}="
                + run.tokens["researcher"],
                json=body,
            )
            assert r.status_code == 200, r.text
        for _m, url, _h in run.seen.requests:
            assert run.tokens["researcher"] not in url
    assert received(emulator) == 3


def test_policy_denials_never_reach_upstream(emulator: ServedEmulator, tmp_path: Path) -> None:
    with running(emulator.base_url, tmp_path) as run:
        researcher, indexer = (
            client(run, run.tokens["researcher"]),
            client(run, run.tokens["indexer"]),
        )
        with pytest.raises(errors.ClientError) as info:
            researcher.models.generate_content(model=PRO, contents="x")
        assert info.value.code == 403
        with pytest.raises(errors.ClientError) as info:
            indexer.models.generate_content(model=FLASH, contents="x")
        assert info.value.code == 403
        assert run.seen.requests == []
    assert received(emulator, PRO) == 0
    assert received(emulator, FLASH) == 0
    records = [json.loads(line) for line in run.audit_path.read_text().splitlines()]
    assert [r["reason"] for r in records] == ["model_denied", "no_grant"]


def test_body_size_limit(emulator: ServedEmulator, tmp_path: Path) -> None:
    with running(emulator.base_url, tmp_path, gateway={"max_body_bytes": 1000}) as run:
        c = client(run, run.tokens["researcher"])
        with pytest.raises(errors.ClientError) as info:
            c.models.generate_content(model=FLASH, contents="x" * 5000)
        assert info.value.code == 413
        # a chunked body without a length is cut off at the limit as well
        r = httpx.post(
            f"{run.base_url}/v1beta/models/{FLASH}:generateContent",
            content=iter([b'{"contents": "', b"y" * 2000, b'"}']),
            headers={"x-goog-api-key": run.tokens["researcher"]},
        )
        assert r.status_code == 413
        assert run.seen.requests == []
    assert received(emulator) == 0


def test_request_timeout_answers_504(tmp_path: Path) -> None:
    from quotaflow.emulator import FaultConfig, serve

    with (
        serve(emulator_config(faults=FaultConfig(latency_seconds=3.0))) as slow,
        running(slow.base_url, tmp_path, gateway={"request_timeout": 0.3}) as run,
    ):
        c = client(run, run.tokens["researcher"])
        with pytest.raises(errors.APIError) as info:
            c.models.generate_content(model=FLASH, contents="x")
        assert info.value.code == 504
        assert info.value.status == "DEADLINE_EXCEEDED"


def test_health_and_readiness(emulator: ServedEmulator, tmp_path: Path) -> None:
    with running(emulator.base_url, tmp_path) as run:
        assert httpx.get(run.base_url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(run.base_url + "/readyz").status_code == 200


def test_graceful_shutdown_finishes_in_flight_calls(tmp_path: Path) -> None:
    import threading

    from quotaflow.emulator import FaultConfig, serve

    with serve(emulator_config(faults=FaultConfig(latency_seconds=0.5))) as slow:
        run_cm = running(slow.base_url, tmp_path)
        run = run_cm.__enter__()
        result: dict[str, Any] = {}

        def call() -> None:
            c = client(run, run.tokens["researcher"])
            result["text"] = c.models.generate_content(model=FLASH, contents="late").text

        t = threading.Thread(target=call)
        t.start()
        while received(slow) == 0:  # the call is in flight upstream
            threading.Event().wait(0.01)
        run_cm.__exit__(None, None, None)  # stop, as on SIGTERM
        t.join(10)
        assert "late" in result["text"]
    records = [json.loads(line) for line in run.audit_path.read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["ok"]  # settled and audited before exit


@pytest.mark.parametrize("credentials", ["key", "oauth"])
def test_nothing_the_gateway_writes_or_returns_holds_the_key_or_a_token(
    emulator: ServedEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, credentials: str
) -> None:
    caplog.set_level(logging.DEBUG)
    returned: list[str] = []
    auth = None
    if credentials == "oauth":  # the access token, the refresh token, the client secret
        auth = {
            "credentials": "oauth",
            "credentials_file": str(user_credentials(tmp_path)),
            "token_uri": emulator.base_url + "/_emulator/oauth2/token",
        }
    with running(emulator.base_url, tmp_path, upstream_auth=auth) as run:
        tok = run.tokens["researcher"]
        base = f"{run.base_url}/v1beta/models/{FLASH}"
        body = {"contents": [{"parts": [{"text": "x"}]}]}
        calls = [
            ("POST", f"{base}:generateContent?key={tok}", body, {}),
            ("POST", f"{base}:streamGenerateContent?alt=sse", body, {"x-goog-api-key": tok}),
            ("POST", f"{base}:generateContent?key=wrong{tok}", body, {}),
            (
                "POST",
                f"{run.base_url}/v1beta/models/{PRO}:generateContent",
                body,
                {"x-goog-api-key": tok},
            ),
            ("GET", f"{run.base_url}/v1beta/files?key={quote(tok)}", None, {}),
            (
                "POST",
                f"{run.base_url}/v1beta/openai/chat/completions",
                {"model": FLASH, "messages": [{"role": "user", "content": "x"}]},
                {"authorization": f"Bearer {tok}"},
            ),
            ("GET", f"{run.base_url}/readyz", None, {}),
        ]
        for method, url, js, headers in calls:
            r = httpx.request(method, url, json=js, headers=headers)
            returned.append(r.text + json.dumps(dict(r.headers)))
        c = client(run, tok)
        c.files.upload(
            file=io.BytesIO(b"z" * 100), config=types.UploadFileConfig(mime_type="text/plain")
        )
        returned.append(repr(run.gateway) + repr(run.gateway.config) + repr(run.gateway.tokens))
        returned.append(repr(run.gateway._auth) + repr(run.gateway._auth.tokens))
    written = [run.audit_path.read_text(), run.token_file.path.read_text()]
    written += [r.getMessage() + str(r.args) for r in caplog.records]
    assert any(r.name == "quotaflow.gateway.access" for r in caplog.records)
    everything = "\n".join(returned + written)
    sent = {h["authorization"][7:] for _, _, h in run.seen.requests if "authorization" in h}
    assert bool(sent) == (credentials == "oauth")  # the access tokens that went upstream
    secrets_ = [KEY, quote(KEY, safe=""), *run.tokens.values(), *sent]
    if credentials == "oauth":
        secrets_ += [CLIENT_SECRET, REFRESH_TOKEN]
    for secret in secrets_:
        assert secret not in everything
        assert secret.lower() not in everything.lower()
