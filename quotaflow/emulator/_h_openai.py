"""Gemini's OpenAI-compatible surface under ``/v1beta/openai/``.

Requests are translated to their native form and metered on the same quotas; responses carry
OpenAI-shaped ``usage``. Errors are sent as a JSON list holding one Google error object, as the
real endpoint does (the app wraps them).
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from starlette.responses import Response

from ._errors import JSON, invalid_argument, not_found
from ._generate import Prompt, check_input_limit, prepare, response_json, stream_json
from ._h_content import MAX_EMBED_BATCH
from ._http import Ctx, json_response, settle, stream_response
from ._tokens import count_text, embedding

__all__ = ["chat_completions", "embeddings", "get_model", "list_models"]

_ROLES = {"user": "user", "assistant": "model", "tool": "user", "function": "user"}


def _parts(content: Any) -> list[JSON]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise invalid_argument("Invalid value for 'content': expected a string or a list.")
    parts: list[JSON] = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            parts.append({"text": str(item.get("text", ""))})
        elif kind == "image_url":
            url = str((item.get("image_url") or {}).get("url", ""))
            mime = (
                url[5 : url.index(";")] if url.startswith("data:") and ";" in url else "image/jpeg"
            )
            parts.append({"inlineData": {"mimeType": mime, "data": url.rpartition(",")[2]}})
        elif kind == "input_audio":
            audio = item.get("input_audio") or {}
            fmt = audio.get("format", "wav")
            parts.append(
                {"inlineData": {"mimeType": f"audio/{fmt}", "data": audio.get("data", "")}}
            )
        else:
            raise invalid_argument(f"Invalid content part type {kind!r}.")
    return parts


def _native(body: JSON) -> JSON:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_argument("Invalid value for 'messages': at least one message is required.")
    system: list[JSON] = []
    contents: list[JSON] = []
    for message in messages:
        if not isinstance(message, dict):
            raise invalid_argument("Invalid message.")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_parts(message.get("content")))
        elif role in _ROLES:
            parts = _parts(message.get("content")) or [{"text": ""}]
            contents.append({"role": _ROLES[role], "parts": parts})
        else:
            raise invalid_argument(f"Invalid value for 'role': {role!r}.")
    native: JSON = {"contents": contents}
    if system:
        native["systemInstruction"] = {"parts": system}
    if body.get("tools"):
        native["tools"] = body["tools"]
    config: JSON = {}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    if body.get("n"):
        config["candidateCount"] = body["n"]
    if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if config:
        native["generationConfig"] = config
    return native


def _model(ctx: Ctx, name: Any, method: str) -> Any:
    if not isinstance(name, str) or not name:
        raise invalid_argument("Invalid value for 'model': a model is required.")
    return ctx.engine.resolve(name, method, ctx.version)


def _usage(prompt: Prompt, completion: int) -> JSON:
    total = prompt.tokens.total
    return {
        "prompt_tokens": total,
        "completion_tokens": completion,
        "total_tokens": total + completion,
    }


async def chat_completions(ctx: Ctx) -> Response:
    """POST /v1beta/openai/chat/completions (``stream`` and ``stream_options`` supported)."""
    engine = ctx.engine
    body = await ctx.object()
    model = _model(ctx, body.get("model"), "generateContent")
    prompt = prepare(engine, ctx.project, model, _native(body))
    await settle(engine.admit(ctx.project, model, requests=1, tokens=prompt.tokens.total))
    check_input_limit(prompt)
    with engine.lock:
        rid = engine.store.new_id("response")
        created = int(engine.clock())
    head: JSON = {"id": f"chatcmpl-{rid}", "created": created, "model": model.name}
    finish = "length" if prompt.truncated else "stop"
    if not body.get("stream"):
        native = response_json(prompt, rid)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c["content"]["parts"][0]["text"]},
                "finish_reason": finish,
            }
            for i, c in enumerate(native["candidates"])
        ]
        used = native["usageMetadata"]["candidatesTokenCount"]
        return json_response(
            {**head, "object": "chat.completion", "choices": choices, "usage": _usage(prompt, used)}
        )
    events: list[JSON] = []
    for i, chunk in enumerate(stream_json(prompt, rid, engine.config.stream_chunks)):
        cand = chunk["candidates"][0]
        delta: JSON = {"content": cand["content"]["parts"][0]["text"]}
        if i == 0:
            delta["role"] = "assistant"
        choice = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish if "finishReason" in cand else None,
        }
        events.append({**head, "object": "chat.completion.chunk", "choices": [choice]})
    if (body.get("stream_options") or {}).get("include_usage"):
        used = count_text(prompt.reply())
        usage = _usage(prompt, used)
        events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    pieces = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return stream_response([*pieces, "data: [DONE]\n\n"], "text/event-stream")


async def embeddings(ctx: Ctx) -> Response:
    """POST /v1beta/openai/embeddings; N inputs cost N requests."""
    body = await ctx.object()
    model = _model(ctx, body.get("model"), "embedContent")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
        raise invalid_argument("Invalid value for 'input': expected a string or a list of strings.")
    if len(inputs) > MAX_EMBED_BATCH:
        raise invalid_argument("at most 100 requests can be in one batch")
    dims = body.get("dimensions") or model.embedding_dimensions
    if not isinstance(dims, int) or not 0 < dims <= model.embedding_dimensions:
        raise invalid_argument(f"'dimensions' must be between 1 and {model.embedding_dimensions}")
    tokens = sum(count_text(x) for x in inputs)
    await settle(ctx.engine.admit(ctx.project, model, requests=len(inputs), tokens=tokens))
    data = []
    for i, text in enumerate(inputs):
        values = embedding(text, dims)
        vector: Any = values
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{dims}f", *values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response({"object": "list", "data": data, "model": model.name, "usage": usage})


def _model_json(name: str) -> JSON:
    return {"id": f"models/{name}", "object": "model", "created": 0, "owned_by": "google"}


async def list_models(ctx: Ctx) -> Response:
    """GET /v1beta/openai/models."""
    data = [_model_json(m.name) for m in ctx.engine.config.models]
    return json_response({"object": "list", "data": data})


async def get_model(ctx: Ctx) -> Response:
    """GET /v1beta/openai/models/{model}."""
    model = ctx.engine.config.model(ctx.ident or "")
    if model is None:
        raise not_found(f"Model is not found: models/{ctx.ident}")
    return json_response(_model_json(model.name))
