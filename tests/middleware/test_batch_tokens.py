"""Batch jobs hold their enqueued tokens: google-genai's ``client.batches`` against the
emulator (which enforces ``batch_enqueued_tokens`` with 429s), through the quota transports.
A job's tokens come back when a get, list, cancel or delete shows its end, or at its expiry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from google import genai
from google.genai import errors as genai_errors

from quotaflow import RPM, TPM, Limit, Limiter, ManualClock, SyncLimiter
from quotaflow.emulator import EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import batch_holds, genai_http_options

KEY = "test-key"
FLASH = "gemini-2.5-flash"
ENQUEUED = 20
JOB = [{"contents": [{"parts": [{"text": "x" * 40}], "role": "user"}]}]  # 10 tokens


def _quotaflow_info(exc: genai_errors.APIError) -> dict[str, str]:
    """The ``ErrorInfo`` metadata of a local refusal (domain ``quotaflow``), as the SDK's
    error holds it."""
    (info,) = [d for d in exc.details["error"]["details"] if d.get("domain") == "quotaflow"]
    return {"code": info["reason"], **info["metadata"]}


class TickClock:
    def __init__(self, t: float = 1_772_481_600.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _config(delay: float, enqueued: int = ENQUEUED) -> EmulatorConfig:
    return EmulatorConfig(
        minute_seconds=1.0,
        batch_delay_seconds=delay,
        models=[ModelConfig(name=FLASH, rpm=100, tpm=100_000, batch_enqueued_tokens=enqueued)],
    )


def _limiter(clock: Any = None, enqueued: int | None = ENQUEUED) -> Limiter:
    quota = [RPM(100, 1.0), TPM(100_000, 1.0)]
    if enqueued is not None:
        quota.append(Limit("batch_enqueued_tokens", enqueued, 86_400.0, "batch_tokens"))
    kw: dict[str, Any] = {} if clock is None else {"clock": clock}
    return Limiter(tier=None, quotas={FLASH: quota}, **kw)


def _rejected(served: ServedEmulator) -> int:
    entry = served.emulator.stats()["models"].get(FLASH, {})
    return int(entry.get("rejected_by_dimension", {}).get("batch_enqueued_tokens", 0))


def _held(limiter: Limiter) -> int:
    return sum(h.tokens for h in batch_holds(limiter).values())


@pytest.mark.anyio
async def test_enqueuing_waits_for_room_instead_of_earning_429() -> None:
    with serve(_config(delay=3600.0)) as served:
        limiter = _limiter()
        client = genai.Client(
            api_key=KEY, http_options=genai_http_options(limiter, base_url=served.base_url)
        )
        try:
            first = client.batches.create(model=FLASH, src=JOB)  # sync and async share holds
            second = await client.aio.batches.create(model=FLASH, src=JOB)
            assert _held(limiter) == ENQUEUED
            made: list[Any] = []

            async def third() -> None:
                made.append(await client.aio.batches.create(model=FLASH, src=JOB))

            async with anyio.create_task_group() as tg:
                tg.start_soon(third)
                await anyio.sleep(0.3)
                assert made == []  # waiting at the client: the server would say 429
                await client.aio.batches.cancel(name=first.name or "")
            assert made and made[0].name not in (first.name, second.name)
            assert set(batch_holds(limiter)) == {second.name, made[0].name}
        finally:
            await client.aio.aclose()
            client.close()
        assert _rejected(served) == 0


@pytest.mark.anyio
async def test_a_job_held_by_the_async_client_and_ended_by_the_sync_one_gives_its_room_back() -> (
    None
):
    with serve(_config(delay=3600.0)) as served:
        limiter = _limiter()
        sync = SyncLimiter.sharing(limiter)
        options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
        client = genai.Client(api_key=KEY, http_options=options)
        try:
            first = await client.aio.batches.create(model=FLASH, src=JOB)
            await client.aio.batches.create(model=FLASH, src=JOB)
            assert _held(limiter) == ENQUEUED
            hold = batch_holds(limiter)[first.name or ""]
            client.batches.cancel(name=first.name or "")  # the sync client sees its end
            assert first.name not in batch_holds(limiter)
            assert hold.permit.phase == "settled"  # ended there and then, not left to the GC
            quick: Any = {"http_options": {"headers": {"x-quotaflow-timeout": "0.5"}}}
            await client.aio.batches.create(model=FLASH, src=JOB, config=quick)  # room is back
            assert _held(limiter) == ENQUEUED
        finally:
            await client.aio.aclose()
            client.close()
        assert _rejected(served) == 0


def test_without_the_figure_the_server_refuses() -> None:
    """The same jobs with no batch figure at the client: the emulator's 429 names the limit."""
    with serve(_config(delay=3600.0)) as served:
        limiter = _limiter(enqueued=None)
        options = genai_http_options(limiter, base_url=served.base_url, max_429_retries=0)
        with genai.Client(api_key=KEY, http_options=options) as client:
            client.batches.create(model=FLASH, src=JOB)
            client.batches.create(model=FLASH, src=JOB)
            with pytest.raises(genai.errors.ClientError) as err:
                client.batches.create(model=FLASH, src=JOB)
        assert err.value.code == 429
        assert "batch_enqueued_tokens" in json.dumps(err.value.details)
        assert _rejected(served) == 1


def test_a_finished_job_seen_by_get_gives_its_tokens_back() -> None:
    clock = TickClock()
    with serve(_config(delay=10.0), clock=clock) as served:
        limiter = _limiter()
        sync = SyncLimiter.sharing(limiter)
        options = genai_http_options(limiter, sync_limiter=sync, base_url=served.base_url)
        with genai.Client(api_key=KEY, http_options=options) as client:
            job = client.batches.create(model=FLASH, src=JOB)
            assert client.batches.get(name=job.name or "").state.name == "JOB_STATE_PENDING"
            clock.t += 6
            assert client.batches.get(name=job.name or "").state.name == "JOB_STATE_RUNNING"
            assert _held(limiter) == 10
            clock.t += 5
            assert client.batches.get(name=job.name or "").state.name == "JOB_STATE_SUCCEEDED"
            assert batch_holds(limiter) == {}
            # the room is back: two jobs fit at once (each would fail if it had to wait)
            quick: Any = {"http_options": {"headers": {"x-quotaflow-timeout": "0.5"}}}
            a = client.batches.create(model=FLASH, src=JOB, config=quick)
            b = client.batches.create(model=FLASH, src=JOB, config=quick)
            assert _held(limiter) == 20
            with pytest.raises(genai_errors.ClientError) as late:
                client.batches.create(model=FLASH, src=JOB, config=quick)
            assert late.value.code == 429 and late.value.status == "RESOURCE_EXHAUSTED"
            assert _quotaflow_info(late.value)["code"] == "QUOTAFLOW_DEADLINE_EXCEEDED"
            # a job seen ended in a list, and a deleted one, give theirs back too
            clock.t += 11
            list(client.batches.list())
            assert batch_holds(limiter) == {}
            c = client.batches.create(model=FLASH, src=JOB)
            client.batches.delete(name=c.name or "")
            assert batch_holds(limiter) == {} and {a.name, b.name, c.name} != {None}


def test_a_job_whose_end_is_never_seen_expires() -> None:
    clock = ManualClock()
    with serve(_config(delay=3600.0)) as served:
        limiter = _limiter(clock=clock)
        options = genai_http_options(limiter, base_url=served.base_url, batch_expiry=100.0)
        with genai.Client(api_key=KEY, http_options=options) as client:
            client.batches.create(model=FLASH, src=JOB)
            clock.advance(99.0)
            list(client.batches.list())  # the job is still PENDING at the server
            assert _held(limiter) == 10
            clock.advance(2.0)
            list(client.batches.list())
            assert batch_holds(limiter) == {}


def test_a_file_input_is_sized_from_the_upload(tmp_path: Path) -> None:
    lines = [json.dumps({"key": f"k{i}", "request": JOB[0]}) for i in range(3)]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with serve(_config(delay=3600.0, enqueued=10_000)) as served:
        limiter = _limiter(enqueued=10_000)
        options = genai_http_options(limiter, base_url=served.base_url)
        with genai.Client(api_key=KEY, http_options=options) as client:
            uploaded = client.files.upload(file=path, config={"mime_type": "application/jsonl"})
            job = client.batches.create(model=FLASH, src=uploaded.name or "")
        hold = batch_holds(limiter)[job.name or ""]
        assert hold.tokens == -(-path.stat().st_size // 4)  # the file's bytes as text


def test_a_file_uploaded_elsewhere_is_sized_from_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps({"key": "k", "request": JOB[0]}) + "\n")
    with serve(_config(delay=3600.0, enqueued=10_000)) as served:
        plain = genai.types.HttpOptions(base_url=served.base_url)
        with genai.Client(api_key=KEY, http_options=plain) as other:  # no quotaflow
            uploaded = other.files.upload(file=path, config={"mime_type": "application/jsonl"})
        limiter = _limiter(enqueued=10_000)
        options = genai_http_options(limiter, base_url=served.base_url)
        with genai.Client(api_key=KEY, http_options=options) as client:
            job = client.batches.create(model=FLASH, src=uploaded.name or "")
        assert batch_holds(limiter)[job.name or ""].tokens == -(-path.stat().st_size // 4)


def test_bad_expiry_is_a_config_error() -> None:
    from quotaflow.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_expiry"):
        genai_http_options(_limiter(), batch_expiry=0)
