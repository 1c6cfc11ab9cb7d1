"""Request classification: what a Gemini API call is and what it costs. Pure, no I/O.

Every route of the Gemini Developer API (``/v1``, ``/v1beta``, ``/v1alpha``, the ``/upload/``
prefix) and of its OpenAI-compatible surface (``/v1beta/openai/...``) maps to a :class:`Call`:
its area, whether it reads or writes, its model, and what it spends of the model's quota.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from quotaflow.gemini._canonical import canonical_request, valid_model

__all__ = ["Access", "Area", "Call", "classify", "needs_body"]

Area = Literal["content", "embeddings", "counting", "files", "caching", "batch", "tuning", "other"]
"""Where a call belongs: models and content, embeddings, token counting, files, context
caching, the Batch API, tuned models, or ``other`` (a route quotaflow does not know)."""

Access = Literal["read", "write"]
"""``write`` spends quota or creates, changes or deletes something; ``read`` does neither."""

_VERSION = re.compile(r"(?:^|/)(upload/)?(v\d+(?:alpha|beta)?\d*)/(.*)$")

# model actions (``models/{m}:action``): (area, access, requests, input tokens, creates)
_Spec = tuple[Area, Access, int, bool, bool]
_MODEL_ACTIONS: dict[str, _Spec] = {
    "generateContent": ("content", "write", 1, True, False),
    "streamGenerateContent": ("content", "write", 1, True, False),
    "countTokens": ("counting", "read", 0, False, False),
    "embedContent": ("embeddings", "write", 1, True, False),
    "batchEmbedContents": ("embeddings", "write", 1, True, False),
    "batchGenerateContent": ("batch", "write", 0, False, True),
    "asyncBatchEmbedContent": ("batch", "write", 0, False, True),
    "predict": ("content", "write", 1, False, False),
    "predictLongRunning": ("content", "write", 1, False, True),
}

_UNKNOWN_POST: _Spec = ("content", "write", 1, False, False)
_UNKNOWN_READ: _Spec = ("content", "read", 0, False, False)

_COLLECTIONS: dict[str, Area] = {
    "files": "files",
    "cachedContents": "caching",
    "batches": "batch",
    "tunedModels": "tuning",
    "models": "content",
}


@dataclass(frozen=True)
class Call:
    """One Gemini API call, classified.

    Attributes:
        method: the HTTP method (upper case).
        path: the URL path, each segment decoded once (never the query, which may hold
            ``key=``).
        surface: ``gemini`` (native REST), ``openai`` (the OpenAI-compatible routes) or
            ``unknown``.
        version: the API version in the path (``v1``, ``v1beta``), if any.
        action: what is done: ``generateContent``, ``streamGenerateContent``, ``countTokens``,
            ``embedContent``, ``batchEmbedContents``, ``chat.completions``, ``embeddings``,
            ``list``, ``get``, ``create``, ``update``, ``delete``, ``cancel``, ``upload``,
            ``download``, ...
        area: see :data:`Area`.
        access: see :data:`Access`.
        model: the model id without ``models/`` (``gemini-2.5-flash``; tuned models keep
            ``tunedModels/...``), or ``None``.
        requests: requests charged to the model's RPM and RPD (0: the call carries no model
            quota; ``batchEmbedContents`` of N items: N).
        input_tokens: whether the call's input tokens count toward the model's TPM.
        streaming: the response is a stream of server-sent events.
        creates: the call creates a lasting resource (upload, cache, batch, tuned model, long
            running operation); such calls are not retried on 5xx unless asked.
        problem: why the request is malformed (see
            :class:`~quotaflow.gemini._canonical.CanonicalRequest`), or ``None``; a malformed
            call is in area ``other`` and is never sent by an agent transport.
    """

    method: str
    path: str
    surface: Literal["gemini", "openai", "unknown"]
    version: str | None
    action: str
    area: Area
    access: Access
    model: str | None = None
    requests: int = 0
    input_tokens: bool = False
    streaming: bool = False
    creates: bool = False
    problem: str | None = None

    @property
    def metered(self) -> bool:
        """Whether the call spends the model's quota (RPM/TPM/RPD)."""
        return self.requests > 0 and self.model is not None

    @property
    def counting(self) -> bool:
        """Whether this is a ``countTokens`` call (metered under countTokens' own quota)."""
        return self.action == "countTokens"

    @property
    def idempotent(self) -> bool:
        """Whether repeating the call after a 5xx cannot create anything twice."""
        return not self.creates


def _plain_model(name: str) -> str:
    return name[len("models/") :] if name.startswith("models/") else name


def needs_body(method: str, url: str) -> bool:
    """Whether :func:`classify` needs the request body to classify the call fully.

    True for ``batchEmbedContents`` (its item count is its cost), the OpenAI routes and the
    Interactions API's create (the model and streaming flag are in the body).
    """
    path = canonical_request(method, url).path
    return method.upper() == "POST" and (
        path.endswith((":batchEmbedContents", "/interactions")) or "/openai/" in path
    )


def classify(
    method: str,
    url: str,
    body: Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> Call:
    """Classify one request, in its canonical form (see
    :func:`~quotaflow.gemini._canonical.canonical_request`).

    Args:
        method: the HTTP method.
        url: the full URL or just its path (the query is read only for ``alt=sse``).
        body: the parsed JSON body, where :func:`needs_body` says it matters.
        headers: the request headers, if known (a method override is read from them).

    Example:
        >>> call = classify("POST", "https://x/v1beta/models/gemini-2.5-flash:generateContent")
        >>> (call.area, call.access, call.model, call.requests, call.input_tokens)
        ('content', 'write', 'gemini-2.5-flash', 1, True)
    """
    canon = canonical_request(method, url, headers)
    sse = canon.sse
    call = _static(canon.method, canon.path, canon.problem, sse)
    if call is None:  # the body says part of it
        call = _checked(canon.method, canon.path, canon.problem, sse, body or {})
    return call


class _Probe(Mapping[str, Any]):
    """An empty body that notes whether it was read."""

    __slots__ = ("read",)

    def __init__(self) -> None:
        self.read = False

    def __getitem__(self, key: str) -> Any:
        self.read = True
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        self.read = True
        return iter(())

    def __len__(self) -> int:
        self.read = True
        return 0

    def __contains__(self, key: object) -> bool:
        self.read = True
        return False

    def get(self, key: str, default: Any = None) -> Any:
        self.read = True
        return default


@functools.lru_cache(maxsize=1024)
def _static(method: str, path: str, problem: str | None, sse: bool) -> Call | None:
    """The call of a route whose class the body does not change (``None`` for the routes it
    does): cached by the canonical method and path (a path holds no secret)."""
    probe = _Probe()
    call = _checked(method, path, problem, sse, probe)
    return None if probe.read else call


def _checked(
    method: str, path: str, problem: str | None, sse: bool, body: Mapping[str, Any]
) -> Call:
    call = _route(method, path, problem, sse, body)
    if call.problem is None and call.model is not None and not valid_model(call.model):
        return _malformed(method, path, f"a model name that is not one ({call.model[:40]!r})")
    return call


def _malformed(method: str, path: str, problem: str) -> Call:
    return Call(
        method, path, "unknown", None, "malformed", "other", _access(method), problem=problem
    )


def _route(method: str, path: str, problem: str | None, sse: bool, body: Mapping[str, Any]) -> Call:
    if problem is not None:
        return _malformed(method, path, problem)
    m = _VERSION.search(path)
    if m is None:
        return Call(method, path, "unknown", None, _verb(method, True), "other", _access(method))
    upload, version, rest = bool(m.group(1)), m.group(2), m.group(3)
    if rest.startswith("openai/") or rest == "openai":
        return _openai(method, path, version, rest[len("openai/") :], body)
    if upload:
        return Call(method, path, "gemini", version, "upload", "files", "write", creates=True)
    if rest == "interactions" or rest.startswith("interactions/"):
        return _interactions(method, path, version, rest, body)
    return _native(method, path, version, rest, body, sse)


def _access(method: str) -> Access:
    return "read" if method in ("GET", "HEAD", "OPTIONS") else "write"


def _verb(method: str, collection: bool) -> str:
    if method == "GET":
        return "list" if collection else "get"
    return {"POST": "create", "PATCH": "update", "PUT": "update", "DELETE": "delete"}.get(
        method, method.lower()
    )


def _native(
    method: str, path: str, version: str, rest: str, body: Mapping[str, Any], sse: bool
) -> Call:
    name, _, action = rest.partition(":")
    segs = name.split("/") if name else []
    head = segs[0] if segs else ""
    area = _COLLECTIONS.get(head, "other")
    if action and head in ("models", "tunedModels") and len(segs) != 2:
        # models/m/x:generateContent: no such route; never a call "without a model"
        return Call(
            method,
            path,
            "unknown",
            version,
            "malformed",
            "other",
            _access(method),
            problem="a model route with extra segments",
        )
    if action and head in ("models", "tunedModels"):
        model = name if head == "tunedModels" else _plain_model(name)
        # an unknown model method: assume a POST spends a request
        fallback = _UNKNOWN_POST if method == "POST" else _UNKNOWN_READ
        a, acc, requests, tokens, creates = _MODEL_ACTIONS.get(action, fallback)
        if head == "tunedModels" and a == "content":
            a = "tuning"
        if action == "batchEmbedContents":
            items = body.get("requests")
            requests = len(items) if isinstance(items, list) and items else 1
        return Call(
            method,
            path,
            "gemini",
            version,
            action,
            a,
            acc,
            model,
            requests,
            tokens,
            streaming=action == "streamGenerateContent" or sse,
            creates=creates,
        )
    if action:  # files/x:download, batches/x:cancel, files:register, operations...
        access: Access = "read" if method == "GET" else "write"
        return Call(
            method, path, "gemini", version, action, area, access, creates=action == "register"
        )
    collection = len(segs) % 2 == 1  # "files" vs "files/abc"; "models/m/operations" too
    verb = _verb(method, collection)
    made = verb == "create" and collection and area != "other"
    owner = _plain_model("/".join(segs[:2])) if head == "models" and len(segs) >= 2 else None
    return Call(
        method,
        path,
        "gemini",
        version,
        verb,
        area,
        _access(method),
        owner,
        creates=made,
    )


def _interactions(method: str, path: str, version: str, rest: str, body: Mapping[str, Any]) -> Call:
    """The Interactions API: ``POST interactions`` generates (metered on the body's model);
    ``GET interactions/{id}`` reads; ``POST interactions/{id}/cancel`` (or ``:cancel``) and
    ``DELETE interactions/{id}`` write to the interaction, not to the model's quota."""
    segs = rest.replace(":", "/").split("/")
    if len(segs) == 1:
        if method == "POST":
            raw = body.get("model")
            model = _plain_model(raw) if isinstance(raw, str) and raw else None
            return Call(
                method,
                path,
                "gemini",
                version,
                "interactions.create",
                "content",
                "write",
                model,
                1 if model else 0,
                model is not None,
                streaming=body.get("stream") is True,
                creates=body.get("background") is True,  # a long-running interaction
            )
        return Call(method, path, "gemini", version, "interactions.list", "content", "read")
    verb = segs[2] if len(segs) > 2 else _verb(method, False)
    access: Access = "read" if method == "GET" else "write"
    return Call(method, path, "gemini", version, f"interactions.{verb}", "content", access)


def _openai(method: str, path: str, version: str, rest: str, body: Mapping[str, Any]) -> Call:
    raw_model = body.get("model")
    model = _plain_model(raw_model) if isinstance(raw_model, str) and raw_model else None
    if rest == "chat/completions" and method == "POST":
        return Call(
            method,
            path,
            "openai",
            version,
            "chat.completions",
            "content",
            "write",
            model,
            1,
            True,
            streaming=bool(body.get("stream")),
        )
    if rest == "embeddings" and method == "POST":
        items = body.get("input")
        n = 1
        if isinstance(items, list) and items and not isinstance(items[0], int):
            n = len(items)
        return Call(
            method, path, "openai", version, "embeddings", "embeddings", "write", model, n, True
        )
    if rest.startswith("images/") and method == "POST":
        return Call(method, path, "openai", version, "images", "content", "write", model, 1)
    if rest == "models" or rest.startswith("models/"):
        collection = rest == "models"
        mid = None if collection else _plain_model(rest[len("models/") :])
        return Call(
            method,
            path,
            "openai",
            version,
            _verb(method, collection),
            "content",
            _access(method),
            mid,
        )
    return Call(method, path, "openai", version, _verb(method, False), "other", _access(method))
