"""GenerateContent semantics shared by the native, OpenAI-compatible and batch routes.

:func:`prepare` validates a GenerateContentRequest and counts its prompt; the ``*_json``
functions build the responses. Only :func:`prepare` touches emulator state (files and caches).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ._config import ModelConfig
from ._engine import EmulatorState
from ._errors import JSON, ErrorReply, invalid_argument, permission_denied
from ._tokens import TokenCount, count_request, count_text, prompt_text, reply_text

__all__ = ["Prompt", "check_input_limit", "prepare", "response_json", "stream_json"]


_FIELDS = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
        "labels",
        "serviceTier",
        "store",
    }
)
_FILE_REF = re.compile(r"files/([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class Prompt:
    """A validated request, counted.

    Attributes:
        model: Config of the model whose quota is charged.
        model_version: Name reported in ``modelVersion``.
        tokens: Whole prompt (system instruction, tools, contents and cached content).
        cached: Tokens that came from cached content.
        text: Text the reply is derived from.
        reply_tokens: Output tokens per candidate.
        truncated: True if ``maxOutputTokens`` cut the reply (finishReason MAX_TOKENS).
        candidates: Number of candidates.
        json_mode: True if ``responseMimeType`` is ``application/json``.
    """

    model: ModelConfig
    model_version: str
    tokens: TokenCount
    cached: int
    text: str
    reply_tokens: int
    truncated: bool
    candidates: int
    json_mode: bool

    def reply(self) -> str:
        """The deterministic text of each candidate."""
        text = reply_text(self.text, self.reply_tokens)
        return json.dumps({"text": text}) if self.json_mode else text


def _check_files(engine: EmulatorState, project: str, contents: Any, now: float) -> None:
    for uri in re.findall(r'"fileUri":\s*"([^"]*)"', json.dumps(contents)):
        match = _FILE_REF.search(uri)
        record = engine.store.files.get(f"files/{match.group(1)}") if match else None
        if record is None or record.project != project or record.expire_time <= now:
            name = match.group(1) if match else uri
            raise permission_denied(
                f"You do not have permission to access the File {name} or it may not exist."
            )


def prepare(
    engine: EmulatorState, project: str, model: ModelConfig, body: Any, *, model_version: str = ""
) -> Prompt:
    """Validate a GenerateContentRequest and count its prompt.

    Args:
        engine: Emulator state (for files and cached contents).
        project: Caller's project.
        model: Model config whose quota is charged.
        body: Parsed JSON body.
        model_version: Name reported back (default: the model name).

    Raises:
        ErrorReply: 400 INVALID_ARGUMENT, or 403 for an unknown file or cache.
    """
    if not isinstance(body, dict):
        raise invalid_argument("Invalid JSON payload received. Expected an object.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise invalid_argument(
            f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
        )
    if not body.get("contents"):
        raise invalid_argument("* GenerateContentRequest.contents: contents is not specified\n")
    try:
        tokens = count_request(body, engine.config.media_part_tokens)
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    cached = 0
    with engine.lock:
        now = engine.clock()
        _check_files(engine, project, body["contents"], now)
        if body.get("cachedContent"):
            cache = engine.store.caches.get(str(body["cachedContent"]))
            if cache is None or cache.project != project or cache.expire_time <= now:
                raise permission_denied("CachedContent not found (or permission denied)")
            if cache.model != model.name:
                raise invalid_argument(
                    f"Model used by GenerateContent request (models/{model.name}) and "
                    f"CachedContent (models/{cache.model}) has to be the same."
                )
            cached = cache.tokens
    if cached:
        tokens.add("TEXT", cached)
    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise invalid_argument("Invalid value at 'generation_config'")
    limit = config.get("maxOutputTokens")
    reply_tokens = engine.config.response_tokens
    truncated = isinstance(limit, int) and 0 < limit < reply_tokens
    return Prompt(
        model=model,
        model_version=model_version or model.name,
        tokens=tokens,
        cached=cached,
        text=prompt_text(body["contents"]),
        reply_tokens=limit if truncated and isinstance(limit, int) else reply_tokens,
        truncated=truncated,
        candidates=max(1, int(config.get("candidateCount") or 1)),
        json_mode=config.get("responseMimeType") == "application/json",
    )


def check_input_limit(prompt: Prompt) -> None:
    """Raise the 400 Gemini sends for a prompt over the model's input limit."""
    limit = prompt.model.input_token_limit
    if prompt.tokens.total > limit:
        raise ErrorReply(
            400,
            {
                "error": {
                    "code": 400,
                    "message": "The input token count exceeds the maximum number of tokens "
                    f"allowed {limit}.",
                    "status": "INVALID_ARGUMENT",
                }
            },
        )


def _usage(prompt: Prompt, candidate_tokens: int) -> JSON:
    usage: JSON = {
        "promptTokenCount": prompt.tokens.total,
        "candidatesTokenCount": candidate_tokens,
        "totalTokenCount": prompt.tokens.total + candidate_tokens,
        "promptTokensDetails": prompt.tokens.details(),
    }
    if prompt.cached:
        usage["cachedContentTokenCount"] = prompt.cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt.cached}]
    return usage


def _candidate(text: str, index: int, finish: str | None) -> JSON:
    out: JSON = {"content": {"parts": [{"text": text}], "role": "model"}, "index": index}
    if finish:
        out["finishReason"] = finish
    return out


def response_json(prompt: Prompt, response_id: str) -> JSON:
    """The GenerateContentResponse of ``prompt``."""
    text = prompt.reply()
    finish = "MAX_TOKENS" if prompt.truncated else "STOP"
    return {
        "candidates": [_candidate(text, i, finish) for i in range(prompt.candidates)],
        "usageMetadata": _usage(prompt, count_text(text) * prompt.candidates),
        "modelVersion": prompt.model_version,
        "responseId": response_id,
    }


def stream_json(prompt: Prompt, response_id: str, chunks: int) -> list[JSON]:
    """The chunks of a streamed response; usage is cumulative, final on the last chunk."""
    text = prompt.reply()
    n = max(1, min(chunks, len(text)))
    cuts = [round(i * len(text) / n) for i in range(n + 1)]
    finish = "MAX_TOKENS" if prompt.truncated else "STOP"
    out = []
    for i in range(n):
        last = i == n - 1
        out.append(
            {
                "candidates": [
                    _candidate(text[cuts[i] : cuts[i + 1]], 0, finish if last else None)
                ],
                "usageMetadata": _usage(prompt, count_text(text[: cuts[i + 1]])),
                "modelVersion": prompt.model_version,
                "responseId": response_id,
            }
        )
    return out
