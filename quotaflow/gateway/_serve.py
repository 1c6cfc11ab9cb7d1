"""Serve the gateway with uvicorn: in the foreground (the CLI) or from a thread (tests,
benchmarks)."""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from quotaflow.gateway._app import Gateway

__all__ = ["ServedGateway", "run", "uvicorn_config"]

# longer than clients keep idle connections (httpx: 5 s), so the client closes first
KEEP_ALIVE = 75


class _NoWireTrace(logging.Filter):
    """Drops the websockets package's protocol trace (``< GET ...``, ``> TEXT ...``), which
    uvicorn's WebSocket server logs at DEBUG on ``uvicorn.error``: it holds the handshake's
    headers (an agent's token) and the frames' content."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (
            record.levelno <= logging.DEBUG
            and isinstance(msg, str)
            and msg[:2] in ("< ", "> ", "= ", "% ", "! ", "x ", "- ", "+ ", "? ")
        )


_FILTER = _NoWireTrace()

# the server's settings apart from where it listens and how long it drains (uvicorn picks
# uvloop and httptools, both dependencies of the gateway, for "auto")
_SERVER_OPTIONS: dict[str, Any] = {
    "loop": "auto",
    "http": "auto",
    "log_config": None,
    "access_log": False,
    "lifespan": "on",
    "timeout_keep_alive": KEEP_ALIVE,
    "server_header": False,
    "date_header": False,
}


def uvicorn_config(gateway: Gateway, **overrides: Any) -> uvicorn.Config:
    """uvicorn's settings for ``gateway``: its own access log (uvicorn's would print
    ``?key=``), graceful shutdown within ``shutdown_timeout``, lifespan on (it closes the
    transports, the audit log and the backend)."""
    cfg = gateway.config
    for name in ("uvicorn.error", "websockets.server", "websockets.protocol"):
        target = logging.getLogger(name)
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
    kw: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "timeout_graceful_shutdown": cfg.shutdown_timeout,
        **_SERVER_OPTIONS,
        **overrides,
    }
    return uvicorn.Config(gateway, **kw)


class _Drained(Exception):
    """A SIGINT or SIGTERM the server has drained for (see :func:`run`)."""


def _drained(signum: int, frame: object) -> None:
    raise _Drained(signum)


def run(gateway: Gateway) -> None:
    """Serve until SIGINT/SIGTERM; in-flight calls finish (within ``shutdown_timeout``), the
    gateway closes (settles, audit log, backend), then this returns.

    uvicorn hands a signal it has drained for to the handler it found in place, to end the
    process as that signal would; the one in place here ends only the serving, so what the
    caller does next (flushing its log) still runs and the process exits with status 0. The
    objects alive at the start are frozen (:func:`gc.freeze`): the process is the gateway's."""
    main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if main else ()
    # what the process holds from its start (modules, tables, config) is never garbage: kept out
    # of the collector's full passes, each of which would otherwise walk it (tens of ms, with
    # every call in flight waiting)
    gc.collect()
    gc.freeze()
    previous = {sig: signal.signal(sig, _drained) for sig in signals}
    try:
        uvicorn.Server(uvicorn_config(gateway)).run()
    except _Drained:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ServedGateway:
    """A gateway served by uvicorn in a daemon thread on a loopback port (bound at
    construction, so :attr:`base_url` is known at once). Use it as a context manager.
    ``uvicorn_options`` go to ``uvicorn.Config`` (``ssl_certfile=``, ``ssl_keyfile=``)."""

    def __init__(
        self, gateway: Gateway, host: str = "127.0.0.1", port: int = 0, **uvicorn_options: Any
    ) -> None:
        self.gateway = gateway
        self._socket = socket.socket(socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self._tls = "ssl_certfile" in uvicorn_options
        self._server = uvicorn.Server(
            uvicorn_config(gateway, host=host, port=self.port, **uvicorn_options)
        )
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` (``https://`` when served with ``ssl_certfile``)."""
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServedGateway:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"quotaflow-gateway-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on {self.base_url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop as on SIGTERM: refuse new connections, finish in-flight calls, close."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None
        self._socket.close()

    def __enter__(self) -> ServedGateway:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
