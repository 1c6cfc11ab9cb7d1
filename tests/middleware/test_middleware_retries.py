"""Transient failures are retried by the transport, as google-genai's own ``retry_options``
would have (the README tells users to leave those off): connection errors, timeouts, 408 and
502, besides 500/503/504.

Real HTTP on loopback to the emulator. Faults come from an inner transport that wraps the real
one (it raises httpx's or httpx2's own errors before or after really sending, or answers like
Google's front end with a 408/502 page), and from real sockets: a proxy that drops connections
after reading the request, and a port nobody listens on until the first attempt has failed.
What is checked is what a user sees: the call succeeds, the limiter keeps the request count of
attempts that may have reached the server and gives back the ones that never left, the caller
gets the inner transport's own last error when retries run out, and creates are not repeated
unless ``retry_writes=True``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Literal

import httpx
import httpx2
import pytest
from google import genai

from quotaflow import RPD, RPM, TPM, Limiter, SyncLimiter
from quotaflow.emulator import ApiKeyConfig, EmulatorConfig, ModelConfig, ServedEmulator, serve
from quotaflow.transports import (
    CallInfo,
    Httpx2QuotaTransport,
    QuotaTransport,
    SyncHttpx2QuotaTransport,
    SyncQuotaTransport,
    genai_http_options,
)

Flavor = Literal["httpx", "httpx2"]
FLAVORS: list[Flavor] = ["httpx", "httpx2"]
HTTP: dict[str, ModuleType] = {"httpx": httpx, "httpx2": httpx2}

KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv"  # shaped like a real key: redaction must see it
FLASH = "gemini-2.5-flash"
GEN = f"/v1beta/models/{FLASH}:generateContent"
BODY = {"contents": [{"parts": [{"text": "hello " * 20}]}]}
CACHE = {"model": f"models/{FLASH}", "contents": [{"role": "user", "parts": [{"text": "x"}]}]}
GFE_PAGE = b"<html><title>Error 502 (Server Error)!!1</title>That's an error.</html>"

NEVER_SENT = ["ConnectError", "ConnectTimeout", "PoolTimeout"]
MAYBE_SENT = ["ReadTimeout", "WriteTimeout", "ReadError", "WriteError", "RemoteProtocolError"]


def _limiter() -> Limiter:
    return Limiter(tier=None, quotas={FLASH: [RPM(1000), TPM(1_000_000), RPD(10_000)]})


def _sync_limiter() -> SyncLimiter:
    return SyncLimiter(tier=None, quotas={FLASH: [RPM(1000), TPM(1_000_000), RPD(10_000)]})


@pytest.fixture(scope="module")
def _server() -> Iterator[ServedEmulator]:
    config = EmulatorConfig(
        keys=[ApiKeyConfig(key=KEY)],
        models=[ModelConfig(name=FLASH, rpm=1000, tpm=1_000_000, rpd=10_000)],
        cache_min_tokens=0,
    )
    with serve(config) as s:
        yield s


@pytest.fixture
def served(_server: ServedEmulator) -> ServedEmulator:
    _server.emulator.reset()
    return _server


def _received(served: ServedEmulator) -> int:
    """Generate requests that reached the emulator."""
    stats: dict[str, Any] = served.emulator.stats()["models"].get(FLASH, {})
    return int(stats.get("received", 0))


def _caches(served: ServedEmulator) -> int:
    r = httpx.get(f"{served.base_url}/v1beta/cachedContents", headers={"x-goog-api-key": KEY})
    return len(r.json().get("cachedContents", []))


async def _used(limiter: Limiter) -> int:
    """Requests the limiter keeps counted (nothing may stay in flight)."""
    status = await limiter.status(FLASH)
    assert status["rpd"].in_flight == 0 and status["tpm"].in_flight == 0
    return status["rpd"].used


# --- faults from an inner transport ----------------------------------------------------------


class Faults:
    """What the next requests meet, in order: ``("before", name)`` raises the HTTP package's
    error ``name`` without sending; ``("after", name)`` really sends, reads the answer, then
    raises ``name`` (the server counted the call, the client never saw the response);
    ``("status", code)`` answers like Google's front end (an HTML page), without sending."""

    def __init__(self, *faults: tuple[str, Any]) -> None:
        self.faults = list(faults)
        self.raised: list[BaseException] = []
        self.requests = 0

    def next(self) -> tuple[str, Any] | None:
        self.requests += 1
        return self.faults.pop(0) if self.faults else None

    def error(self, http: ModuleType, name: str, request: Any) -> BaseException:
        # the message carries the URL (with ?key= when the caller put it there): logs must not
        exc: BaseException = getattr(http, name)(f"{name} on {request.url}", request=request)
        self.raised.append(exc)
        return exc


def _front_end(http: ModuleType, code: int) -> Any:
    return http.Response(code, headers={"content-type": "text/html"}, content=GFE_PAGE)


def flaky(flavor: Flavor, faults: Faults) -> Any:
    """An async inner transport of ``flavor`` that meets ``faults`` and then really sends."""
    http = HTTP[flavor]

    class Flaky(http.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.inner = http.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            fault = faults.next()
            if fault is None:
                return await self.inner.handle_async_request(request)
            kind, what = fault
            if kind == "status":
                return _front_end(http, what)
            if kind == "after":
                response = await self.inner.handle_async_request(request)
                await response.aread()
                await response.aclose()
            raise faults.error(http, what, request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return Flaky()


def sync_flaky(flavor: Flavor, faults: Faults) -> Any:
    """The sync twin of :func:`flaky`."""
    http = HTTP[flavor]

    class SyncFlaky(http.BaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.inner = http.HTTPTransport()

        def handle_request(self, request: Any) -> Any:
            fault = faults.next()
            if fault is None:
                return self.inner.handle_request(request)
            kind, what = fault
            if kind == "status":
                return _front_end(http, what)
            if kind == "after":
                response = self.inner.handle_request(request)
                response.read()
                response.close()
            raise faults.error(http, what, request)

        def close(self) -> None:
            self.inner.close()

    return SyncFlaky()


def _client(flavor: Flavor, limiter: Limiter, inner: Any, base_url: str, **options: Any) -> Any:
    cls = QuotaTransport if flavor == "httpx" else Httpx2QuotaTransport
    transport = cls(limiter, inner, backoff=0.01, **options)
    return HTTP[flavor].AsyncClient(
        transport=transport, base_url=base_url, headers={"x-goog-api-key": KEY}
    )


# --- the classes of failure ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("error", NEVER_SENT)
async def test_never_sent_errors_are_retried_and_give_the_request_back(
    served: ServedEmulator, flavor: Flavor, error: str
) -> None:
    limiter = _limiter()
    faults = Faults(("before", error), ("before", error))
    async with _client(flavor, limiter, flaky(flavor, faults), served.base_url) as client:
        r = await client.post(GEN, json=BODY)
    assert r.status_code == 200
    info: CallInfo = r.extensions["quotaflow"]
    assert info.attempts == 3 and info.settled
    assert await _used(limiter) == 1  # the two that never left cost nothing
    assert _received(served) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("error", MAYBE_SENT)
async def test_errors_after_sending_are_retried_and_keep_the_request(
    served: ServedEmulator, flavor: Flavor, error: str
) -> None:
    limiter = _limiter()
    faults = Faults(("after", error), ("after", error))
    async with _client(flavor, limiter, flaky(flavor, faults), served.base_url) as client:
        r = await client.post(GEN, json=BODY)
    assert r.status_code == 200 and r.extensions["quotaflow"].attempts == 3
    # the server counted all three (the first two answers were lost): so does the limiter
    assert _received(served) == 3
    assert await _used(limiter) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("code", [408, 502])
async def test_front_end_408_and_502_are_retried_and_keep_the_request(
    served: ServedEmulator, flavor: Flavor, code: int
) -> None:
    limiter = _limiter()
    faults = Faults(("status", code), ("status", code))
    async with _client(flavor, limiter, flaky(flavor, faults), served.base_url) as client:
        r = await client.post(GEN, json=BODY)
    assert r.status_code == 200
    assert r.extensions["quotaflow"].statuses == [code, code, 200]
    assert await _used(limiter) == 3  # an answer came: whatever its status, the call counts


@pytest.mark.anyio
async def test_every_kind_shares_one_retry_budget_with_5xx(served: ServedEmulator) -> None:
    limiter = _limiter()
    served.emulator.inject(FLASH, 503)  # met by the third attempt, the first to reach it
    faults = Faults(("before", "ConnectError"), ("status", 502))
    async with _client("httpx", limiter, flaky("httpx", faults), served.base_url) as client:
        r = await client.post(GEN, json=BODY)  # ConnectError, 502, 503, then 200
        assert r.status_code == 200 and r.extensions["quotaflow"].attempts == 4
        assert await _used(limiter) == 3 and _received(served) == 2
        served.emulator.inject(FLASH, 503, count=2)
        faults.faults = [("before", "ConnectTimeout"), ("status", 408), ("after", "ReadError")]
        r = await client.post(GEN, json=BODY)  # ConnectTimeout, 408, (503) ReadError, 503
    assert r.status_code == 503 and r.extensions["quotaflow"].attempts == 4  # 3 retries spent
    assert await _used(limiter) == 6 and _received(served) == 4


@pytest.mark.anyio
async def test_reads_are_retried_too(served: ServedEmulator) -> None:
    faults = Faults(("before", "ConnectError"), ("after", "ReadTimeout"), ("status", 502))
    async with _client("httpx", _limiter(), flaky("httpx", faults), served.base_url) as client:
        r = await client.get("/v1beta/cachedContents")
    assert r.status_code == 200 and faults.requests == 4


# --- when retries run out --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(("when", "error"), [("before", "ConnectError"), ("after", "ReadTimeout")])
async def test_retries_run_out_the_caller_gets_the_inner_error(
    served: ServedEmulator, flavor: Flavor, when: str, error: str
) -> None:
    limiter = _limiter()
    faults = Faults(*[(when, error)] * 5)
    inner = flaky(flavor, faults)
    async with _client(flavor, limiter, inner, served.base_url, max_5xx_retries=2) as client:
        with pytest.raises(getattr(HTTP[flavor], error)) as caught:
            await client.post(GEN, json=BODY)
    assert len(faults.raised) == 3
    assert caught.value is faults.raised[-1] and type(caught.value) is getattr(HTTP[flavor], error)
    # never sent: nothing kept; sent and lost: each of the three reached the emulator
    assert await _used(limiter) == (0 if when == "before" else 3)
    assert _received(served) == (0 if when == "before" else 3)


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_retries_run_out_on_502_the_caller_gets_the_last_response(
    served: ServedEmulator, flavor: Flavor
) -> None:
    limiter = _limiter()
    faults = Faults(*[("status", 502)] * 5)
    inner = flaky(flavor, faults)
    async with _client(flavor, limiter, inner, served.base_url, max_5xx_retries=1) as client:
        r = await client.post(GEN, json=BODY)
    assert r.status_code == 502 and r.content == GFE_PAGE
    assert r.headers["content-type"] == "text/html" and r.extensions["quotaflow"].attempts == 2
    assert await _used(limiter) == 2


@pytest.mark.anyio
async def test_no_retry_past_the_callers_deadline(served: ServedEmulator) -> None:
    limiter = _limiter()
    faults = Faults(("before", "ConnectError"), ("before", "ConnectError"))
    transport = QuotaTransport(limiter, flaky("httpx", faults), backoff=5.0)
    async with httpx.AsyncClient(transport=transport, base_url=served.base_url) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.post(
                GEN, json=BODY, headers={"x-goog-api-key": KEY, "x-quotaflow-timeout": "0.5"}
            )
    assert caught.value is faults.raised[0] and faults.requests == 1
    assert await _used(limiter) == 0


# --- writes ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_creates_are_not_retried_unless_asked(served: ServedEmulator) -> None:
    faults = Faults(("after", "ReadTimeout"))
    async with _client("httpx", _limiter(), flaky("httpx", faults), served.base_url) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1beta/cachedContents", json=CACHE)
        assert _caches(served) == 1  # it was created: a blind retry would have made a second
        faults.faults = [("before", "ConnectError"), ("status", 502)]
        with pytest.raises(httpx.ConnectError):
            await client.post("/v1beta/cachedContents", json=CACHE)
        r = await client.post("/v1beta/cachedContents", json=CACHE)
        assert r.status_code == 502 and faults.requests == 3
    assert _caches(served) == 1

    faults = Faults(("before", "ConnectError"), ("after", "ReadTimeout"), ("status", 502))
    inner = flaky("httpx", faults)
    async with _client("httpx", _limiter(), inner, served.base_url, retry_writes=True) as client:
        r = await client.post("/v1beta/cachedContents", json=CACHE)
    assert r.status_code == 200 and faults.requests == 4
    assert _caches(served) == 3  # what retry_writes risks: the lost answer's cache exists too


# --- the sync transports ---------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
def test_sync_transports_retry_and_count_alike(served: ServedEmulator, flavor: Flavor) -> None:
    limiter = _sync_limiter()
    cls = SyncQuotaTransport if flavor == "httpx" else SyncHttpx2QuotaTransport
    faults = Faults(("before", "ConnectError"), ("after", "ReadTimeout"), ("status", 408))
    transport = cls(limiter, sync_flaky(flavor, faults), backoff=0.01)
    with HTTP[flavor].Client(
        transport=transport, base_url=served.base_url, headers={"x-goog-api-key": KEY}
    ) as client:
        r = client.post(GEN, json=BODY)
        assert r.status_code == 200 and r.extensions["quotaflow"].attempts == 4
        assert limiter.status(FLASH)["rpd"].used == 3 and _received(served) == 2
        faults.faults = [("before", "PoolTimeout")] * 3 + [("after", "RemoteProtocolError")]
        with pytest.raises(HTTP[flavor].RemoteProtocolError) as caught:
            client.post(GEN, json=BODY)
        assert caught.value is faults.raised[-1]
    status = limiter.status(FLASH)
    assert status["rpd"].used == 4 and status["rpd"].in_flight == 0


# --- real sockets ----------------------------------------------------------------------------


class Proxy:
    """A TCP proxy on loopback in front of the emulator. It closes its first ``drop``
    connections once it has read the request whole, answering nothing; the rest are piped to
    ``target``."""

    def __init__(self, target: int, drop: int = 0, port: int = 0) -> None:
        self.target = target
        self.drop = drop
        self.dropped = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._open.append(conn)
            drop = self.dropped < self.drop
            self.dropped += drop
            target = self._hang_up if drop else self._pipe
            threading.Thread(target=target, args=(conn,), daemon=True).start()

    @staticmethod
    def _hang_up(conn: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
        conn.close()  # read whole, answered never: the client sees the server hang up

    def _pipe(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            conn.close()
            return
        self._open.append(up)
        back = threading.Thread(target=_pump, args=(up, conn), daemon=True)
        back.start()
        _pump(conn, up)
        back.join()
        up.close()
        conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def _proxy(target: int, drop: int = 0, port: int = 0) -> Iterator[Proxy]:
    proxy = Proxy(target, drop, port)
    try:
        yield proxy
    finally:
        proxy.close()


def _genai_client(
    limiter: Limiter, flavor: Flavor, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> genai.Client:
    from google.genai import _api_client

    if not inspect.signature(_api_client._get_http_client_backend).parameters:
        monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", flavor)  # google-genai 2.x
    options = genai_http_options(
        limiter, backend=flavor, base_url=base_url, api_version="v1beta", backoff=0.01
    )
    return genai.Client(api_key=KEY, http_options=options)  # its retry_options stay off


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_google_genai_survives_dropped_connections(
    served: ServedEmulator, flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = _limiter()
    with _proxy(served.port, drop=2) as proxy:
        client = _genai_client(limiter, flavor, proxy.url, monkeypatch)
        try:
            r = await client.aio.models.generate_content(model=FLASH, contents="hi " * 30)
        finally:
            await client.aio.aclose()
            client.close()
    assert r.text and proxy.dropped == 2
    # the hang-ups came after the request was read: it may have been counted, so it is kept
    assert await _used(limiter) == 3 and _received(served) == 1


@pytest.mark.parametrize("flavor", FLAVORS)
def test_google_genai_sync_survives_dropped_connections(
    served: ServedEmulator, flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = _limiter()
    sync = SyncLimiter.sharing(limiter)
    with _proxy(served.port, drop=1) as proxy:
        from google.genai import _api_client

        if not inspect.signature(_api_client._get_http_client_backend).parameters:
            monkeypatch.setenv("GOOGLE_GENAI_HTTP_CLIENT", flavor)
        options = genai_http_options(
            limiter,
            sync_limiter=sync,
            backend=flavor,
            base_url=proxy.url,
            api_version="v1beta",
            backoff=0.01,
        )
        with genai.Client(api_key=KEY, http_options=options) as client:
            r = client.models.generate_content(model=FLASH, contents="hi " * 30)
    assert r.text and proxy.dropped == 1
    assert sync.status(FLASH)["rpd"].used == 2 and _received(served) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_refused_connection_is_retried_and_costs_nothing(
    served: ServedEmulator, flavor: Flavor
) -> None:
    """Nobody listens on the port at first (a real ECONNREFUSED); the server comes up once the
    first attempt has failed."""
    http = HTTP[flavor]
    port = _free_port()
    opened: list[Proxy] = []
    refused: list[BaseException] = []

    class StartsTheServerWhenRefused(http.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.inner = http.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            try:
                return await self.inner.handle_async_request(request)
            except http.ConnectError as exc:
                refused.append(exc)
                if not opened:
                    opened.append(Proxy(served.port, port=port))
                raise

        async def aclose(self) -> None:
            await self.inner.aclose()

    limiter = _limiter()
    try:
        inner = StartsTheServerWhenRefused()
        async with _client(flavor, limiter, inner, f"http://127.0.0.1:{port}") as client:
            r = await client.post(GEN, json=BODY)
    finally:
        for p in opened:
            p.close()
    assert r.status_code == 200 and len(refused) == 1 and r.extensions["quotaflow"].attempts == 2
    assert await _used(limiter) == 1 and _received(served) == 1


# --- logs ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_retry_logs_say_what_happened_and_never_show_the_key(
    served: ServedEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    faults = Faults(("before", "ConnectError"), ("after", "ReadTimeout"), ("status", 502))
    async with _client("httpx", _limiter(), flaky("httpx", faults), served.base_url) as client:
        r = await client.post(f"{GEN}?key={KEY}", json=BODY)
    assert r.status_code == 200
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "quotaflow.transports"]
    assert len(lines) == 3
    assert "ConnectError" in lines[0] and "not sent" in lines[0] and "retry 1" in lines[0]
    assert "ReadTimeout" in lines[1] and "may have reached the server" in lines[1]
    assert "502 from the server; retry 3" in lines[2]
    assert "key=***" in lines[0]
    client_side = [r for r in caplog.records if not r.name.startswith("uvicorn")]  # not ours
    assert client_side and not [r for r in client_side if KEY in r.getMessage()]
