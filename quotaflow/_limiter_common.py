"""What the async :class:`~quotaflow.Limiter` and its generated sync twin
(:class:`~quotaflow.SyncLimiter`) share that needs no I/O: opening a backend, the errors they
raise alike, and their grant and refusal metrics."""

from __future__ import annotations

from typing import Any, Protocol

from quotaflow import context
from quotaflow.backends.base import AsyncBackend, Backend
from quotaflow.backends.memory import MemoryBackend
from quotaflow.errors import ConfigError
from quotaflow.limits import Limit
from quotaflow.observe import metrics as _metrics
from quotaflow.observe.shadow import refusal_reason
from quotaflow.scheduler.core import LimiterCore

__all__ = [
    "REENTERED",
    "SharesCore",
    "check_dimension",
    "measure_grant",
    "measure_refusal",
    "not_copyable",
    "open_backend",
]


def open_backend(backend: Backend | AsyncBackend | str | None) -> Backend | AsyncBackend:
    """A backend object from an object, ``None`` (memory) or a URL."""
    if backend is None:
        return MemoryBackend()
    if isinstance(backend, str):
        if backend in ("memory", "memory://"):
            return MemoryBackend()
        if backend.split("://", 1)[0] in (
            "redis",
            "rediss",
            "unix",
            "redis+sentinel",
            "redis+cluster",
        ):
            # without the extra, its ImportError says so and names the missing module
            from quotaflow.backends.redis import RedisBackend

            return RedisBackend.from_url(backend)
        raise ConfigError(
            f"backend={backend!r}: use 'memory://', a redis:// URL, or a backend object"
        )
    if not all(callable(getattr(backend, n, None)) for n in ("configure", "submit", "cancel")):
        raise ConfigError(
            f"backend={backend!r}: use 'memory://', a redis:// URL, or a backend object "
            "(quotaflow.backends.MemoryBackend, RedisBackend)"
        )
    return backend


REENTERED = (
    "this acquire(...) is already in use by a with block: call limiter.acquire(...) again for "
    "another permit"
)


def not_copyable(obj: object) -> TypeError:
    """The error of a limiter asked to be copied or pickled."""
    return TypeError(
        f"a {type(obj).__name__} cannot be copied or pickled: share the object (it is "
        "safe across tasks and threads), or build another with the same arguments "
        "(backend= shares the quota state)"
    )


def check_dimension(model: str, dimension: str, limits: tuple[Limit, ...]) -> None:
    """A :class:`ConfigError` unless ``dimension`` is one of ``limits``."""
    names = [lim.name for lim in limits]
    if dimension not in names:
        raise ConfigError(f"{model} has no dimension {dimension!r}; it has {', '.join(names)}")


class SharesCore(Protocol):
    """A limiter another can share tables, clock and backend with (``.sharing(limiter)``)."""

    @property
    def _core(self) -> LimiterCore: ...

    @property
    def backend(self) -> Any: ...


def measure_grant(limiter: Any, model: str, permit: Any, agent: str | None) -> None:
    """Record a grant (``quotaflow.grants``, ``quotaflow.wait.duration``); call only when
    ``metrics.ON``. In shadow mode the transports record what they decided instead."""
    if not _metrics.reaching():
        if permit._waited > 0:  # what made it wait is recorded for nobody
            _metrics._WAITED_ON.pop(permit.id, None)
    elif limiter._core.mode == "enforce":
        if agent is None:
            agent = context._agent.get()
        _metrics.granted(model, permit, agent)


def measure_refusal(limiter: Any, model: str, exc: BaseException, agent: str | None) -> None:
    """Record a local refusal (``quotaflow.refusals``); call only when ``metrics.ON``."""
    if limiter._core.mode == "enforce":
        if agent is None:
            agent = context._agent.get()
        _metrics.refused(model, refusal_reason(exc), agent)
