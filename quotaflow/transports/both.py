"""A call's two permits (its model's and its project's spend), both or neither: the drivers'
:class:`~quotaflow.flow.AcquireBoth`, by face (``acquire_both_async``/``acquire_both_sync``).

On a backend across a network (Redis) the async face asks both at once on asyncio: the call
waits for one round trip instead of two. Elsewhere (the memory backend, which answers without
a round trip; trio; the sync face) it asks one after the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from quotaflow.transports.base import release_async, release_sync

__all__ = ["acquire_both_async", "acquire_both_sync"]


async def acquire_both_async(
    take: Callable[[Any], Coroutine[Any, Any, Any]], first: Any, second: Any, at_once: bool
) -> tuple[Any, Any, float]:
    """``(take(first), take(second), waited)``; a refusal (the first's when both are refused),
    a failure or a cancellation is raised with neither permit kept. ``at_once``: ask the
    second in a task of its own while the first is asked (on asyncio)."""
    loop = None
    if at_once:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio: one after the other
            loop = None
    if loop is None:
        a = await take(first)
        try:
            b = await take(second)
        except BaseException:
            await _release_all(None, a)
            raise
        return a, b, float(a.waited) + float(b.waited)
    task: asyncio.Task[Any] = loop.create_task(take(second))
    try:
        a = await take(first)
    except BaseException:
        task.cancel()
        await _release_all(task)
        raise
    try:
        b = await task
    except BaseException:  # refused, failed, or this call cancelled while it waited
        task.cancel()
        await _release_all(task, a)
        raise
    return a, b, max(float(a.waited), float(b.waited))


async def _release_all(task: asyncio.Task[Any] | None, *permits: Any) -> None:
    """Give back ``permits`` and what ``task`` (an acquire, perhaps cancelled) granted, where
    no cancellation of the caller reaches."""
    with anyio.CancelScope(shield=True):
        if task is not None:
            if not task.done():
                await asyncio.wait((task,))
            if not task.cancelled() and task.exception() is None:
                permits = (*permits, task.result())
        for permit in permits:
            await release_async(permit)


def acquire_both_sync(
    take: Callable[[Any], Any], first: Any, second: Any, at_once: bool
) -> tuple[Any, Any, float]:
    """``(take(first), take(second), waited)``, one after the other; a refusal of the second
    gives the first back."""
    a = take(first)
    try:
        b = take(second)
    except BaseException:
        release_sync(a)
        raise
    return a, b, float(a.waited) + float(b.waited)
