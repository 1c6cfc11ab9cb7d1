"""The gateway receives Gemini's batch webhooks: the emulator posts a job's end, signed, to the
gateway's webhook route, and the job's enqueued tokens come back without any agent polling.
A delivery that does not check out is refused; the route takes no agent token and sends
nothing upstream; the signing secret shows nowhere."""

from __future__ import annotations

import base64
import logging
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import FLASH, emulator_config, running
from google import genai
from google.genai import types

from quotaflow.emulator import WebhookConfig, serve
from quotaflow.gateway import GatewayConfigError
from quotaflow.transports import batch_holds

SECRET = "whsec_" + base64.b64encode(b"gateway-webhook-signing-secret-42").decode()
JOB = [{"contents": [{"parts": [{"text": "x" * 40}], "role": "user"}]}]
POLICY: dict[str, Any] = {"agents": {"batcher": {"grants": {"batch": "write"}}}}
ROUTE = "/quotaflow/webhooks/gemini"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_batch_end_posted_to_the_gateway_gives_its_tokens_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_GEMINI_WEBHOOK_SECRET", SECRET)
    port = _free_port()
    hook = WebhookConfig(uri=f"http://127.0.0.1:{port}{ROUTE}", signing_secret=SECRET)
    with serve(emulator_config(batch_delay_seconds=0.4, webhooks=[hook])) as emulator:
        gateway = {"webhook_secret_env": "TEST_GEMINI_WEBHOOK_SECRET"}
        with running(
            emulator.base_url,
            tmp_path,
            agents=("batcher",),
            policy=POLICY,
            gateway=gateway,
            serve_options={"port": port},
        ) as run:
            c = genai.Client(
                api_key=run.tokens["batcher"],
                http_options=types.HttpOptions(base_url=run.base_url),
            )
            job = c.batches.create(model=FLASH, src=JOB)
            limiter = run.gateway.limiter
            assert set(batch_holds(limiter)) == {job.name}
            deadline = time.monotonic() + 10
            while batch_holds(limiter) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert batch_holds(limiter) == {}  # no agent asked: the webhook ended it
            assert emulator.emulator.stats()["webhooks"] == {"delivered": 1, "failed": 0}

            second = c.batches.create(model=FLASH, src=JOB)
            with httpx.Client(base_url=run.base_url) as http:
                forged = http.post(
                    ROUTE,
                    content=b'{"type": "batch.succeeded", "data": {"id": "x"}}',
                    headers={
                        "webhook-id": "msg_forged",
                        "webhook-timestamp": str(int(time.time())),
                        "webhook-signature": "v1," + base64.b64encode(b"y" * 32).decode(),
                        "x-goog-api-key": run.tokens["batcher"],
                    },
                )
                assert (forged.status_code, forged.text) == (401, "bad signature")
                assert http.post(ROUTE, content=b"{}").status_code == 401  # no headers
            assert set(batch_holds(limiter)) == {second.name}  # nothing ended by them
            c.batches.cancel(name=second.name or "")  # its end seen: nothing stays held
            assert batch_holds(limiter) == {}
        assert not any("webhooks" in url for _m, url, _h in run.seen.requests)
    written = caplog.text + run.audit_path.read_text(encoding="utf-8")
    assert SECRET not in written and SECRET.removeprefix("whsec_") not in written


def test_webhook_settings_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway_helpers import gateway_config

    from quotaflow.gateway import Gateway

    with pytest.raises(GatewayConfigError, match=r"gateway\.webhook_path"):
        gateway_config("http://127.0.0.1:1", tmp_path, POLICY, gateway={"webhook_path": "x"})
    monkeypatch.setenv("TEST_EMPTY_WEBHOOK_SECRET", "")
    config = gateway_config(
        "http://127.0.0.1:1",
        tmp_path,
        POLICY,
        gateway={"webhook_secret_env": "TEST_EMPTY_WEBHOOK_SECRET"},
    )
    with pytest.raises(GatewayConfigError, match="no webhook signing secret"):
        Gateway(config, key="k")
    (tmp_path / "secret").write_text("whsec_not base64!")
    config = gateway_config(
        "http://127.0.0.1:1",
        tmp_path,
        POLICY,
        gateway={"webhook_secret_file": str(tmp_path / "secret")},
    )
    with pytest.raises(Exception, match="secret") as caught:
        Gateway(config, key="k")
    assert "not base64" not in str(caught.value)
