"""Native routes of the batch and tuned-model areas.

A batch job's state follows from the clock: PENDING, RUNNING, then SUCCEEDED once
``batch_delay_seconds`` have passed (CANCELLED once cancelled). Its responses are computed at
creation (deterministic) and shown once done. Batch jobs do not spend the interactive quota
(Gemini meters them separately): a generate job holds its requests' input tokens against the
model's ``batch_enqueued_tokens`` while it is PENDING or RUNNING, and a job that would take the
project past it is refused with a 429 whose QuotaFailure names ``batch_enqueued_tokens``.
A tuned model is ACTIVE ``tuning_delay_seconds`` after creation; generating with it spends its
base model's quota.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from ._engine import EmulatorState
from ._errors import (
    JSON,
    ErrorReply,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
)
from ._generate import prepare, response_json
from ._h_content import _embed_one, generate_with
from ._http import Ctx, json_response
from ._quota import Violation
from ._store import BatchRecord, FileRecord, TunedRecord, paginate, timestamp

__all__ = [
    "cancel_batch",
    "create_batch",
    "create_tuned",
    "delete_batch",
    "delete_tuned",
    "get_batch",
    "get_tuned",
    "list_batches",
    "list_tuned",
    "tuned_generate",
]

_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main."


def _page(ctx: Ctx, items: list[Any]) -> tuple[list[Any], str | None]:
    try:
        return paginate(items, ctx.query("pageSize"), ctx.query("pageToken"), 10, 1000)
    except ValueError as exc:
        raise invalid_argument(str(exc)) from exc


# --- batches -----------------------------------------------------------------------------------


def _inputs(ctx: Ctx, config: Any) -> tuple[list[tuple[JSON, Any]], bool]:
    """(metadata or key, request) pairs from inline requests or a JSONL file."""
    if not isinstance(config, dict):
        raise invalid_argument("* Batch.input_config: input_config is not specified\n")
    if config.get("fileName"):
        with ctx.engine.lock:
            record = ctx.engine.store.files.get(str(config["fileName"]))
        if record is None or record.project != ctx.project:
            raise not_found(f"File {config['fileName']} not found.")
        try:
            lines = [json.loads(x) for x in record.data.decode().splitlines() if x.strip()]
        except ValueError as exc:
            raise invalid_argument("Batch input file is not valid JSONL.") from exc
        return [({"key": x.get("key")}, x.get("request")) for x in lines], True
    inlined = (config.get("requests") or {}).get("requests")
    if not isinstance(inlined, list) or not inlined:
        raise invalid_argument("* Batch.input_config: requests is not specified\n")
    return [(r.get("metadata") or {}, r.get("request")) for r in inlined], False


async def create_batch(ctx: Ctx, *, embed: bool) -> Response:
    """POST :batchGenerateContent and :asyncBatchEmbedContent."""
    engine = ctx.engine
    method = "asyncBatchEmbedContent" if embed else "batchGenerateContent"
    model = engine.resolve(ctx.ident or "", method, ctx.version)
    batch = (await ctx.object()).get("batch")
    if not isinstance(batch, dict):
        raise invalid_argument("* batch: batch is not specified\n")
    inputs, from_file = _inputs(ctx, batch.get("inputConfig"))
    results: list[JSON] = []
    enqueued = 0
    for meta, request in inputs:
        if embed:
            response: JSON = {"embedding": {"values": _embed_one(ctx, model, request, method)[1]}}
        else:
            prompt = prepare(engine, ctx.project, model, request)
            enqueued += prompt.tokens.total
            with engine.lock:
                response = response_json(prompt, engine.store.new_id("response"))
        results.append(
            {"response": response, **({"key": meta["key"]} if from_file else {"metadata": meta})}
        )
    with engine.lock:
        now = engine.clock()
        _check_enqueued(engine, ctx.project, model.name, enqueued, now)
        name = f"batches/{engine.store.new_id('batch')}"
        record = BatchRecord(
            project=ctx.project,
            name=name,
            model=model.name,
            kind="embed" if embed else "generate",
            display_name=batch.get("displayName"),
            results=results,
            create_time=now,
            done_time=now + engine.config.batch_delay_seconds,
            output_file=f"files/batch-{name.split('/')[1]}" if from_file else None,
            tokens=enqueued,
        )
        engine.store.batches[name] = record
        answer = json_response(_batch_json(ctx, record))
    engine.webhooks.watch(record)
    return answer


ENQUEUED_QUOTA_ID = "EnqueuedTokensPerModelPerProject"
"""The emulator's quotaId for ``batch_enqueued_tokens`` (UNCONFIRMED: no real 429 body seen)."""


def _check_enqueued(
    engine: EmulatorState, project: str, model: str, tokens: int, now: float
) -> None:
    """Raise the 429 for a job that would take the project's active jobs of ``model`` past
    ``batch_enqueued_tokens`` (caller holds the lock)."""
    config = engine.config.model(model)
    limit = config.batch_enqueued_tokens if config is not None else None
    if limit is None:
        return
    active = [
        b
        for b in engine.store.batches.values()
        if b.project == project and b.model == model and b.kind == "generate"
        if _state(b, now) in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
    ]
    held = sum(b.tokens for b in active)
    if held + tokens <= limit:
        return
    engine.stats.rejected(model, ["batch_enqueued_tokens"])
    fits = tokens <= limit
    wait = min((b.done_time - now for b in active), default=engine.config.minute_seconds)
    violation = Violation(
        "batch_enqueued_tokens",
        limit,
        "generativelanguage.googleapis.com/batch_enqueued_tokens",
        ENQUEUED_QUOTA_ID,
        max(0.0, wait),
        fits,
    )
    raise resource_exhausted([violation], model, max(0.0, wait), engine.config.retry_delay_format)


def _state(record: BatchRecord, now: float) -> str:
    if record.cancel_time is not None:
        return "BATCH_STATE_CANCELLED"
    if now >= record.done_time:
        return "BATCH_STATE_SUCCEEDED"
    halfway = (record.create_time + record.done_time) / 2
    return "BATCH_STATE_RUNNING" if now >= halfway else "BATCH_STATE_PENDING"


def _batch_json(ctx: Ctx, record: BatchRecord) -> JSON:
    """Operation form of a batch (caller holds the lock)."""
    engine = ctx.engine
    now = engine.clock()
    state = _state(record, now)
    done = state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED")
    n = len(record.results)
    kind = "EmbedContentBatch" if record.kind == "embed" else "GenerateContentBatch"
    meta: JSON = {
        "@type": _TYPE + kind,
        "model": f"models/{record.model}",
        "state": state,
        "createTime": timestamp(record.create_time),
        "updateTime": timestamp(min(now, record.cancel_time or record.done_time)),
        "batchStats": {
            "requestCount": str(n),
            "pendingRequestCount": "0" if done else str(n),
            "successfulRequestCount": str(n) if state == "BATCH_STATE_SUCCEEDED" else "0",
        },
    }
    if record.display_name:
        meta["displayName"] = record.display_name
    out: JSON = {"name": record.name, "metadata": meta, "done": done}
    if done:
        meta["endTime"] = timestamp(record.cancel_time or record.done_time)
    if state == "BATCH_STATE_SUCCEEDED":
        if record.output_file:
            _materialize(engine, record)
            output: JSON = {"responsesFile": record.output_file}
        else:
            output = {"inlinedResponses": {"inlinedResponses": record.results}}
        meta["output"] = output
        out["response"] = {"@type": _TYPE + kind + "Output", **output}
    return out


def _materialize(engine: EmulatorState, record: BatchRecord) -> None:
    name = record.output_file or ""
    if name not in engine.store.files:
        data = "".join(json.dumps(r) + "\n" for r in record.results).encode()
        engine.store.files[name] = FileRecord(
            project=record.project,
            name=name,
            display_name=None,
            mime_type="application/jsonl",
            data=data,
            create_time=record.done_time,
            expire_time=record.done_time + engine.config.file_ttl_seconds,
            source="GENERATED",
        )


def _batch(ctx: Ctx) -> BatchRecord:
    record = ctx.engine.store.batches.get(f"batches/{ctx.ident}")
    if record is None or record.project != ctx.project:
        raise not_found(f"Batch batches/{ctx.ident} not found.")
    return record


async def list_batches(ctx: Ctx) -> Response:
    """GET /{v}/batches."""
    with ctx.engine.lock:
        page, token = _page(ctx, ctx.engine.store.owned(ctx.engine.store.batches, ctx.project))
        out: JSON = {"operations": [_batch_json(ctx, b) for b in page]}
    if token:
        out["nextPageToken"] = token
    return json_response(out)


async def get_batch(ctx: Ctx) -> Response:
    """GET /{v}/batches/{id}."""
    with ctx.engine.lock:
        return json_response(_batch_json(ctx, _batch(ctx)))


async def cancel_batch(ctx: Ctx) -> Response:
    """POST /{v}/batches/{id}:cancel; a finished job stays as it is."""
    with ctx.engine.lock:
        record = _batch(ctx)
        now = ctx.engine.clock()
        cancelled = record.cancel_time is None and now < record.done_time
        if cancelled:
            record.cancel_time = now
    if cancelled:
        ctx.engine.webhooks.cancelled(record)
    return json_response({})


async def delete_batch(ctx: Ctx) -> Response:
    """DELETE /{v}/batches/{id}."""
    with ctx.engine.lock:
        del ctx.engine.store.batches[_batch(ctx).name]
    return json_response({})


# --- tuned models ------------------------------------------------------------------------------


def _tuned_json(record: TunedRecord, now: float) -> JSON:
    active = now >= record.ready_time
    task: JSON = {
        "startTime": timestamp(record.create_time),
        "snapshots": [],
        "hyperparameters": record.hyperparameters,
    }
    if active:
        task["completeTime"] = timestamp(record.ready_time)
    out: JSON = {
        "name": record.name,
        "baseModel": f"models/{record.base_model}",
        "state": "ACTIVE" if active else "CREATING",
        "createTime": timestamp(record.create_time),
        "updateTime": timestamp(min(now, record.ready_time)),
        "tuningTask": task,
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
    }
    if record.display_name:
        out["displayName"] = record.display_name
    return out


def _tuned(ctx: Ctx) -> TunedRecord:
    record = ctx.engine.store.tuned.get(f"tunedModels/{ctx.ident}")
    if record is None or record.project != ctx.project:
        raise not_found(f"Tuned model tunedModels/{ctx.ident} does not exist.")
    return record


async def create_tuned(ctx: Ctx) -> Response:
    """POST /{v}/tunedModels: start tuning; answers the long-running Operation."""
    engine = ctx.engine
    body = await ctx.object()
    base = engine.resolve(str(body.get("baseModel", "")), "generateContent", ctx.version)
    task = body.get("tuningTask") or {}
    hyper = task.get("hyperparameters") if isinstance(task, dict) else None
    with engine.lock:
        now = engine.clock()
        name = f"tunedModels/{ctx.query('tunedModelId') or engine.store.new_id('tuned')}"
        if name in engine.store.tuned:
            raise ErrorReply(
                409,
                {
                    "error": {
                        "code": 409,
                        "message": f"{name} already exists.",
                        "status": "ALREADY_EXISTS",
                    }
                },
            )
        engine.store.tuned[name] = TunedRecord(
            project=ctx.project,
            name=name,
            base_model=base.name,
            display_name=body.get("displayName"),
            create_time=now,
            ready_time=now + engine.config.tuning_delay_seconds,
            hyperparameters=dict(hyper or {"epochCount": 5}),
        )
        operation = f"{name}/operations/{engine.store.new_id('operation')}"
    metadata = {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.CreateTunedModelMetadata",
        "tunedModel": name,
        "totalSteps": 10,
    }
    return json_response({"name": operation, "metadata": metadata})


async def list_tuned(ctx: Ctx) -> Response:
    """GET /{v}/tunedModels."""
    with ctx.engine.lock:
        now = ctx.engine.clock()
        page, token = _page(ctx, ctx.engine.store.owned(ctx.engine.store.tuned, ctx.project))
        out: JSON = {"tunedModels": [_tuned_json(t, now) for t in page]}
    if token:
        out["nextPageToken"] = token
    return json_response(out)


async def get_tuned(ctx: Ctx) -> Response:
    """GET /{v}/tunedModels/{id}."""
    with ctx.engine.lock:
        return json_response(_tuned_json(_tuned(ctx), ctx.engine.clock()))


async def delete_tuned(ctx: Ctx) -> Response:
    """DELETE /{v}/tunedModels/{id}."""
    with ctx.engine.lock:
        del ctx.engine.store.tuned[_tuned(ctx).name]
    return json_response({})


async def tuned_generate(ctx: Ctx, *, stream: bool) -> Response:
    """POST /{v}/tunedModels/{id}:generateContent (and the streamed form)."""
    with ctx.engine.lock:
        record = _tuned(ctx)
        ready = ctx.engine.clock() >= record.ready_time
    if not ready:
        raise failed_precondition(f"Tuned model {record.name} is not ready (state CREATING).")
    base = ctx.engine.resolve(record.base_model, "generateContent", ctx.version)
    return await generate_with(ctx, base, record.name, stream=stream)
