"""The drivers of :func:`~quotaflow._transport_flow.call_flow`: async and sync, for any
httpx-compatible package (``httpx`` or its fork ``httpx2``, given as ``_http``).

They only carry out effects; every decision is in the flow.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import anyio

from quotaflow import _shadow, metrics
from quotaflow._held import Held, held_for
from quotaflow._refusal import answer
from quotaflow._transport_flow import (
    COUNT_MODEL,
    HEADER_PREFIX,
    Acquire,
    CallInfo,
    Count,
    Effect,
    Exhaust,
    Hold,
    Lookup,
    Outcome,
    Pause,
    Read,
    Release,
    Send,
    Settings,
    Settle,
    Sleep,
    call_flow,
    final_amounts,
)
from quotaflow.errors import ConfigError, QuotaflowError
from quotaflow.gemini import (
    BodyScanner,
    CountCache,
    FileMeta,
    StreamScanner,
    classify,
    decoder_for,
    needs_body,
    redact_url,
)
from quotaflow.limiter import Limiter
from quotaflow.limits import Concurrent, Limit
from quotaflow.permit import Permit
from quotaflow.sync import SyncLimiter

__all__ = ["AsyncDriver", "SyncDriver", "async_stream_class", "sync_stream_class"]

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


_RAW_PREFIX = HEADER_PREFIX.encode("ascii")


def _drop(left: Any) -> None:
    """An async backend's write left by a sync driver, which has no event loop to run it:
    dropped (the lease runs out on the backend by itself)."""
    if inspect.iscoroutine(left):
        left.close()


def take_directives(headers: Any) -> dict[str, str]:
    """Remove the ``x-quotaflow-*`` headers from ``headers``; returns their values by suffix."""
    raw = getattr(headers, "raw", None)  # httpx's and httpx2's (name, value) bytes: no decoding
    if isinstance(raw, list) and not any(k.lower().startswith(_RAW_PREFIX) for k, _ in raw):
        return {}
    found: dict[str, str] = {}
    for name in [k for k in headers if k.lower().startswith(HEADER_PREFIX)]:
        found[name.lower()[len(HEADER_PREFIX) :]] = headers[name]
        del headers[name]
    return found


class _Scan:
    """Usage scanning of a response body as it passes (decoded for the scanner only)."""

    __slots__ = ("decode", "done", "on_end", "scanner")

    def __init__(
        self,
        response: Any,
        streaming: bool,
        on_end: Callable[[_Scan], Any],
        decoded: bool = False,
    ) -> None:
        ctype = str(response.headers.get("content-type", "")).lower()
        self.scanner: StreamScanner | BodyScanner = (
            StreamScanner() if streaming or "event-stream" in ctype else BodyScanner()
        )
        self.decode = decoder_for("" if decoded else response.headers.get("content-encoding", ""))
        self.on_end = on_end
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.decode is not None and chunk:
            try:
                self.scanner.feed(self.decode(chunk))
            except Exception:  # a corrupt body: stop reading usage, keep passing bytes
                self.decode = None

    def end(self) -> Any:
        if self.done:
            return None
        self.done = True
        if isinstance(self.scanner, StreamScanner):
            self.scanner.finish()
        return self.on_end(self)


def async_stream_class(base: type) -> type:
    """An async byte stream (subclass of ``base``) that settles the permit when it ends."""

    class _AsyncSettlingStream(base):  # type: ignore[misc]
        def __init__(self, inner: Any, scan: _Scan) -> None:
            self._inner = inner
            self._scan = scan
            self._it: Any = None

        def __aiter__(self) -> AsyncIterator[bytes]:
            # an iterator object, not an async generator: an early close leaves nothing for
            # the event loop to finalize
            self._it = self._inner.__aiter__()
            return self

        async def __anext__(self) -> bytes:
            try:
                chunk: bytes = await self._it.__anext__()
            except StopAsyncIteration:
                pending = self._scan.end()  # the last chunk has passed: settle now
                if pending is not None:
                    await pending
                raise
            self._scan.feed(chunk)
            return chunk

        async def aclose(self) -> None:
            try:
                pending = self._scan.end()
                if pending is not None:
                    await pending
            finally:
                await self._inner.aclose()

    return _AsyncSettlingStream


def sync_stream_class(base: type) -> type:
    """A sync byte stream (subclass of ``base``) that settles the permit when it ends."""

    class _SyncSettlingStream(base):  # type: ignore[misc]
        def __init__(self, inner: Any, scan: _Scan) -> None:
            self._inner = inner
            self._scan = scan
            self._it: Any = None

        def __iter__(self) -> Iterator[bytes]:
            self._it = iter(self._inner)
            return self

        def __next__(self) -> bytes:
            try:
                chunk: bytes = next(self._it)
            except StopIteration:
                self._scan.end()
                raise
            self._scan.feed(chunk)
            return chunk

        def close(self) -> None:
            try:
                self._scan.end()
            finally:
                self._inner.close()

    return _SyncSettlingStream


class _DriverBase:
    """State shared by the async and sync drivers."""

    _http: Any  # the httpx-compatible module
    _inner: Any
    _limiter: Any  # the async or the sync limiter, set by each driver
    _settings: Settings
    _cache: CountCache

    def _setup(self, inner: Any, settings: Settings) -> None:
        redact_http_logs()
        self._settings = settings
        self._held: Held | None = None
        self._cache = CountCache(settings.count_cache)
        self._warned: set[tuple[str, str, int]] = set()
        self._inner = inner

    def _flow(self, request: Any, content: bytes, pairs: Any) -> Any:
        """The call's flow (``call_flow``) with this transport's settings and limiter."""
        return call_flow(
            request.method,
            str(request.url),
            content,
            pairs,
            self._settings,
            self._cache,
            self._limiter.quota,
            self._limiter.clock,
            self._warned,
            self._held,
            self._limiter.spend,
        )

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

    def _record_upload(self, response: Any, content: bytes) -> None:
        """Keep the metadata of a finished upload (its response's ``file``)."""
        if self._held is None or response.status_code != 200 or not content:
            return
        try:
            obj = json.loads(content)
        except ValueError:
            return
        f = obj.get("file") if isinstance(obj, dict) else None
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            self._held.files.put(f["name"], FileMeta.from_json(f))

    def _passthrough(self, request: Any) -> bool:
        """Uploads (streamed bodies that create files) skip the flow: nothing to meter, and
        they are never retried."""
        url = str(request.url)
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
        """The local answer of a refused call (see :mod:`quotaflow._refusal`)."""
        assert outcome.refusal is not None
        local = answer(outcome.refusal, outcome.info.call.surface)
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
            with contextlib.suppress(QuotaflowError):
                info.origins = self._limiter.origins(model)
        with contextlib.suppress(TypeError):  # an immutable mapping: skip
            response.extensions["quotaflow"] = info

    def __repr__(self) -> str:
        s = self._settings
        sizing = s.sizing if not callable(s.sizing) else getattr(s.sizing, "__name__", "fn")
        return (
            f"{type(self).__name__}(limiter={self._limiter!r}, "
            f"inner={type(self._inner).__name__}, sizing={sizing!r})"
        )


class AsyncDriver(_DriverBase):
    """Runs the flow with awaits (anyio: asyncio or trio)."""

    _limiter: Limiter
    _count: Limiter
    _stream_cls: type

    def _init_async(self, limiter: Limiter, inner: Any, settings: Settings) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigError(
                f"{type(self).__name__} needs an async quotaflow.Limiter, got "
                f"{type(limiter).__name__}; use the Sync* transport with a SyncLimiter"
            )
        self._setup(inner, settings)
        self._limiter = limiter
        self._held = held_for(limiter)
        self._count = Limiter(
            tier=None,
            quotas={COUNT_MODEL: settings.count_quota},
            backend=limiter.backend,
            clock=limiter.clock,
            project=limiter.project,
            mode=limiter.mode,
        )

    async def _handle_async(self, request: Any) -> Any:
        pairs = take_directives(request.headers)
        if self._passthrough(request):
            response = await self._inner.handle_async_request(request)
            if response.status_code == 200 and "json" in response.headers.get("content-type", ""):
                decoded, response = await self._read(response)
                self._record_upload(response, decoded)
            return response
        content = await request.aread()
        flow = self._flow(request, content, pairs)
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                outcome: Outcome = stop.value
                break
            error = None
            try:
                result = await self._do(effect, request)
            except BaseException as exc:  # handed to the flow, which settles and re-raises
                result, error = None, exc
        return await self._finish(outcome)

    async def _do(self, effect: Effect, request: Any) -> Any:
        if isinstance(effect, Send):
            return await self._inner.handle_async_request(request)
        if isinstance(effect, Acquire):
            lim = self._limiter if effect.limiter == "model" else self._count
            if lim.mode == "shadow":
                return await _shadow.acquire_async(lim, effect)
            if effect.nowait:
                permit = await lim.acquire_nowait(
                    effect.model,
                    effect.tokens,
                    cost=effect.cost,
                    priority=effect.priority,
                    agent=effect.agent,
                )
            else:
                permit = await lim.acquire(
                    effect.model,
                    effect.tokens,
                    cost=effect.cost,
                    priority=effect.priority,
                    deadline=effect.deadline,
                    agent=effect.agent,
                )
            return permit
        if isinstance(effect, Settle):
            done = effect.permit.settle(**(effect.amounts or {}))
            if inspect.isawaitable(done):  # a batch hold may be a sync limiter's permit
                await done
            return None
        if isinstance(effect, Release):
            done = effect.permit.release()
            if inspect.isawaitable(done):  # a batch hold may be a sync limiter's permit
                await done
            return None
        if isinstance(effect, Hold):
            found = self._batch_limiter(Limiter, effect.model)
            if found is None:
                return None
            lim, scope = found
            return await lim.acquire(
                scope,
                0,
                cost={"requests": 0, "batch_tokens": effect.tokens},
                priority=effect.priority,
                deadline=effect.deadline,
                agent=effect.agent,
            )
        if isinstance(effect, Read):
            return await self._read(effect.response)
        if isinstance(effect, Count):
            try:
                resp = await self._inner.handle_async_request(self._count_request(request, effect))
                return resp.status_code, (await self._read(resp))[0]
            except Exception:
                return None
        if isinstance(effect, Lookup):
            try:
                resp = await self._inner.handle_async_request(self._lookup_request(request, effect))
                return resp.status_code, (await self._read(resp))[0]
            except Exception:
                return None
        if isinstance(effect, Sleep):
            await anyio.sleep(effect.seconds)
            return None
        if isinstance(effect, Pause):
            if metrics.ON:
                metrics.paused(effect.model, effect.dimension)
            return await self._limiter.pause(effect.model, effect.dimension, effect.until)
        if isinstance(effect, Exhaust):
            return await self._limiter.exhaust(effect.model, effect.dimension)
        return await self._limiter.learn(
            effect.model, effect.dimension, effect.amount, quota_id=effect.quota_id
        )

    async def _read(self, response: Any) -> tuple[bytes, Any]:
        if response.is_stream_consumed:  # already read by the inner transport
            return response.content, response
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return self._fresh(response, raw)

    async def _finish(self, outcome: Outcome) -> Any:
        if outcome.refusal is not None:
            outcome.response = self._answer(outcome)
        response, permit, info = outcome.response, outcome.permit, outcome.info
        self._info(response, info)
        if permit is None:
            return response
        reserve = self._settings.reserve_output

        async def settle(scan: _Scan) -> None:
            info.usage = scan.scanner.usage()
            info.settled = True
            if metrics.ON and info.usage is not None and info.call.model:
                metrics.settled(info.call.model, info.estimated, info.usage.input_tokens)
            amounts: Mapping[str, int] = final_amounts(info, reserve, self._limiter.spend)
            await permit.settle(**amounts)

        if response.is_closed:  # an inner transport that returned a read response
            scan = _Scan(response, info.call.streaming, settle, decoded=True)
            scan.feed(response.content)
            await scan.end()
            return response
        scan = _Scan(response, info.call.streaming, settle)
        response.stream = self._stream_cls(response.stream, scan)
        return response

    async def _aclose(self) -> None:
        await self._inner.aclose()


class SyncDriver(_DriverBase):
    """Runs the flow in the calling thread."""

    _limiter: SyncLimiter
    _count: SyncLimiter
    _stream_cls: type

    def _init_sync(self, limiter: SyncLimiter, inner: Any, settings: Settings) -> None:
        if not isinstance(limiter, SyncLimiter):
            raise ConfigError(
                f"{type(self).__name__} needs a quotaflow.SyncLimiter, got "
                f"{type(limiter).__name__}; SyncLimiter.sharing(limiter) makes one that "
                "shares an async limiter's state"
            )
        self._setup(inner, settings)
        self._limiter = limiter
        self._held = held_for(limiter)
        self._count = SyncLimiter(
            tier=None,
            quotas={COUNT_MODEL: settings.count_quota},
            backend=limiter.backend,
            clock=limiter.clock,
            project=limiter._core.project,
            mode=limiter.mode,
        )

    def _handle(self, request: Any) -> Any:
        pairs = take_directives(request.headers)
        if self._passthrough(request):
            response = self._inner.handle_request(request)
            if response.status_code == 200 and "json" in response.headers.get("content-type", ""):
                decoded, response = self._read(response)
                self._record_upload(response, decoded)
            return response
        content = request.read()
        flow = self._flow(request, content, pairs)
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                outcome: Outcome = stop.value
                break
            error = None
            try:
                result = self._do(effect, request)
            except BaseException as exc:
                result, error = None, exc
        return self._finish(outcome)

    def _do(self, effect: Effect, request: Any) -> Any:
        if isinstance(effect, Send):
            return self._inner.handle_request(request)
        if isinstance(effect, Acquire):
            lim = self._limiter if effect.limiter == "model" else self._count
            if lim.mode == "shadow":
                return _shadow.acquire_sync(lim, effect)
            if effect.nowait:
                permit = lim.acquire_nowait(
                    effect.model,
                    effect.tokens,
                    cost=effect.cost,
                    priority=effect.priority,
                    agent=effect.agent,
                )
            else:
                permit = lim._acquire(
                    effect.model,
                    effect.tokens,
                    effect.cost,
                    effect.priority,
                    None,
                    effect.deadline,
                    False,
                    effect.agent,
                )
            return permit
        if isinstance(effect, Settle):
            amounts = dict(effect.amounts or {})
            if isinstance(effect.permit, Permit):  # a batch hold taken by an async limiter
                _drop(effect.permit._settle_now(amounts.pop("input_tokens", None), amounts))
            else:
                effect.permit.settle(**amounts)
            return None
        if isinstance(effect, Release):
            if isinstance(effect.permit, Permit):  # a batch hold taken by an async limiter
                _drop(effect.permit._release_now())
            else:
                effect.permit.release()
            return None
        if isinstance(effect, Hold):
            found = self._batch_limiter(SyncLimiter, effect.model)
            if found is None:
                return None
            lim, scope = found
            return lim._acquire(
                scope,
                0,
                {"requests": 0, "batch_tokens": effect.tokens},
                effect.priority,
                None,
                effect.deadline,
                False,
                effect.agent,
            )
        if isinstance(effect, Read):
            return self._read(effect.response)
        if isinstance(effect, Count):
            try:
                resp = self._inner.handle_request(self._count_request(request, effect))
                return resp.status_code, self._read(resp)[0]
            except Exception:
                return None
        if isinstance(effect, Lookup):
            try:
                resp = self._inner.handle_request(self._lookup_request(request, effect))
                return resp.status_code, self._read(resp)[0]
            except Exception:
                return None
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Pause):
            if metrics.ON:
                metrics.paused(effect.model, effect.dimension)
            return self._limiter.pause(effect.model, effect.dimension, effect.until)
        if isinstance(effect, Exhaust):
            return self._limiter.exhaust(effect.model, effect.dimension)
        return self._limiter.learn(
            effect.model, effect.dimension, effect.amount, quota_id=effect.quota_id
        )

    def _read(self, response: Any) -> tuple[bytes, Any]:
        if response.is_stream_consumed:  # already read by the inner transport
            return response.content, response
        try:
            raw = b"".join(list(response.iter_raw()))
        finally:
            response.close()
        return self._fresh(response, raw)

    def _finish(self, outcome: Outcome) -> Any:
        if outcome.refusal is not None:
            outcome.response = self._answer(outcome)
        response, permit, info = outcome.response, outcome.permit, outcome.info
        self._info(response, info)
        if permit is None:
            return response
        reserve = self._settings.reserve_output

        def settle(scan: _Scan) -> None:
            info.usage = scan.scanner.usage()
            info.settled = True
            if metrics.ON and info.usage is not None and info.call.model:
                metrics.settled(info.call.model, info.estimated, info.usage.input_tokens)
            permit.settle(**final_amounts(info, reserve, self._limiter.spend))

        if response.is_closed:  # an inner transport that returned a read response
            scan = _Scan(response, info.call.streaming, settle, decoded=True)
            scan.feed(response.content)
            scan.end()
            return response
        scan = _Scan(response, info.call.streaming, settle)
        response.stream = self._stream_cls(response.stream, scan)
        return response
