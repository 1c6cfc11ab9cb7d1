"""The fast lane of one scope: uncontended grants without the line, the same decisions.

When nobody waits, a request is granted iff every limit has room for it now. The lane answers
that question with a few integer steps instead of asking every bucket:

* When it opens (after any operation of the scope that leaves the line empty), it computes, per
  metric it serves (``requests``, ``input_tokens``), the smallest free room over the limits of that
  metric. Free room only grows with time (held amounts return, windows reset), so the figure,
  minus what the lane grants afterwards, is a lower bound of the real room for as long as the lane
  stays open. A request that fits the bound fits every bucket: the exact rule would grant it too.
  A request that does not fit is sent to the exact rule (``ScopeState.submit``), never refused by
  the lane.
* Grants are held in the lane (``pending``), settles are gathered per time slot (``anchored``);
  a grant is a lease number, spelled as a lease id (``prefix`` + number) only when asked;
  both go into the buckets when the lane closes, which every other operation of the scope does
  first. So the buckets are exact whenever anything else looks at them.
* The lane closes itself at the next calendar reset (a day quota) and stays closed while a limit
  is paused, while anyone waits, or when the scope has a limit kind it does not serve
  (concurrency, GCRA, rolling windows of different slot widths).

``tests/test_lane.py`` checks the lane against the exact rule decision by decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

__all__ = ["FastLane"]

_EPS: Final = 1e-9
_UNBOUNDED: Final = 1 << 62


class FastLane:
    """Lower bounds of free room per metric, and the grants and settles not yet in the buckets.

    Every method must be called with the backend's mutex held.
    """

    __slots__ = (
        "anchored_at",
        "anchored_requests",
        "anchored_slot",
        "anchored_tokens",
        "count",
        "leases",
        "limits_requests",
        "limits_tokens",
        "open",
        "pending_requests",
        "pending_tokens",
        "prefix",
        "room_requests",
        "room_tokens",
        "scope_limits",
        "until",
        "version",
        "width",
    )

    def __init__(self) -> None:
        self.open = False
        self.until = 0.0  # the lane closes itself at this time (a calendar reset)
        self.width = 0.0  # the rolling windows' common slot width (0: no rolling window)
        self.room_requests = 0
        self.room_tokens = 0
        self.pending_requests = 0  # granted by the lane, not settled: in flight
        self.pending_tokens = 0
        self.anchored_slot = -1  # settled in the lane, all in this slot of the rolling windows
        self.anchored_at = 0.0  # the latest anchor time gathered (for calendar limits)
        self.anchored_requests = 0
        self.anchored_tokens = 0
        self.leases: dict[int, int] = {}  # lease number -> input tokens
        self.count = 0  # the last lease number given
        self.prefix = f"lane-{id(self):x}-"  # lease ids: prefix + number (unique in the scope)
        self.limits_requests: tuple[str, ...] = ()  # the limits the lane charges, by metric
        self.limits_tokens: tuple[str, ...] = ()
        # every limit of the scope, and a count of changes to that set: a limiter whose own
        # limits are not exactly these (another limiter configured more) must not use the lane
        self.scope_limits: frozenset[str] = frozenset()
        self.version = 0

    def lease_id(self, lease: int) -> str:
        """The lease id of lease number ``lease``, as the backend's methods name it."""
        return self.prefix + str(lease)

    def lease_of(self, lease_id: str) -> int:
        """The number of a lease the lane holds, from its id; 0: not held here."""
        if not lease_id.startswith(self.prefix):
            return 0
        digits = lease_id[len(self.prefix) :]
        if not (digits.isascii() and digits.isdigit()) or digits[0] == "0":
            return 0  # not a number this lane spelled (its numbers start at 1)
        lease = int(digits)
        return lease if lease in self.leases else 0

    def take(self, tokens: int, now: float, version: int) -> int:
        """Grant one request of ``tokens`` input tokens if the lower bounds allow it and the
        scope's set of limits is still ``version``: its lease number, or 0 (not granted)."""
        if (
            self.open
            and version == self.version
            and now < self.until
            and self.room_requests >= 1
            and self.room_tokens >= tokens
        ):
            self.room_requests -= 1
            self.room_tokens -= tokens
            self.pending_requests += 1
            self.pending_tokens += tokens
            self.count += 1
            self.leases[self.count] = tokens
            return self.count
        return 0

    def settle(
        self,
        lease: int,
        real_requests: int | None,
        real_tokens: int | None,
        at: float,
        now: float,
    ) -> bool:
        """Settle a lane grant in the lane (``None``: as granted); ``False``: ask the scope."""
        tokens = self.leases.get(lease)
        if tokens is None or not self.open or now >= self.until or at > now:
            return False
        if self.width:
            slot = math.floor(at / self.width + _EPS)
            if slot != self.anchored_slot:
                if self.anchored_requests or self.anchored_tokens:
                    return False  # another slot: the scope writes this one out first
                self.anchored_slot = slot
                self.anchored_at = at  # the anchor time written out lies in this slot
        if real_requests is None:
            real_requests = 1
        if real_tokens is None:
            real_tokens = tokens
        del self.leases[lease]
        self.pending_requests -= 1
        self.pending_tokens -= tokens
        self.anchored_requests += real_requests
        self.anchored_tokens += real_tokens
        self.room_requests += 1 - real_requests
        self.room_tokens += tokens - real_tokens
        if at > self.anchored_at:
            self.anchored_at = at
        return True

    def by_metric(self, actual: Mapping[str, int] | None) -> tuple[int | None, int | None] | None:
        """Real amounts by limit name as ``(requests, input tokens)`` (``None``: as granted);
        ``None`` unless ``actual`` gives every limit of a metric it names the same amount and
        names no limit the lane does not charge (then ask the scope)."""
        if actual is None:
            return None, None
        out: list[int | None] = []
        for names in (self.limits_requests, self.limits_tokens):
            given = {actual[n] for n in names if n in actual}
            if not given:
                out.append(None)
            elif len(given) == 1 and all(n in actual for n in names):
                out.append(given.pop())
            else:
                return None
        if len(actual) != sum(
            n in actual for names in (self.limits_requests, self.limits_tokens) for n in names
        ):
            return None  # a limit the lane does not charge
        return out[0], out[1]

    def release(self, lease: int) -> bool:
        """Return a lane grant that never reached the server; ``False``: not here."""
        if not self.open:
            return False
        tokens = self.leases.pop(lease, None)
        if tokens is None:
            return False
        self.pending_requests -= 1
        self.pending_tokens -= tokens
        self.room_requests += 1
        self.room_tokens += tokens
        return True

    def reset_room(self, room_requests: int | None, room_tokens: int | None) -> None:
        """Open with these lower bounds (``None``: the metric has no limit)."""
        self.room_requests = _UNBOUNDED if room_requests is None else room_requests
        self.room_tokens = _UNBOUNDED if room_tokens is None else room_tokens
        self.open = True
