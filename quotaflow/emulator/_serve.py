"""Serve an :class:`Emulator` over real HTTP on loopback, from a background thread."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import anyio.to_thread
import uvicorn

from ._app import Emulator
from ._config import EmulatorConfig
from ._engine import ClockLike

__all__ = ["ServedEmulator", "serve"]


# Seconds an idle connection stays open. Longer than clients keep idle connections (httpx: 5 s),
# so the client always closes first: with uvicorn's default (5 s, the same as httpx) the server
# can close a connection just as a client reuses it, and that request fails with a ReadError.
KEEP_ALIVE = 75


class ServedEmulator:
    """An emulator served by uvicorn in a daemon thread.

    Use it as a context manager (``with`` or ``async with``), or call :meth:`start` and
    :meth:`stop`. The socket is bound at construction, so :attr:`base_url` is known at once.

    Attributes:
        emulator: The served app (stats, reset, inject).
        host: Bound address.
        port: Bound port.
    """

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it, delayed ACKs add ~40 ms per response.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            emulator,
            log_config=None,
            access_log=False,  # the access log would print ?key=
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=KEEP_ALIVE,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no trailing slash, no version)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServedEmulator:
        """Start serving; returns once the server accepts connections.

        Raises:
            RuntimeError: if the server did not start within ``timeout`` seconds.
        """
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"quotaflow-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator server did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> ServedEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> ServedEmulator:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)

    def __repr__(self) -> str:
        running = self._thread is not None
        return f"ServedEmulator(base_url={self.base_url!r}, running={running})"


def serve(
    config: EmulatorConfig | Emulator | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: ClockLike | None = None,
) -> ServedEmulator:
    """Serve an emulator on loopback (port 0: a free port).

    Args:
        config: A config, a ready :class:`Emulator`, or None for the defaults.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        clock: Clock for a new emulator (ignored if ``config`` is an Emulator).

    Returns:
        A :class:`ServedEmulator`; enter it (``with``/``async with``) to start serving.

    Example:
        >>> with serve(EmulatorConfig()) as served:  # doctest: +SKIP
        ...     client = genai.Client(api_key="test-key", http_options=types.HttpOptions(
        ...         base_url=served.base_url, api_version="v1beta"))
    """
    if isinstance(config, Emulator):
        emulator = config
    elif clock is None:
        emulator = Emulator(config)
    else:
        emulator = Emulator(config, clock=clock)
    return ServedEmulator(emulator, host, port)
