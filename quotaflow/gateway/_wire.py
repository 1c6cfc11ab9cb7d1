"""The gateway's wire pieces: which headers and query parameters it forwards, drops or
rewrites, its Gemini- and OpenAI-shaped error answers, and the responses it relays."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.responses import Response, StreamingResponse

__all__: list[str] = []

_SECRET_PARAMS = frozenset({"key", "access_token", "oauth_token", "api_key", "token"})
# the gateway's proof, in the upload URLs it hands out, of which token started the upload
# (the SDKs send no key with an upload's chunks): <token id>.<HMAC of token id and upload id>
_UPLOAD_PROOF = "qfg_upload"
# request headers passed upstream; everything else (credentials, cookies, hop-by-hop headers,
# proxies' forwarding headers) stays here
_FORWARD = frozenset(
    {
        "accept",
        "accept-encoding",
        "content-type",
        "content-length",
        "user-agent",
        "x-goog-api-client",
        "x-server-timeout",
        "x-quotaflow-priority",
    }
)
_DROP_BACK = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "server", "date"}
)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_PROXIED = frozenset([*_METHODS, "HEAD"])  # as Starlette's route (GET brings HEAD)
_OWN_PATHS = frozenset({"/healthz", "/readyz"})


class _Key:
    """The real key; its repr and str never show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<gemini key hidden>"

    __str__ = __repr__


class _Shared(httpx.AsyncBaseTransport):
    """The upstream pool as every agent transport's inner transport (closed once, by the
    gateway)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass


class _Line:
    """An access-log line, made into JSON only when a handler writes it."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return json.dumps(self.fields)


class _TooLarge(Exception):
    pass


def _error(status: int, code: str, message: str, openai: bool, reason: str) -> Response:
    err: Any = {
        "error": {
            "code": status,
            "message": message,
            "status": code,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "quotaflow.gateway",
                }
            ],
        }
    }
    body = json.dumps([err] if openai else err).encode()
    return Response(body, status, media_type="application/json; charset=UTF-8")


def _param_name(raw: str) -> str:
    return unquote(raw.replace("+", " ")).casefold().lstrip("$")


def _split_query(query: str) -> tuple[list[str], list[str]]:
    """The query's secret values (``key`` and its kin, in any spelling) and the other pairs,
    raw."""
    secrets_, kept = [], []
    for pair in query.split("&") if query else []:
        name, _, value = pair.partition("=")
        pname = _param_name(name)
        if pname in _SECRET_PARAMS:
            secrets_.append(unquote(value.replace("+", " ")))
        elif pname == _UPLOAD_PROOF:
            continue
        elif pair:
            kept.append(pair)
    return secrets_, kept


class _Whole(Response):
    """A whole answer, and the end of its upstream answer to run once it is sent (or not)."""

    def __init__(self, body: bytes, status: int, after: Coroutine[Any, Any, None]) -> None:
        super().__init__(body, status)
        self._after = after

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._after


class _Relay(StreamingResponse):
    """A streamed response whose headers are kept as the upstream sent them."""

    def __init__(
        self, content: AsyncIterator[bytes], status: int, headers: list[tuple[str, str]]
    ) -> None:
        super().__init__(content, status)
        self.raw_headers = _raw(headers)


async def _head_of(
    chunks: AsyncIterator[bytes], length: int
) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The first ``length`` bytes of ``chunks`` and the unread rest (``None``: it ended)."""
    got: list[bytes] = []
    seen = 0
    it = chunks.__aiter__()
    while seen < length:
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            return b"".join(got), None
        got.append(chunk)
        seen += len(chunk)
    return b"".join(got), it


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
