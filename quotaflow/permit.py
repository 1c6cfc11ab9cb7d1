"""Permits: what ``acquire`` returns. Granted -> sent -> settled, or granted -> released.

The async :class:`Permit` and the sync :class:`SyncPermit` (generated from this module by
``scripts/unasync.py`` into ``quotaflow/_sync_permit.py``) are subclasses of one
:class:`~quotaflow.scheduler.permit_state.PermitState` (the pure life cycle); they add the backend
I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quotaflow.scheduler.permit_state import _PermitBase as _PermitBase  # the base, for _gate.py
from quotaflow.scheduler.permit_state import bad_tokens
from quotaflow.scheduler.synchronization import async_complete

__all__ = [
    "Permit",
    # unasync: async-only
    "SyncPermit",
    # unasync: end
]


class Permit(_PermitBase):
    """A grant of capacity for one call.

    Use it as ``async with limiter.acquire(...) as permit:``. Mark the call as sent just before
    it leaves (:meth:`mark_sent`), then :meth:`settle` with the real usage. Leaving the block
    settles with the estimate if the call was sent (or the block ended normally), and releases
    everything if the block failed before sending.
    """

    __slots__ = ()

    async def settle(self, input_tokens: int | None = None, **metrics: int) -> None:
        """Replace the estimate with the real usage: less refunds, more charges. Once only.

        ``await permit.settle(...)``. A backend across a network (Redis) writes the settle where
        no cancellation of the caller reaches it: what the server counted is written down.

        Args:
            input_tokens: the real input tokens (``usageMetadata.promptTokenCount``).
            **metrics: real amounts of other metrics (e.g. ``images=2``).
        """
        left = self._settle_now(input_tokens, metrics)
        if left is not None:
            await async_complete(left)

    async def release(self) -> None:
        """Return everything: the call never reached the server. No-op once settled.

        ``await permit.release()``; as :meth:`settle`, a backend's write is shielded from the
        caller's cancellation."""
        left = self._release_now()
        if left is not None:
            await async_complete(left)

    def _settle_now(self, input_tokens: int | None, metrics: Mapping[str, int]) -> Any:
        """What :meth:`settle` does at once (checks, plans, the lane or the backend's call);
        returns the backend's write left to await, or ``None``."""
        if input_tokens is not None and (type(input_tokens) is not int or input_tokens < 0):
            raise bad_tokens(input_tokens)
        gate = self._quick
        if gate is not None:
            if not metrics:
                if gate.settle(self, input_tokens):
                    return None
            elif self._settled_in_lane(input_tokens, metrics):
                return None
        args = self._settle_args(input_tokens, metrics)
        if self._settle_nowait is not None and self._settle_nowait(*args):
            return None
        return self._settle_fn(*args)

    def _release_now(self) -> Any:
        """What :meth:`release` does at once; returns the backend's write left, or ``None``."""
        if self._plan_release():
            return self._release_fn(self._scope, self._lease_id(), self._clock.now())
        return None

    async def _exit(self, failed: bool) -> None:
        if self._phase == "settled" or self._phase == "released":
            return
        if failed and self._phase == "granted":
            await self.release()
        else:
            await self.settle()


# unasync: async-only
from quotaflow._sync_permit import SyncPermit  # noqa: E402 - generated from the class above

# unasync: end
