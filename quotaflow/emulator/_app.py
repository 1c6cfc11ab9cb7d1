"""The :class:`Emulator`: an ASGI app routing Gemini API paths to their handlers."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import _h_content as content
from . import _h_interactions as interactions
from . import _h_jobs as jobs
from . import _h_openai as openai
from . import _h_resources as resources
from ._config import EmulatorConfig
from ._engine import ClockLike, EmulatorState, as_clock
from ._errors import ErrorReply, invalid_argument, not_found
from ._faults import Injection
from ._http import Ctx, json_response

__all__ = ["Emulator"]

logger = logging.getLogger("quotaflow.emulator")

Handler = Callable[[Ctx], Awaitable[Response]]
_VERSIONS = ("v1", "v1beta")
_PATH = re.compile(
    r"^(?P<coll>models|tunedModels|files|cachedContents|batches)"
    r"(?:/(?P<id>[^/:]+))?(?::(?P<verb>[A-Za-z]+))?$"
)


def _stream(handler: Callable[..., Awaitable[Response]], **kwargs: Any) -> Handler:
    async def call(ctx: Ctx) -> Response:
        return await handler(ctx, **kwargs)

    return call


# (collection, has id, verb, HTTP method) -> handler
_NATIVE: dict[tuple[str, bool, str, str], Handler] = {
    ("models", False, "", "GET"): content.list_models,
    ("models", True, "", "GET"): content.get_model,
    ("models", True, "generateContent", "POST"): _stream(content.generate, stream=False),
    ("models", True, "streamGenerateContent", "POST"): _stream(content.generate, stream=True),
    ("models", True, "countTokens", "POST"): content.count_tokens,
    ("models", True, "embedContent", "POST"): content.embed_content,
    ("models", True, "batchEmbedContents", "POST"): content.batch_embed,
    ("models", True, "batchGenerateContent", "POST"): _stream(jobs.create_batch, embed=False),
    ("models", True, "asyncBatchEmbedContent", "POST"): _stream(jobs.create_batch, embed=True),
    ("files", False, "", "GET"): resources.list_files,
    ("files", True, "", "GET"): resources.get_file,
    ("files", True, "", "DELETE"): resources.delete_file,
    ("files", True, "download", "GET"): resources.download_file,
    ("cachedContents", False, "", "POST"): resources.create_cache,
    ("cachedContents", False, "", "GET"): resources.list_caches,
    ("cachedContents", True, "", "GET"): resources.get_cache,
    ("cachedContents", True, "", "PATCH"): resources.patch_cache,
    ("cachedContents", True, "", "DELETE"): resources.delete_cache,
    ("batches", False, "", "GET"): jobs.list_batches,
    ("batches", True, "", "GET"): jobs.get_batch,
    ("batches", True, "", "DELETE"): jobs.delete_batch,
    ("batches", True, "cancel", "POST"): jobs.cancel_batch,
    ("tunedModels", False, "", "POST"): jobs.create_tuned,
    ("tunedModels", False, "", "GET"): jobs.list_tuned,
    ("tunedModels", True, "", "GET"): jobs.get_tuned,
    ("tunedModels", True, "", "DELETE"): jobs.delete_tuned,
    ("tunedModels", True, "generateContent", "POST"): _stream(jobs.tuned_generate, stream=False),
    ("tunedModels", True, "streamGenerateContent", "POST"): _stream(
        jobs.tuned_generate, stream=True
    ),
}
# (has id, verb, HTTP method) -> handler
_INTERACTIONS: dict[tuple[bool, str, str], Handler] = {
    (False, "", "POST"): interactions.create_interaction,
    (True, "", "GET"): interactions.get_interaction,
    (True, "", "DELETE"): interactions.delete_interaction,
    (True, "cancel", "POST"): interactions.cancel_interaction,
}
_OPENAI: dict[tuple[str, str], Handler] = {
    ("chat/completions", "POST"): openai.chat_completions,
    ("embeddings", "POST"): openai.embeddings,
    ("models", "GET"): openai.list_models,
}


class Emulator:
    """A local Gemini Developer API: every REST method, Gemini's quotas, real error bodies.

    The emulator is an ASGI app: pass it to ``httpx.ASGITransport(app=emulator)`` for in-process
    use, or serve it with :func:`quotaflow.emulator.serve`.

    Args:
        config: Configuration (default: one key ``test-key``, the default models).
        clock: Callable returning epoch seconds, or an object with ``now()`` such as
            ``quotaflow.clock.ManualClock``; inject one to control time in tests.

    Example:
        >>> emulator = Emulator(EmulatorConfig(minute_seconds=1.0))
        >>> emulator.stats()["models"]
        {}
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, clock: ClockLike = time.time
    ) -> None:
        self._engine = EmulatorState(config or EmulatorConfig(), as_clock(clock))
        self.app = Starlette(
            routes=[
                Route("/_emulator/stats", self._stats_route, methods=["GET"]),
                Route("/_emulator/reset", self._reset_route, methods=["POST"]),
                Route("/_emulator/inject", self._inject_route, methods=["POST"]),
                Route("/_emulator/limits", self._limits_route, methods=["POST"]),
                Route("/_emulator/oauth2/token", self._token_route, methods=["POST"]),
                Route("/{version}/openai/{rest:path}", self._openai_route, methods=["GET", "POST"]),
                Route("/upload/{version}/files", self._upload_route, methods=["POST"]),
                Route(
                    "/{version}/interactions{rest:path}",
                    self._interactions_route,
                    methods=["GET", "POST", "DELETE"],
                ),
                Route(
                    "/{version}/{rest:path}",
                    self._native_route,
                    methods=["GET", "POST", "PATCH", "DELETE"],
                ),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def config(self) -> EmulatorConfig:
        """The configuration in force."""
        return self._engine.config

    def stats(self, *, include_log: bool = False) -> dict[str, Any]:
        """Per-model counters and the exact maxima per rolling window.

        Args:
            include_log: Also return every admission (time, project, requests, tokens).

        Returns:
            ``{"minute_seconds": ..., "models": {model: {...}}, "spend": {...}}``; ``spend``
            holds the micro-dollars charged per project (``spent_micros``), the prepaid
            balances left (``balance_micros``) and the largest spend in any rolling spend window
            (``max_window_micros``); ``oauth`` the token requests ``issued`` and ``refused``;
            ``webhooks`` the batch events ``delivered`` and ``failed``.
        """
        with self._engine.lock:
            out = self._engine.stats.snapshot(
                self._engine.config.minute_seconds, include_log=include_log
            )
            out["spend"] = self._engine.spend.snapshot(include_log)
            out["oauth"] = self._engine.oauth.snapshot()
            out["webhooks"] = self._engine.webhooks.snapshot()
            return out

    def reset(self) -> None:
        """Forget quotas, statistics, injections and resources."""
        self._engine.reset()

    def inject(
        self,
        model: str,
        status: int = 429,
        *,
        count: int = 1,
        violations: Sequence[str] = ("rpm",),
        retry_delay: float | None = None,
        body: dict[str, Any] | None = None,
        project: str | None = None,
    ) -> None:
        """Force the next ``count`` generate/embed responses of ``model`` to be ``status``.

        Args:
            model: Model id (``gemini-2.5-flash`` or ``models/gemini-2.5-flash``).
            status: 429, 500, 503 or 504.
            count: How many responses to force.
            violations: For a 429: violated dimensions (``rpm``, ``tpm``, ``rpd``, ``tpd``).
            retry_delay: For a 429: ``retryDelay`` seconds (default: the period).
            body: Send this JSON body verbatim instead.
            project: Only affect requests of this project.

        Raises:
            ValueError: for an unknown model, an unsupported status or dimension.
        """
        if self._engine.config.model(model) is None:
            raise ValueError(f"unknown model {model!r}")
        injection = Injection(status, tuple(violations), retry_delay, body, project)
        with self._engine.lock:
            self._engine.faults.inject(model, injection, count)

    def set_limits(self, model: str, **limits: int | None) -> None:
        """Change ``model``'s limits from now on, as a tier drop does (``None``: unlimited).

        Example:
            >>> emulator = Emulator()
            >>> emulator.set_limits("gemini-2.5-flash", rpm=5, tpm=1000)
            >>> emulator.config.model("gemini-2.5-flash").rpm
            5

        Raises:
            ValueError: an unknown model or dimension, or a bad amount.
        """
        self._engine.set_limits(model, dict(limits))

    def pending_injections(self) -> dict[str, int]:
        """Number of forced responses still queued, per model."""
        with self._engine.lock:
            return self._engine.faults.pending()

    # --- routes ---------------------------------------------------------------------------------

    async def _stats_route(self, request: Request) -> Response:
        return json_response(self.stats(include_log=request.query_params.get("log") == "1"))

    async def _reset_route(self, request: Request) -> Response:
        self.reset()
        return json_response({})

    async def _inject_route(self, request: Request) -> Response:
        try:
            data = await request.json()
            unknown = sorted(
                set(data)
                - {"model", "status", "count", "violations", "retry_delay", "body", "project"}
            )
            if unknown:
                raise ValueError(f"unknown fields: {unknown}")
            self.inject(
                str(data["model"]),
                int(data.get("status", 429)),
                count=int(data.get("count", 1)),
                violations=data.get("violations", ("rpm",)),
                retry_delay=data.get("retry_delay"),
                body=data.get("body"),
                project=data.get("project"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"pending": self.pending_injections()})

    async def _token_route(self, request: Request) -> Response:
        body = await request.body()
        with self._engine.lock:
            status, answer = self._engine.oauth.grant(body, request.headers.get("content-type", ""))
        return json_response(answer, status=status)

    async def _limits_route(self, request: Request) -> Response:
        try:
            data = await request.json()
            model = str(data.pop("model"))
            self.set_limits(model, **data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        cfg = self.config.model(model)
        return json_response({} if cfg is None else cfg.model_dump())

    async def _run(
        self, request: Request, handler: Callable[[], Awaitable[Response]], *, openai: bool
    ) -> Response:
        try:
            response = await handler()
        except ErrorReply as exc:
            body: Any = exc.body
            if openai:
                if not self._engine.config.openai_error_details:
                    body = {"error": {k: v for k, v in body["error"].items() if k != "details"}}
                body = [body]
            response = json_response(body, status=exc.code)
        # Never log the query string: it may hold ?key=.
        logger.debug("%s %s -> %s", request.method, request.url.path, response.status_code)
        return response

    def _ctx(
        self,
        request: Request,
        version: str,
        ident: str | None,
        coll: str | None = None,
        *,
        openai: bool = False,
    ) -> Ctx:
        if version not in _VERSIONS:
            raise not_found(f"API version {version} is not supported.")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if openai and token and not self._engine.oauth.knows(token):
            key, token = token, None  # the OpenAI SDKs send the key as the bearer token
        project = self._engine.authenticate(
            key, token, oauth_only=coll in self._engine.config.oauth_only
        )
        return Ctx(self._engine, request, project, version, ident)

    async def _native_route(self, request: Request) -> Response:
        async def handle() -> Response:
            version = request.path_params["version"]
            match = _PATH.match(request.path_params["rest"])
            ctx = self._ctx(request, version, match and match["id"], match and match["coll"])
            if match is None:
                raise not_found(f"Method not found: {request.url.path}")
            route = (match["coll"], match["id"] is not None, match["verb"] or "", request.method)
            handler = _NATIVE.get(route)
            if handler is None:
                raise not_found(f"Method not found: {request.method} {request.url.path}")
            return await handler(ctx)

        return await self._run(request, handle, openai=False)

    async def _interactions_route(self, request: Request) -> Response:
        async def handle() -> Response:
            rest = request.path_params["rest"].strip("/").replace(":", "/")
            segs = rest.split("/") if rest else []
            ident = segs[0] if segs else None
            ctx = self._ctx(request, request.path_params["version"], ident)
            verb = segs[1] if len(segs) > 1 else ""
            handler = _INTERACTIONS.get((ident is not None, verb, request.method))
            if handler is None or len(segs) > 2:
                raise not_found(f"Method not found: {request.method} {request.url.path}")
            return await handler(ctx)

        return await self._run(request, handle, openai=False)

    async def _upload_route(self, request: Request) -> Response:
        async def handle() -> Response:
            upload_id = request.query_params.get("upload_id")
            version = request.path_params["version"]
            if upload_id is not None:  # the upload URL is the credential, as with Google's
                return await resources.upload(Ctx(self._engine, request, "", version), upload_id)
            ctx = self._ctx(request, version, None, "files")
            return await resources.upload(ctx, None)

        return await self._run(request, handle, openai=False)

    async def _openai_route(self, request: Request) -> Response:
        async def handle() -> Response:
            rest = request.path_params["rest"].strip("/")
            ident = rest[7:] if rest.startswith("models/") else None
            ctx = self._ctx(request, request.path_params["version"], ident, openai=True)
            if ctx.version != "v1beta":
                raise not_found("The OpenAI-compatible API is served under /v1beta/openai/.")
            if ident is not None and request.method == "GET":
                return await openai.get_model(ctx)
            handler = _OPENAI.get((rest, request.method))
            if handler is None:
                raise invalid_argument(f"Unsupported OpenAI-compatible route: {rest}")
            return await handler(ctx)

        return await self._run(request, handle, openai=True)
