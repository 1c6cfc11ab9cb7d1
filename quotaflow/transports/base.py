"""What the async and the sync driver of :func:`~quotaflow.flow.call_flow` share:
the state of a transport, the requests it derives, the usage scan of a response, and the few
primitives that differ by face (``settle_async``/``settle_sync``, ...), written by hand.

The drivers themselves are :mod:`quotaflow.transports.driver_async` (the source) and
:mod:`quotaflow.transports.driver_sync` (generated from it by ``scripts/unasync.py``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from quotaflow.errors import ConfigError, QuotaflowError
from quotaflow.flow import (
    HEADER_PREFIX,
    CallInfo,
    Count,
    Lookup,
    Outcome,
    Settings,
    call_flow,
)
from quotaflow.flow.held import Held
from quotaflow.flow.policy import CallPolicy
from quotaflow.flow.refusal import answer
from quotaflow.gemini import (
    BodyScanner,
    CountCache,
    StreamScanner,
    Usage,
    body_usage,
    classify,
    decoder_for,
    needs_body,
    redact_url,
)
from quotaflow.limits import Concurrent, Limit
from quotaflow.observe import metrics
from quotaflow.permit import Permit

__all__ = [
    "DriverBase",
    "Scan",
    "read_usage",
    "release_async",
    "release_sync",
    "settle_async",
    "settle_sync",
    "take_directives",
]

log = logging.getLogger("quotaflow.transports")

LIMITER_HELP = (
    "the async transports take a quotaflow.Limiter, the Sync* ones a quotaflow.SyncLimiter "
    "(SyncLimiter.sharing(limiter) makes one that shares an async limiter's state)"
)

_DROP_IN_COUNT = frozenset(
    {"content-length", "content-type", "content-encoding", "transfer-encoding", "host"}
)


class _RedactFilter(logging.Filter):
    """Hides the key's query values in the request lines httpx logs at INFO, whatever the
    spelling of the parameter's name (``key``, ``$key``, ``%6Bey``, ``KEY``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_redacted_arg(a) for a in record.args)
        if isinstance(record.msg, str) and "=" in record.msg:
            record.msg = redact_url(record.msg)
        return True


def _redacted_arg(arg: object) -> object:
    if isinstance(arg, (int, float)):
        return arg
    text = str(arg)
    if "=" not in text:
        return arg
    hidden = redact_url(text)
    return arg if hidden == text else hidden


_REDACT = _RedactFilter()


def redact_http_logs() -> None:
    """Keep API keys passed as ``?key=`` out of httpx's and httpx2's request logs."""
    for name in ("httpx", "httpx2"):
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


_RAW_MARK = b"\n" + HEADER_PREFIX.encode("ascii")


def _drop(left: Any) -> None:
    """An async backend's write left by a sync driver, which has no event loop to run it:
    dropped (the lease runs out on the backend by itself)."""
    if inspect.iscoroutine(left):
        left.close()


def take_directives(headers: Any) -> dict[str, str]:
    """Remove the ``x-quotaflow-*`` headers from ``headers``; returns their values by suffix."""
    raw = getattr(headers, "raw", None)  # httpx's and httpx2's (name, value) bytes: no decoding
    if isinstance(raw, list):
        names = b"\n" + b"\n".join([k for k, _ in raw]).lower()
        if _RAW_MARK not in names:  # no name starts with the prefix (each follows a newline)
            return {}
    found: dict[str, str] = {}
    for name in [k for k in headers if k.lower().startswith(HEADER_PREFIX)]:
        found[name.lower()[len(HEADER_PREFIX) :]] = headers[name]
        del headers[name]
    return found


class Scan:
    """Usage scanning of a response body as it passes (decoded for the scanner only);
    ``watch`` gets the data of each event of a stream (see :class:`StreamScanner`)."""

    __slots__ = ("decode", "done", "scanner")

    def __init__(
        self,
        response: Any,
        streaming: bool,
        decoded: bool = False,
        watch: Callable[[bytes], bool] | None = None,
    ) -> None:
        ctype = str(response.headers.get("content-type", "")).lower()
        self.scanner: StreamScanner | BodyScanner = (
            StreamScanner(watch) if streaming or "event-stream" in ctype else BodyScanner()
        )
        self.decode = decoder_for("" if decoded else response.headers.get("content-encoding", ""))
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.decode is not None and chunk:
            try:
                self.scanner.feed(self.decode(chunk))
            except Exception:  # a corrupt body: stop reading usage, keep passing bytes
                self.decode = None

    def end(self) -> bool:
        """Finish scanning; ``True`` the first time only (the permit settles then)."""
        if self.done:
            return False
        self.done = True
        if isinstance(self.scanner, StreamScanner):
            self.scanner.finish()
        return True


def read_usage(response: Any, streaming: bool) -> Usage | None:
    """The usage of a response the inner transport has already read (its decoded body): what
    a :class:`Scan` of it reads."""
    if (
        not streaming
        and "event-stream" not in str(response.headers.get("content-type", "")).lower()
    ):
        return body_usage(response.content)  # a JSON body, whole: no scanner needed
    scan = Scan(response, streaming, decoded=True)
    scan.feed(response.content)
    scan.end()
    return scan.scanner.usage()


async def settle_async(permit: Any, amounts: Mapping[str, int] | None) -> None:
    """Settle a permit of either face (a batch hold may be a sync limiter's)."""
    done = permit.settle(**(amounts or {}))
    if inspect.isawaitable(done):
        await done


def settle_sync(permit: Any, amounts: Mapping[str, int] | None) -> None:
    """Settle a permit of either face from a thread (a batch hold may be an async limiter's:
    its backend write, which needs an event loop, is dropped and its lease runs out)."""
    left = dict(amounts or {})
    if isinstance(permit, Permit):
        _drop(permit._settle_now(left.pop("input_tokens", None), left))
    else:
        permit.settle(**left)


async def release_async(permit: Any) -> None:
    """Release a permit of either face."""
    done = permit.release()
    if inspect.isawaitable(done):
        await done


def release_sync(permit: Any) -> None:
    """Release a permit of either face from a thread (see :func:`settle_sync`)."""
    if isinstance(permit, Permit):
        _drop(permit._release_now())
    else:
        permit.release()


class DriverBase:
    """State shared by the async and sync drivers."""

    _http: Any  # the httpx-compatible module
    _inner: Any
    _limiter: Any  # the async or the sync limiter, set by each driver
    _settings: Settings
    _cache: CountCache
    _count: Any  # the countTokens limiter (async or sync, as the driver)
    _budget: Any = None  # the policy's budget limiter (async or sync, as the driver)

    def _setup(self, inner: Any, settings: Settings, policy: CallPolicy | None) -> None:
        redact_http_logs()
        self._settings = settings
        self._policy = policy
        self._held: Held | None = None
        self._cache = CountCache(settings.count_cache)
        self._warned: set[tuple[str, str, int]] = set()
        self._inner = inner

    def _flow(self, request: Any, url: str, content: bytes, pairs: Any, streamed: bool) -> Any:
        """The call's flow (``call_flow``) with this transport's settings and limiter."""
        return call_flow(
            request.method,
            url,
            content,
            pairs,
            self._settings,
            self._cache,
            self._limiter.quota,
            self._limiter.clock,
            self._warned,
            self._held,
            self._limiter.spend,
            self._policy,
            request.headers,
            streamed,
        )

    def _pick(self, which: str) -> Any:
        """The limiter an ``Acquire`` effect names."""
        if which == "model":
            return self._limiter
        if which == "count":
            return self._count
        if self._budget is None:
            raise ConfigError("a budget was asked of a transport whose policy has no budgets")
        return self._budget

    def _batch_limit(self, model: str) -> tuple[str, Limit] | None:
        """The scope and the ``batch_enqueued_tokens`` limit of ``model`` (a ``Concurrent``
        limit: a job's tokens come back when its end is seen)."""
        book = self._limiter._core.book
        amount = book.batch_limit(model)
        if amount is None:
            return None
        canonical = book.resolve(model)[0]
        period = self._settings.batch_expiry
        limit = Limit("enqueued_tokens", amount, period, "batch_tokens", Concurrent())
        return canonical, limit

    def _batch_limiter(self, kind: type, model: str) -> tuple[Any, str] | None:
        found = self._batch_limit(model)
        if found is None or self._held is None:
            return None
        scope, limit = found
        key = (kind.__name__, scope)
        lim = self._held.limiters.get(key)
        if lim is None or lim.quota(scope) != (limit,):
            lim = kind(
                tier=None,
                quotas={scope: [limit]},
                backend=self._limiter.backend,
                clock=self._limiter.clock,
                project=self._limiter._core.project,
            )
            # the hold's scope is batch:<project>/<model>: no model name can reach it
            lim._core.namespace = "batch:"
            self._held.limiters[key] = lim
        return lim, scope

    def _passthrough(self, request: Any, url: str) -> bool:
        """Whether the request is an upload whose body streams through unread: the flow sends
        it once, unmetered, never retried (unless ``retry_writes``, which needs the body)."""
        if "upload" not in url and "%" not in url:
            return False  # no path that canonicalizes to an upload route: skip classifying
        if needs_body(request.method, url):
            return False
        call = classify(request.method, url)
        return call.action == "upload" and not self._settings.retry_writes

    def _count_request(self, request: Any, effect: Count) -> Any:
        url = request.url
        key = [(k, v) for k, v in url.params.multi_items() if k == "key"]
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_IN_COUNT]
        headers.append(("content-type", "application/json"))
        return self._http.Request(
            "POST",
            url.copy_with(path=effect.path, query=urlencode(key).encode() if key else None),
            headers=headers,
            content=effect.body,
            extensions={k: v for k, v in request.extensions.items() if k == "timeout"},
        )

    def _lookup_request(self, request: Any, effect: Lookup) -> Any:
        url = request.url
        key = [(k, v) for k, v in url.params.multi_items() if k == "key"]
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_IN_COUNT]
        return self._http.Request(
            "GET",
            url.copy_with(path=effect.path, query=urlencode(key).encode() if key else None),
            headers=headers,
            extensions={k: v for k, v in request.extensions.items() if k == "timeout"},
        )

    def _fresh(self, response: Any, raw: bytes) -> tuple[bytes, Any]:
        decoded = self._http.Response(
            response.status_code, headers=response.headers, content=raw
        ).read()
        fresh = self._http.Response(
            response.status_code,
            headers=response.headers,
            stream=self._http.ByteStream(raw),
            extensions=response.extensions,
        )
        return decoded, fresh

    def _answer(self, outcome: Outcome) -> Any:
        """The local answer of a refused call (see :mod:`quotaflow.flow.refusal`), or its typed
        error raised (``local_errors="raise"``)."""
        refusal, ticket = outcome.refusal, outcome.ticket
        assert refusal is not None
        raised = self._settings.local_errors == "raise"
        if ticket is not None:
            ticket.finish(outcome.info, refusal=refusal, raised=raised)
        if raised:
            raise refusal.error
        local = answer(refusal, outcome.info.call.surface)
        return self._http.Response(
            local.status,
            headers=list(local.headers),
            content=local.body,
            extensions={"quotaflow_refusal": outcome.refusal},
        )

    def _info(self, response: Any, info: CallInfo) -> None:
        model = info.call.model
        if metrics.ON and model:
            metrics.call_done(model, info.statuses, info.attempts)
        if info.call.metered and model:
            try:  # noqa: SIM105 - try costs nothing here; suppress() is an object per call
                info.origins = self._limiter.origins(model)
            except QuotaflowError:
                pass
        try:  # noqa: SIM105 - as above
            response.extensions["quotaflow"] = info
        except TypeError:  # an immutable mapping: skip
            pass

    def __repr__(self) -> str:
        s = self._settings
        sizing = s.sizing if not callable(s.sizing) else getattr(s.sizing, "__name__", "fn")
        return (
            f"{type(self).__name__}(limiter={self._limiter!r}, "
            f"inner={type(self._inner).__name__}, sizing={sizing!r})"
        )
