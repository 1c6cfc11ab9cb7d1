"""Native routes of the models & content, token counting and embeddings areas."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from quotaflow.gemini._service_tier import SERVED_TIER_HEADER, requested_tier

from ._config import ModelConfig
from ._engine import methods_of
from ._errors import JSON, invalid_argument, not_found
from ._generate import check_input_limit, prepare, response_json, stream_json
from ._http import Ctx, json_response, settle, stream_response
from ._store import paginate
from ._tokens import count_contents, count_text, embedding, prompt_text

__all__ = [
    "batch_embed",
    "count_tokens",
    "embed_content",
    "generate",
    "generate_with",
    "get_model",
    "list_models",
    "model_json",
]

MAX_EMBED_BATCH = 100


def model_json(model: ModelConfig) -> JSON:
    """The Model resource of ``model``."""
    display = model.display_name or model.name.replace("-", " ").title()
    out: JSON = {
        "name": f"models/{model.name}",
        "version": "001",
        "displayName": display,
        "description": f"{display} (served by the quotaflow emulator)",
        "inputTokenLimit": model.input_token_limit,
        "outputTokenLimit": model.output_token_limit,
        "supportedGenerationMethods": methods_of(model),
    }
    if model.kind == "generate":
        out.update(temperature=1.0, topP=0.95, topK=64, maxTemperature=2.0)
    return out


async def list_models(ctx: Ctx) -> Response:
    """GET /{v}/models."""
    try:
        page, token = paginate(
            ctx.engine.config.models, ctx.query("pageSize"), ctx.query("pageToken"), 50, 1000
        )
    except ValueError as exc:
        raise invalid_argument(str(exc)) from exc
    out: JSON = {"models": [model_json(m) for m in page]}
    if token:
        out["nextPageToken"] = token
    return json_response(out)


async def get_model(ctx: Ctx) -> Response:
    """GET /{v}/models/{model}."""
    model = ctx.engine.config.model(ctx.ident or "")
    if model is None:
        raise not_found(f"Model is not found: models/{ctx.ident} for api version {ctx.version}")
    return json_response(model_json(model))


async def generate(ctx: Ctx, *, stream: bool) -> Response:
    """POST /{v}/models/{model}:generateContent and :streamGenerateContent."""
    method = "streamGenerateContent" if stream else "generateContent"
    model = ctx.engine.resolve(ctx.ident or "", method, ctx.version)
    return await generate_with(ctx, model, model.name, stream=stream)


async def generate_with(
    ctx: Ctx, model: ModelConfig, version_name: str, *, stream: bool
) -> Response:
    """Generate with ``model``'s quota, reporting ``version_name`` as ``modelVersion``."""
    engine = ctx.engine
    body = await ctx.json()
    prompt = prepare(engine, ctx.project, model, body, model_version=version_name)
    tier = requested_tier(body) if isinstance(body, dict) else None
    ticket = engine.admit(
        ctx.project,
        model,
        requests=1,
        tokens=prompt.tokens.total,
        output_tokens=count_text(prompt.reply()) * prompt.candidates,
        service_tier=tier,
    )
    await settle(ticket)
    check_input_limit(prompt)
    headers = {SERVED_TIER_HEADER: ticket.served} if ticket.served else None
    with engine.lock:
        response_id = engine.store.new_id("response")
    if not stream:
        return json_response(response_json(prompt, response_id), headers=headers)
    chunks = [
        json.dumps(c, separators=(",", ":"))
        for c in stream_json(prompt, response_id, engine.config.stream_chunks)
    ]
    if ctx.query("alt") == "sse":
        return stream_response([f"data: {c}\r\n\r\n" for c in chunks], "text/event-stream", headers)
    pieces = ["[" + chunks[0]] + ["\n,\r\n" + c for c in chunks[1:]] + ["]"]
    return stream_response(pieces, "application/json; charset=UTF-8", headers)


async def count_tokens(ctx: Ctx) -> Response:
    """POST /{v}/models/{model}:countTokens (``contents`` or ``generateContentRequest``)."""
    engine = ctx.engine
    model = engine.resolve(ctx.ident or "", "countTokens", ctx.version)
    body = await ctx.object()
    cached = 0
    if body.get("generateContentRequest") is not None:
        request = dict(body["generateContentRequest"])
        request.pop("model", None)
        prompt = prepare(engine, ctx.project, model, request)
        tokens, cached = prompt.tokens, prompt.cached
    elif body.get("contents"):
        try:
            tokens = count_contents(body["contents"], engine.config.media_part_tokens)
        except ValueError as exc:
            raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    else:
        raise invalid_argument("* CountTokensRequest.contents: contents is not specified\n")
    engine.admit_count(ctx.project, model)
    out: JSON = {"totalTokens": tokens.total, "promptTokensDetails": tokens.details()}
    if cached:
        out["cachedContentTokenCount"] = cached
    return json_response(out)


def _embed_one(ctx: Ctx, model: ModelConfig, request: Any, where: str) -> tuple[int, list[float]]:
    if not isinstance(request, dict) or not isinstance(request.get("content"), dict):
        raise invalid_argument(f"* {where}.content: content is not specified\n")
    try:
        tokens = count_contents(request["content"], ctx.engine.config.media_part_tokens).total
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    dims = request.get("outputDimensionality") or model.embedding_dimensions
    if not isinstance(dims, int) or not 0 < dims <= model.embedding_dimensions:
        raise invalid_argument(
            f"* {where}.output_dimensionality: must be between 1 and {model.embedding_dimensions}\n"
        )
    return tokens, embedding(prompt_text(request["content"]), dims)


async def embed_content(ctx: Ctx) -> Response:
    """POST /{v}/models/{model}:embedContent."""
    model = ctx.engine.resolve(ctx.ident or "", "embedContent", ctx.version)
    tokens, values = _embed_one(ctx, model, await ctx.object(), "EmbedContentRequest")
    await settle(ctx.engine.admit(ctx.project, model, requests=1, tokens=tokens))
    return json_response({"embedding": {"values": values}})


async def batch_embed(ctx: Ctx) -> Response:
    """POST /{v}/models/{model}:batchEmbedContents; N items cost N requests."""
    model = ctx.engine.resolve(ctx.ident or "", "batchEmbedContents", ctx.version)
    requests = (await ctx.object()).get("requests")
    if not isinstance(requests, list) or not requests:
        raise invalid_argument("* BatchEmbedContentsRequest.requests: requests is not specified\n")
    if len(requests) > MAX_EMBED_BATCH:
        raise invalid_argument(
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n"
        )
    where = "BatchEmbedContentsRequest.requests[{}]"
    items = [_embed_one(ctx, model, r, where.format(i)) for i, r in enumerate(requests)]
    total = sum(t for t, _ in items)
    await settle(ctx.engine.admit(ctx.project, model, requests=len(items), tokens=total))
    return json_response({"embeddings": [{"values": v} for _, v in items]})
