"""The Interactions API (``/{v}/interactions``): create (JSON or server-sent events), get,
cancel and delete.

``create`` generates as ``generateContent`` does: the body's ``input`` (a string, content
items or turns), ``system_instruction`` and ``tools`` are counted by the same rules, the
model's quota is charged, and the reply is the same deterministic text. The response carries
``usage`` (``total_input_tokens``, ``total_output_tokens``, ``total_tokens``) and the
``service_tier`` asked for. Reads, cancels and deletes spend no quota.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from ._errors import JSON, invalid_argument, not_found
from ._generate import check_input_limit, prepare
from ._http import Ctx, json_response, settle, stream_response
from ._store import InteractionRecord, timestamp
from ._tokens import count_text

__all__ = ["cancel_interaction", "create_interaction", "delete_interaction", "get_interaction"]

_MEDIA = {"image", "audio", "video", "document"}


def _parts(item: Any) -> list[JSON]:
    """GenerateContent parts from Interactions content (a string, an item, a list of items)."""
    if isinstance(item, str):
        return [{"text": item}]
    if isinstance(item, list):
        return [p for x in item for p in _parts(x)]
    if not isinstance(item, dict):
        raise invalid_argument("Invalid value at 'input': expected text or content items.")
    kind = item.get("type")
    if kind == "text":
        return [{"text": str(item.get("text", ""))}]
    if kind in _MEDIA:
        mime = str(item.get("mime_type") or ("application/pdf" if kind == "document" else kind))
        if isinstance(item.get("data"), str):
            return [{"inlineData": {"mimeType": mime, "data": item["data"]}}]
        return [{"fileData": {"mimeType": mime, "fileUri": str(item.get("uri", ""))}}]
    if "content" in item:
        return _parts(item["content"])
    return [{"text": json.dumps(item, separators=(",", ":"), sort_keys=True)}]


def _contents(value: Any) -> list[JSON]:
    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, dict) and "role" in t for t in value)
    ):
        return [
            {"role": "model" if t["role"] == "model" else "user", "parts": _parts(t.get("content"))}
            for t in value
        ]
    return [{"role": "user", "parts": _parts(value)}]


def _request(body: JSON) -> JSON:
    """The GenerateContentRequest an interaction amounts to."""
    if body.get("input") in (None, "", []):
        raise invalid_argument("* CreateInteractionRequest.input: input is not specified\n")
    request: JSON = {"contents": _contents(body["input"])}
    if body.get("system_instruction") is not None:
        request["systemInstruction"] = {"parts": _parts(body["system_instruction"])}
    if body.get("tools"):
        request["tools"] = body["tools"]
    cfg = body.get("generation_config")
    if isinstance(cfg, dict) and isinstance(cfg.get("max_output_tokens"), int):
        request["generationConfig"] = {"maxOutputTokens": cfg["max_output_tokens"]}
    return request


def _record(ctx: Ctx) -> InteractionRecord:
    record = ctx.engine.store.interactions.get(ctx.ident or "")
    if record is None or record.project != ctx.project:
        raise not_found(f"Interaction {ctx.ident} not found.")
    return record


async def create_interaction(ctx: Ctx) -> Response:
    """POST /{v}/interactions."""
    engine = ctx.engine
    body = await ctx.object()
    raw = body.get("model")
    if not isinstance(raw, str) or not raw:
        raise invalid_argument("* CreateInteractionRequest.model: model is not specified\n")
    model = engine.resolve(raw, "generateContent", ctx.version)
    prompt = prepare(engine, ctx.project, model, _request(body))
    await settle(engine.admit(ctx.project, model, requests=1, tokens=prompt.tokens.total))
    check_input_limit(prompt)
    text = prompt.reply()
    output = count_text(text)
    with engine.lock:
        now = engine.clock()
        ident = engine.store.new_id("interaction")
    usage = {
        "total_input_tokens": prompt.tokens.total,
        "total_output_tokens": output,
        "total_tokens": prompt.tokens.total + output,
        "input_tokens_by_modality": [
            {"modality": m.lower(), "tokens": n}
            for m, n in sorted(prompt.tokens.by_modality.items())
        ],
    }
    step = {"type": "model_output", "content": [{"type": "text", "text": text}]}
    interaction: JSON = {
        "id": ident,
        "object": "interaction",
        "model": model.name,
        "status": "completed",
        "created": timestamp(now),
        "updated": timestamp(now),
        "steps": [step],
        "usage": usage,
    }
    if isinstance(body.get("service_tier"), str):
        interaction["service_tier"] = body["service_tier"]
    if body.get("store", True) is not False:
        with engine.lock:
            engine.store.interactions[ident] = InteractionRecord(ctx.project, ident, interaction)
    if body.get("stream") is not True:
        return json_response(interaction)
    start = {k: v for k, v in interaction.items() if k not in ("steps", "usage")}
    events: list[JSON] = [
        {"event_type": "interaction.created", "interaction": {**start, "status": "in_progress"}},
        {"event_type": "step.start", "index": 0, "step": {"type": "model_output"}},
    ]
    n = max(1, min(engine.config.stream_chunks, len(text)))
    cuts = [round(i * len(text) / n) for i in range(n + 1)]
    for i in range(n):
        piece = {"type": "text", "text": text[cuts[i] : cuts[i + 1]]}
        events.append({"event_type": "step.delta", "index": 0, "delta": piece})
    events.append({"event_type": "step.stop", "index": 0})
    events.append({"event_type": "interaction.completed", "interaction": interaction})
    pieces = [
        f"event: {e['event_type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n"
        for e in events
    ]
    return stream_response([*pieces, "data: [DONE]\n\n"], "text/event-stream")


async def get_interaction(ctx: Ctx) -> Response:
    """GET /{v}/interactions/{id}."""
    with ctx.engine.lock:
        return json_response(_record(ctx).body)


async def cancel_interaction(ctx: Ctx) -> Response:
    """POST /{v}/interactions/{id}/cancel: a finished interaction stays as it is."""
    with ctx.engine.lock:
        record = _record(ctx)
        if record.body.get("status") == "in_progress":
            record.body["status"] = "cancelled"
        return json_response(record.body)


async def delete_interaction(ctx: Ctx) -> Response:
    """DELETE /{v}/interactions/{id}."""
    with ctx.engine.lock:
        del ctx.engine.store.interactions[_record(ctx).id]
    return json_response({})
