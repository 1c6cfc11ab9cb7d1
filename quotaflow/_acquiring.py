"""What ``acquire`` returns, for both limiters: :class:`Acquiring` (``async with`` or
``await``, for :class:`~quotaflow.Limiter`) and :class:`SyncAcquire` (``with``, for
:class:`~quotaflow.SyncLimiter`).

Entering the block takes the permit; leaving it settles the permit with its estimate, or
releases it if the block failed before the call was sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from quotaflow._limiter_common import REENTERED

__all__ = ["Acquiring", "SyncAcquire"]


class _AsyncExits(Protocol):
    async def _exit(self, failed: bool) -> None: ...


class _SyncExits(Protocol):
    def _exit(self, failed: bool) -> None: ...


_P = TypeVar("_P", bound=_AsyncExits)
_S = TypeVar("_S", bound=_SyncExits)


class Acquiring(Generic[_P]):
    """What ``acquire`` returns: ``async with limiter.acquire(...) as permit:``, whose exit
    settles the permit with its estimate (or releases it if the block failed before the call
    was sent).

    Entering the block calls ``fn(*args)``, which returns the permit; the block keeps it for
    its exit.
    """

    __slots__ = ("_args", "_fn", "_permit")

    def __init__(self, fn: Callable[..., Awaitable[_P]], args: tuple[Any, ...]) -> None:
        self._fn = fn
        self._args = args
        self._permit: _P | None = None

    def __await__(self) -> Generator[Any, None, _P]:
        """``permit = await limiter.acquire(...)``: the permit, without a block (settle or
        release it yourself)."""
        return self._fn(*self._args).__await__()

    async def __aenter__(self) -> _P:
        if self._permit is not None:
            raise RuntimeError(REENTERED)
        self._permit = permit = await self._fn(*self._args)
        return permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            await permit._exit(exc_type is not None)


class SyncAcquire(Generic[_S]):
    """What ``acquire`` returns: ``with limiter.acquire(...) as permit:``, whose exit
    settles the permit with its estimate (or releases it if the block failed before the call
    was sent).

    Entering the block calls ``fn(*args)``, which returns the permit; the block keeps it for
    its exit.
    """

    __slots__ = ("_args", "_fn", "_permit")

    def __init__(self, fn: Callable[..., _S], args: tuple[Any, ...]) -> None:
        self._fn = fn
        self._args = args
        self._permit: _S | None = None

    def __enter__(self) -> _S:
        if self._permit is not None:
            raise RuntimeError(REENTERED)
        self._permit = permit = self._fn(*self._args)
        return permit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, self._permit = self._permit, None
        if permit is not None:
            permit._exit(exc_type is not None)
