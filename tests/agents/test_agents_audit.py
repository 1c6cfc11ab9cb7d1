"""The audit log: one record per call (allowed, denied, retried, failed), sinks that never
break a call, the ``quotaflow audit`` summary, and the key in no record, log line or error."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from agents_helpers import FLASH, KEY, Records, limiter
from google import genai
from google.genai import errors

from quotaflow.agents import (
    AuditLog,
    AuditRecord,
    CallbackSink,
    JsonLinesSink,
    LoggingSink,
    key_fingerprint,
)
from quotaflow.agents.audit import path_template
from quotaflow.cli import main as cli_main
from quotaflow.emulator import ServedEmulator

POLICY = {"agents": {"researcher": {"grants": {"content": "write", "counting": "read"}}}}


def _record(agent: str = "a", **kw: object) -> AuditRecord:
    base: dict[str, object] = {
        "time": 0.0,
        "agent": agent,
        "method": "generateContent",
        "http_method": "POST",
        "path": "/v1beta/models/m:generateContent",
        "area": "content",
        "access": "write",
        "model": "m",
        "decision": "allowed",
        "reason": "granted",
        "outcome": "ok",
        "status": 200,
    }
    base.update(kw)
    return AuditRecord(**base)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_one_record_per_call_whatever_happened(
    served: ServedEmulator,
    records: Records,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    lim = limiter(POLICY)
    handle = lim.agent("researcher", audit=records.log)
    options = handle.http_options(
        base_url=served.base_url, max_5xx_retries=1, backoff=0.01, jitter=0.0
    )
    client = genai.Client(api_key=KEY, http_options=options)
    emu = served.emulator
    failures: list[BaseException] = []
    try:
        aio = client.aio
        ok = await aio.models.generate_content(model=FLASH, contents="hello there")
        async for _ in await aio.models.generate_content_stream(model=FLASH, contents="a b"):
            pass
        emu.inject(FLASH, 429, violations=["rpm"], retry_delay=0.05)
        await aio.models.generate_content(model=FLASH, contents="retried")
        emu.inject(FLASH, 500, count=2)
        with pytest.raises(errors.ServerError) as failed:
            await aio.models.generate_content(model=FLASH, contents="fails")
        emu.inject(FLASH, 429, violations=["rpd"])
        with pytest.raises(errors.ClientError) as day:
            await aio.models.generate_content(model=FLASH, contents="day")
        assert day.value.code == 429 and day.value.status == "RESOURCE_EXHAUSTED"
        (local,) = [d for d in day.value.details["error"]["details"] if d.get("domain")]
        assert local["domain"] == "quotaflow" and local["reason"] == "QUOTAFLOW_QUOTA_EXHAUSTED"
        assert local["metadata"]["dimension"] == "rpd" and local["metadata"]["resets_at"]
        with pytest.raises(errors.ClientError) as denied:
            await aio.files.list()
        failures += [failed.value, day.value, denied.value]
    finally:
        await client.aio.aclose()
        client.close()
    got = records.flushed()
    assert [r.method for r in got] == ["generateContent", "streamGenerateContent"] + [
        "generateContent"
    ] * 3 + ["list"]
    first, stream, retried, failed_r, day_r, denied_r = got
    prompt = ok.usage_metadata.prompt_token_count if ok.usage_metadata else None
    assert (first.status, first.outcome, first.tokens_actual) == (200, "ok", prompt)
    assert first.tokens_estimated > 0 and first.output_tokens and first.retries == 0
    assert first.key == key_fingerprint(KEY) and first.model == FLASH and first.wait >= 0
    assert stream.tokens_actual is not None and stream.path.endswith("?alt=sse")
    assert (retried.status, retried.retries) == (200, 1)
    assert retried.quota_id is not None and "PerMinute" in retried.quota_id
    assert (failed_r.status, failed_r.outcome, failed_r.retries) == (500, "http_error", 1)
    assert day_r.outcome == "denied" and day_r.status == 429  # answered here, not sent again
    assert day_r.error is not None and day_r.error.startswith("QuotaExhaustedError")
    assert day_r.quota_id is not None and "PerDay" in day_r.quota_id
    assert (denied_r.decision, denied_r.reason, denied_r.status) == ("denied", "no_grant", 403)
    assert all(r.agent == "researcher" and r.content_hash is None for r in got)
    # the key: in no record, no log line, no exception
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    sink.write(got)
    texts = [sink.path.read_text(), caplog.text]
    texts += [f"{e!s} {e!r} {e.args!r}" for e in failures]
    texts += [str(r.getMessage()) + repr(r.__dict__) for r in caplog.records]
    assert caplog.records, "the test must see some log lines"
    for text in texts:
        assert KEY not in text and KEY[8:30] not in text


def test_content_hash_is_optional_and_never_the_content(served: ServedEmulator) -> None:
    seen: list[AuditRecord] = []
    with AuditLog([CallbackSink(seen.append)], content_hash=True) as log:
        handle = limiter(POLICY).agent("researcher", audit=log)
        with genai.Client(
            api_key=KEY, http_options=handle.http_options(base_url=served.base_url)
        ) as client:
            client.models.generate_content(model=FLASH, contents="secret prompt")
            client.models.generate_content(model=FLASH, contents="secret prompt")
    assert seen[0].content_hash is not None and seen[0].content_hash == seen[1].content_hash
    assert "secret" not in json.dumps([r.to_dict() for r in seen])


def test_jsonl_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog([JsonLinesSink(path, max_bytes=2000, backups=2)]) as log:
        for i in range(60):
            log.emit(_record(agent=f"a{i}"))
            log.flush()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["agent"] == "a59"


def test_a_failing_sink_never_breaks_a_call_and_is_reported_once(
    served: ServedEmulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    class Broken:
        def write(self, records: list[AuditRecord]) -> None:
            raise OSError(28, "No space left on device")

    good: list[AuditRecord] = []
    with AuditLog([Broken(), CallbackSink(good.append)]) as log:
        handle = limiter(POLICY).agent("researcher", audit=log)
        with genai.Client(
            api_key=KEY, http_options=handle.http_options(base_url=served.base_url)
        ) as client:
            for _ in range(3):
                client.models.generate_content(model=FLASH, contents="still works")
                log.flush()
        assert log.dropped == 3
    assert len(good) == 3
    warnings = [r for r in caplog.records if "Broken" in r.getMessage()]
    assert len(warnings) == 1 and "OSError" in warnings[0].getMessage()


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    gate = threading.Event()
    written: list[AuditRecord] = []

    def slow(record: AuditRecord) -> None:
        gate.wait(5)
        written.append(record)

    log = AuditLog([CallbackSink(slow)], queue_size=2)
    for _ in range(20):
        log.emit(_record())  # returns at once even though the sink is stuck
    # at most the queue (2) plus what the writer already took (one batch of at most 2) got in
    assert log.dropped >= 20 - 2 * 2
    gate.set()
    log.close()
    assert len(written) + log.dropped == 20
    log.emit(_record())
    assert log.dropped + len(written) == 21  # after close: dropped, counted


def test_logging_sink_and_path_template(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="quotaflow.audit")
    with AuditLog([LoggingSink()]) as log:
        log.emit(_record(agent="indexer", status=403, decision="denied", reason="no_grant"))
    line = caplog.records[-1]
    assert "indexer denied generateContent" in line.getMessage()
    assert line.audit["reason"] == "no_grant"  # type: ignore[attr-defined]
    url = f"https://h/upload/v1beta/files?key={KEY}&upload_id=u1&alt=json"
    assert path_template(url) == "/upload/v1beta/files?alt=json"


def test_quotaflow_audit_summarizes_per_agent_and_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    JsonLinesSink(path).write(
        [
            _record("researcher", wait=0.5, tokens_estimated=10, tokens_actual=9),
            _record("researcher", wait=1.5, retries=1, quota_id="RPM", tokens_estimated=5),
            _record("researcher", decision="denied", reason="model_denied", status=403),
            _record("indexer", model="e", outcome="http_error", status=500),
        ]
    )
    assert cli_main(["audit", str(path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["agent", "model", "calls", "denied"]
    assert table[2].split()[:8] == ["researcher", "m", "3", "1", "0", "1", "1", "2.000"]
    assert cli_main(["audit", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {
        "agent": "indexer",
        "model": "e",
        "calls": 1,
        "denied": 0,
        "errors": 1,
        "rate_limited": 0,
        "retries": 0,
        "wait": 0.0,
        "max_wait": 0.0,
        "tokens_estimated": 0,
        "tokens_actual": 0,
        "output_tokens": 0,
    }
    assert rows[1]["max_wait"] == 1.5 and rows[1]["tokens_actual"] == 9
    assert cli_main(["audit", str(tmp_path / "missing.jsonl")]) == 1
    assert cli_main(["audit"]) == 2
    capsys.readouterr()
