"""The awaiting that the compiled hot path hands back: interpreted on purpose.

The modules mypyc compiles (:mod:`quotaflow._front`, :mod:`quotaflow._gate`,
:mod:`quotaflow._lane`, :mod:`quotaflow._permit_state`, :mod:`quotaflow.permit`) never await.
They return awaitables, and whatever can suspend runs in the coroutines here, which stay plain
Python. The reason: mypyc's ``await`` (its ``yield from``) passes an exception thrown into a
suspended coroutine on with the three-argument ``throw(type, value, traceback)``, taken from
the exception being handled. Python 3.12 deprecates that form (a ``DeprecationWarning`` on
every cancellation), and with ``limiter.py`` compiled an anyio cancellation that the waiter's
own scope had caught was raised again. With no compiled frame in a chain that can be
suspended, every cancellation goes from the event loop to interpreted coroutines only.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

if TYPE_CHECKING:
    from quotaflow._front import Acquire

__all__ = ["acquired", "shielded"]

_T = TypeVar("_T")


async def acquired(holder: Acquire[Any], awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` (a limiter's full acquire) and keep its permit in ``holder`` for the
    ``async with`` block's exit."""
    permit = await awaitable
    holder._permit = permit
    return permit


async def shielded(awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` (a backend's settle or release) where no cancellation reaches it:
    what the server counted must be written down even if the caller is being cancelled."""
    with anyio.CancelScope(shield=True):
        result = await awaitable
    return result
