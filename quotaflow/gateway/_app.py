"""The gateway's ASGI app: authenticate the agent's token, hand the call to the agent's
transport (the library's one call flow) with the real key, relay the answer as it arrives.

Each request:

1. Its agent token is read where the SDKs send a key (``x-goog-api-key``, ``?key=`` in any
   spelling, ``Authorization: Bearer`` on the OpenAI routes) and looked up by hash; without a
   valid one the answer is a Gemini-shaped 401 (no token) or 403 (unknown or revoked), and
   nothing is sent upstream.
2. Every credential is removed (headers and secret query parameters in every spelling), the
   real key is added as ``x-goog-api-key`` (or, per ``[upstream] credentials``, an OAuth
   access token as ``Authorization: Bearer`` just before it leaves: ``_oauth.py``), and the
   request (its raw path, as the agent spelled it) goes to
   ``agents.agent(name).transport(upstream)``: policy, canonical request, sizing, scheduling,
   settlement, 429 feedback and audit are the library's own.
3. The response streams back chunk by chunk (SSE too); an upload's body streams up the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from quotaflow.agents import Agents
from quotaflow.errors import BackendError, QuotaError
from quotaflow.gateway._access import GatewayAccess
from quotaflow.gateway._config import GatewayConfig
from quotaflow.gateway._oauth import UpstreamAuth, UpstreamAuthError
from quotaflow.gateway._tokens import TokenEntry, TokenStore
from quotaflow.gateway._upstream import Upstream
from quotaflow.gateway._webhook import webhook_endpoint
from quotaflow.gateway._wire import (
    _DROP_BACK,
    _FORWARD,
    _METHODS,
    _OWN_PATHS,
    _PROXIED,
    _UPLOAD_PROOF,
    _error,
    _head_of,
    _raw,
    _Relay,
    _Shared,
    _split_query,
    _TooLarge,
    _Whole,
)
from quotaflow.limiter import Limiter
from quotaflow.transports import QuotaTransport
from quotaflow.transports.webhooks import BatchWebhooks

__all__ = ["Gateway"]

log = logging.getLogger("quotaflow.gateway")
access = logging.getLogger("quotaflow.gateway.access")


class Gateway(GatewayAccess):
    """The gateway: an ASGI app (:attr:`app`) in front of Gemini that alone holds the key.

    Args:
        config: the validated configuration (:func:`~quotaflow.gateway.load_gateway_config`).
        key: the real key (default: read from ``config.key_file`` or ``config.key_env``;
            unused with ``[upstream] credentials = "oauth"``).
        limiter: the limiter (default: ``Limiter(**config.limiter)``); the config's policy
            governs its agents (:class:`~quotaflow.agents.Agents`).
        upstream: the transport that really sends (default: the gateway's keep-alive pool,
            an httpx transport).
        clock: seconds for access-log durations (default: ``time.perf_counter``).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        key: str | None = None,
        limiter: Limiter | None = None,
        upstream: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._auth = UpstreamAuth.from_config(config, key=key)
        # every replica holds the key (or the credentials file): every one checks the proofs
        self._proof_key = self._auth.proof_key()
        self.tokens = TokenStore(config.tokens_file, recheck=config.tokens_recheck)
        self.limiter = limiter or Limiter(**dict(config.limiter))
        self.agents = Agents(self.limiter, config.policy)
        self._upstream = upstream or Upstream(max_connections=1000, max_keepalive=200)
        self._shared = _Shared(self._auth.wrap(self._upstream))
        self._agents: dict[str, QuotaTransport] = {}
        self._clock = clock or time.perf_counter
        self._timeout = {
            "connect": config.connect_timeout,
            "read": config.request_timeout,
            "write": config.request_timeout,
            "pool": config.request_timeout,
        }
        self.in_flight = 0
        self.draining = False
        from quotaflow.gateway._live import LiveProxy

        self.live = LiveProxy(self)
        secret = config.read_webhook_secret()  # batch ends posted by Gemini, if configured
        self.webhooks = BatchWebhooks(self.limiter, secret=secret) if secret else None
        hooks = []
        if self.webhooks is not None:
            endpoint = webhook_endpoint(self.webhooks)
            hooks.append(Route(config.webhook_path, endpoint, methods=["POST"]))
        self._own = _OWN_PATHS | {r.path for r in hooks}
        self.app = Starlette(
            routes=[
                WebSocketRoute("/ws/{service:path}", self.live.serve),
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/readyz", self._readyz, methods=["GET"]),
                *hooks,
                Route("/{path:path}", self._proxy, methods=_METHODS),
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # the proxy's calls go straight to it (Starlette's routing and middleware cost a
        # good share of a call); health, the Live socket and the lifespan go through the app
        if scope["type"] == "http" and scope["path"] not in self._own:
            if scope["method"] in _PROXIED:
                response = await self._proxy(Request(scope, receive))
            else:
                response = Response(
                    b"Method Not Allowed", 405, {"allow": ", ".join(sorted(_PROXIED))}, "text/plain"
                )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        yield
        await self.aclose()

    async def aclose(self) -> None:
        """Close the agent transports, the upstream pool, the audit log and the backend."""
        self.draining = True
        for t in list(self._agents.values()):
            with contextlib.suppress(Exception):
                await t.aclose()
        self._agents.clear()
        with contextlib.suppress(Exception):
            await self._upstream.aclose()
        self.agents.flush()
        backend: Any = self.limiter.backend
        if hasattr(backend, "aclose"):
            with contextlib.suppress(Exception):
                await backend.aclose()

    def _transport(self, agent: str) -> QuotaTransport:
        t = self._agents.get(agent)
        if t is None:
            t = self._agents[agent] = self.agents.agent(agent).transport(
                self._shared, **dict(self.config.transport)
            )
        return t

    # ---- health -----------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def ready(self) -> tuple[bool, str]:
        """Whether the gateway takes calls: not while draining, nor while a Redis backend
        that would raise (or wait) cannot be reached."""
        if self.draining:
            return False, "draining"
        backend: Any = self.limiter.backend
        client = getattr(backend, "_client", None)
        if client is None or not hasattr(client, "ping"):
            return True, "ok"
        engine = getattr(backend, "_engine", None)
        if getattr(engine, "on_error", "raise") == "local":
            return True, "ok"
        try:
            with anyio.fail_after(1.0):
                await anyio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
        except Exception:
            return False, "backend unreachable"
        return True, "ok"

    async def _readyz(self, request: Request) -> Response:
        ok, why = await self.ready()
        body = json.dumps({"status": "ok" if ok else "unavailable", "reason": why}).encode()
        return Response(body, 200 if ok else 503, media_type="application/json")

    # ---- the proxy --------------------------------------------------------------------------

    async def _proxy(self, request: Request) -> Response:
        start = self._clock()
        raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
        path_s = raw.split(b"?", 1)[0].decode("latin-1")  # some servers keep the query there
        openai = "/openai/" in path_s
        if self.draining:
            self._log(request, None, 503, start, note="draining")
            return _error(503, "UNAVAILABLE", "the gateway is shutting down; retry", openai,
                          "GATEWAY_DRAINING")  # fmt: skip
        token, conflict = self._credential(request, openai)
        upload = request.method == "POST" and path_s.startswith("/upload/")
        chunk_of = self._upload_entry(request) if upload and token is None else None
        if token is None and chunk_of is None:
            self._log(request, None, 401, start, note="no_token")
            return _error(
                401,
                "UNAUTHENTICATED",
                "no agent token: send your gateway token as the API key (x-goog-api-key, "
                "?key=, or Authorization: Bearer on the OpenAI routes)",
                openai,
                "GATEWAY_TOKEN_MISSING",
            )
        if chunk_of is not None:
            entry: TokenEntry | None = chunk_of
        else:
            entry = None if conflict or token is None else self.tokens.lookup(token)
        if entry is None:
            self._log(request, None, 403, start, note="conflicting_tokens" if conflict else
                      "bad_token")  # fmt: skip
            return _error(
                403,
                "PERMISSION_DENIED",
                "two different credentials: send one agent token"
                if conflict
                else "the agent token is not valid (unknown, revoked or mistyped): ask the "
                "gateway's operator for one ('quotaflow gateway token create')",
                openai,
                "GATEWAY_TOKEN_INVALID",
            )
        limit = self.config.max_upload_bytes if upload else self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            self._log(request, entry, 413, start, note="too_large")
            return _error(413, "INVALID_ARGUMENT",
                          f"the request body is over the gateway's limit of {limit} bytes",
                          openai, "GATEWAY_BODY_TOO_LARGE")  # fmt: skip
        self.in_flight += 1
        try:
            return await self._forward(request, entry, path_s, upload, limit, openai, start)
        finally:
            self.in_flight -= 1

    async def _forward(self, request: Request, entry: TokenEntry, path: str, upload: bool,
                       limit: int, openai: bool, start: float) -> Response:  # fmt: skip
        _, kept = _split_query(request.scope["query_string"].decode("latin-1"))
        url = self.config.upstream + path + ("?" + "&".join(kept) if kept else "")
        headers = [(k, v) for k, v in request.headers.items() if k in _FORWARD or
                   k.startswith("x-goog-upload-")]  # fmt: skip
        headers += self._auth.key_headers(path)  # without it, the access token (_oauth.py)
        content: Any
        try:
            if upload:
                content = self._limited(request, limit)
            else:
                body = b""
                async for chunk in self._limited(request, limit):
                    body += chunk
                content = body
        except _TooLarge:
            self._log(request, entry, 413, start, note="too_large")
            return _error(413, "INVALID_ARGUMENT",
                          f"the request body is over the gateway's limit of {limit} bytes",
                          openai, "GATEWAY_BODY_TOO_LARGE")  # fmt: skip
        except ClientDisconnect:
            self._log(request, entry, 499, start, note="client_disconnected")
            return Response(b"", 499)
        upstream_request = httpx.Request(
            request.method, url, headers=headers, content=content,
            extensions={"timeout": self._timeout},
        )  # fmt: skip
        transport = self._transport(entry.agent)
        try:
            with anyio.fail_after(self.config.request_timeout):
                response = await transport.handle_async_request(upstream_request)
        except (TimeoutError, httpx.TimeoutException):
            return self._failed(request, entry, start, openai, 504, "DEADLINE_EXCEEDED",
                                "the call did not get an answer within the gateway's "
                                "request_timeout", "GATEWAY_TIMEOUT")  # fmt: skip
        except _TooLarge:
            return self._failed(request, entry, start, openai, 413, "INVALID_ARGUMENT",
                                f"the upload is over the gateway's limit of {limit} bytes",
                                "GATEWAY_BODY_TOO_LARGE")  # fmt: skip
        except BackendError:
            return self._failed(request, entry, start, openai, 503, "UNAVAILABLE",
                                "the gateway's quota backend is unreachable; retry",
                                "GATEWAY_BACKEND_DOWN")  # fmt: skip
        except QuotaError as exc:
            return self._failed(request, entry, start, openai, 429, "RESOURCE_EXHAUSTED",
                                str(exc), "GATEWAY_QUOTA")  # fmt: skip
        except UpstreamAuthError as exc:
            return self._failed(request, entry, start, openai, exc.status, "UNAVAILABLE",
                                f"the gateway has no upstream access token: {exc.why}",
                                "GATEWAY_UPSTREAM_AUTH")  # fmt: skip
        except httpx.TransportError as exc:
            return self._failed(request, entry, start, openai, 502, "UNAVAILABLE",
                                f"the upstream cannot be reached ({type(exc).__name__})",
                                "GATEWAY_UPSTREAM")  # fmt: skip
        out = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _DROP_BACK]
        out = [(k, self._rewrite(request, entry, v)) if k.lower() in
               ("x-goog-upload-url", "x-goog-upload-control-url") else (k, v)
               for k, v in out]  # fmt: skip
        declared_back = response.headers.get("content-length", "")
        if declared_back.isdigit():
            # a whole answer (not a stream): relayed in one piece, the fast path. The answer
            # goes back as soon as its declared length is in; the end of the upstream stream
            # (settlement, the audit record) runs right after it is sent, within the request
            rest: AsyncIterator[bytes] | None = None
            try:
                try:
                    sent = response.content  # answered here (a denial): read
                except httpx.ResponseNotRead:
                    sent, rest = await _head_of(response.aiter_raw(), int(declared_back))
            except httpx.TransportError as exc:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                return self._failed(request, entry, start, openai, 502, "UNAVAILABLE",
                                    f"the upstream answer broke off ({type(exc).__name__})",
                                    "GATEWAY_UPSTREAM")  # fmt: skip
            self._log(request, entry, response.status_code, start, len(sent))
            if rest is None:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                whole = Response(sent, response.status_code)
            else:
                self.in_flight += 1  # until the upstream answer is closed and settled
                whole = _Whole(sent, response.status_code, self._close(response, rest))
            whole.raw_headers = _raw(out)
            return whole
        self.in_flight += 1  # until the stream is relayed
        return _Relay(self._relay(request, entry, response, start), response.status_code, out)

    async def _close(self, response: httpx.Response, rest: AsyncIterator[bytes]) -> None:
        try:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(httpx.TransportError):
                    async for _ in rest:  # nothing more is declared: its end settles the call
                        pass
                await response.aclose()
        finally:
            self.in_flight -= 1

    def _failed(self, request: Request, entry: TokenEntry, start: float, openai: bool,
                status: int, code: str, message: str, reason: str) -> Response:  # fmt: skip
        self._log(request, entry, status, start, note=reason.lower())
        return _error(status, code, message, openai, reason)

    def _rewrite(self, request: Request, entry: TokenEntry, value: str) -> str:
        """An upload URL of the upstream's, pointed at the gateway, with the proof of the
        token that started it."""
        if not value.startswith(self.config.upstream):
            return value
        base = self.config.public_url or str(request.base_url)
        url = base.rstrip("/") + value[len(self.config.upstream) :]
        upload_id = dict(parse_qsl(urlsplit(value).query)).get("upload_id")
        if upload_id:
            sep = "&" if "?" in url else "?"
            url += f"{sep}{_UPLOAD_PROOF}={self._proof(entry.id, upload_id)}"
        return url

    @staticmethod
    async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise _TooLarge
            if chunk:
                yield chunk

    async def _relay(self, request: Request, entry: TokenEntry, response: httpx.Response,
                     start: float) -> AsyncIterator[bytes]:  # fmt: skip
        sent = 0
        note = ""
        try:
            try:
                ready: bytes | None = response.content  # answered here (a denial): read
            except httpx.ResponseNotRead:
                ready = None
            if ready is not None:
                sent = len(ready)
                yield ready
            else:
                async for chunk in response.aiter_raw():
                    sent += len(chunk)
                    yield chunk
        except httpx.TransportError as exc:
            note = f"upstream_{type(exc).__name__}"
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            self.in_flight -= 1
            self._log(request, entry, response.status_code, start, sent, note)

    def __repr__(self) -> str:
        return f"Gateway(upstream={self.config.upstream!r}, agents={sorted(self._agents)})"
