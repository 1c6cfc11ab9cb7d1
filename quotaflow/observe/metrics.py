"""OpenTelemetry metrics (and optional spans) of quotaflow's transports.

With the ``otel`` extra (``pip install 'quotaflow[otel]'``) quotaflow records through the
global ``MeterProvider``, as OpenTelemetry instrumentation libraries do: install an SDK
``MeterProvider`` with the readers and exporters you want and the instruments below appear.
Without the extra every hook is a check of one module flag.

Instruments (meter ``quotaflow``):

==================================  ===========  =============================================
name                                kind         attributes
==================================  ===========  =============================================
``quotaflow.wait.duration``         histogram s  model, dimension (that made it wait),
                                                 priority, agent, quotaflow.mode
``quotaflow.grants``                counter      model, priority, agent, quotaflow.mode
``quotaflow.refusals``              counter      model, reason (timeout, cannot_fit,
                                                 exhausted, would_block, ...), agent, mode
``quotaflow.denials``               counter      model, reason (policy, budget), agent
``quotaflow.server.rate_limited``   counter      model, quota_id (the 429's ``quotaId``)
``quotaflow.retries``               counter      model, reason (429, 5xx, connection)
``quotaflow.estimate.error``        histogram    model (reserved minus settled input tokens)
``quotaflow.pauses``                counter      model, dimension
``quotaflow.usage``                 gauge        model, dimension (amount used in its window;
                                                 a Redis fleet's, read from Redis)
``quotaflow.in_flight``             gauge        model, dimension (amount granted, unanswered)
==================================  ===========  =============================================

Spans (``quotaflow.call`` around each call through a transport) are off by default:
``quotaflow.observe.metrics.configure(spans=True)`` turns them on (through the global
``TracerProvider``). No attribute holds a key, a token or a prompt.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from quotaflow.context import PRIORITIES

__all__ = ["configure", "enabled", "reset"]

try:  # the extra: the API only (an SDK is the application's choice)
    from opentelemetry import metrics as _otel_metrics
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - depends on the installed extras
    _otel_metrics = None  # type: ignore[assignment]
    _otel_trace = None  # type: ignore[assignment]

ON: bool = _otel_metrics is not None
"""Whether metrics are recorded (the ``otel`` extra is installed and not turned off)."""

try:  # where the API keeps the global provider: None until an application sets one
    from opentelemetry.metrics import _internal as _otel_global
except ImportError:  # pragma: no cover - depends on the installed extras
    _otel_global = None  # type: ignore[assignment]
if not hasattr(_otel_global, "_METER_PROVIDER"):  # pragma: no cover - another API version
    _otel_global = None  # type: ignore[assignment]
_OWN_PROVIDER = False  # configure(meter_provider=...) was given one
# a provider the API loads on first use (read once: os.environ is slow on a hot path)
_ENV_PROVIDER = "OTEL_PYTHON_METER_PROVIDER" in os.environ

SPANS = False
_tracer_provider: Any = None
_LOCK = threading.Lock()
_NAMES = {v: k for k, v in PRIORITIES.items()}
_watched: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def enabled() -> bool:
    """Whether quotaflow records metrics."""
    return ON


class _Instruments:
    def __init__(self, provider: Any) -> None:
        from quotaflow import __version__

        meter = (
            provider.get_meter("quotaflow", __version__)
            if provider is not None
            else _otel_metrics.get_meter("quotaflow", __version__)
        )
        self.wait = meter.create_histogram(
            "quotaflow.wait.duration", unit="s", description="time a call waited for quota"
        )
        self.grants = meter.create_counter(
            "quotaflow.grants", unit="{call}", description="calls admitted"
        )
        self.refusals = meter.create_counter(
            "quotaflow.refusals", unit="{call}", description="calls the limiter refused locally"
        )
        self.denials = meter.create_counter(
            "quotaflow.denials", unit="{call}", description="calls an agent policy denied"
        )
        self.rate_limited = meter.create_counter(
            "quotaflow.server.rate_limited", unit="{response}", description="429s from the server"
        )
        self.retries = meter.create_counter(
            "quotaflow.retries", unit="{request}", description="requests sent again"
        )
        self.estimate_error = meter.create_histogram(
            "quotaflow.estimate.error",
            unit="{token}",
            description="input tokens reserved minus input tokens the response reported",
        )
        self.pauses = meter.create_counter(
            "quotaflow.pauses", unit="{pause}", description="dimensions paused after a 429"
        )
        meter.create_observable_gauge(
            "quotaflow.usage",
            callbacks=[lambda _opts: list(_observe("used"))],
            description="amount used in the window, per model and dimension",
        )
        meter.create_observable_gauge(
            "quotaflow.in_flight",
            callbacks=[lambda _opts: list(_observe("in_flight"))],
            description="amount granted to calls the server has not answered yet",
        )


_inst: _Instruments | None = None


def _get() -> _Instruments:
    global _inst
    inst = _inst
    if inst is None:
        with _LOCK:
            if _inst is None:
                _inst = _Instruments(None)
            inst = _inst
    return inst


def configure(
    *,
    meter_provider: Any = None,
    spans: bool | None = None,
    tracer_provider: Any = None,
    enabled: bool | None = None,
) -> None:
    """Change how quotaflow records (all optional).

    Args:
        meter_provider: record through this provider instead of the global one (tests,
            applications with several providers).
        spans: ``True`` to wrap each call through a transport in a ``quotaflow.call`` span.
        tracer_provider: make the spans with this provider instead of the global one.
        enabled: ``False`` to record nothing (``True``: record again, if the extra is there).
    """
    global _inst, SPANS, ON, _tracer_provider, _OWN_PROVIDER
    if tracer_provider is not None:
        _tracer_provider = tracer_provider
    if enabled is not None:
        ON = bool(enabled) and _otel_metrics is not None
    if spans is not None:
        SPANS = bool(spans) and _otel_trace is not None
    if meter_provider is not None and _otel_metrics is not None:
        with _LOCK:
            _inst = _Instruments(meter_provider)
            _OWN_PROVIDER = True


_WAITED_ON: dict[str, str] = {}  # request id -> the dimension that made it wait


def reaching() -> bool:
    """Whether a record reaches a provider: one given to :func:`configure`, the global one an
    application set, or one ``OTEL_PYTHON_METER_PROVIDER`` names. Before any, the API's proxy
    instruments drop every record: the limiter's hot path skips building them."""
    if _OWN_PROVIDER or _otel_global is None or _otel_global._METER_PROVIDER is not None:
        return True
    return _ENV_PROVIDER


def waiting_on(request_id: str, dimension: str) -> None:
    """A request waits for ``dimension`` (the limiters call this; popped at the grant)."""
    if len(_WAITED_ON) < 100_000:  # bounded: requests that never end are forgotten
        _WAITED_ON[request_id] = dimension


def reset() -> None:
    """Record through the global ``MeterProvider`` again (after
    ``configure(meter_provider=...)``), with spans off."""
    global _inst, SPANS, _tracer_provider, _OWN_PROVIDER
    with _LOCK:
        _inst = None
        _OWN_PROVIDER = False
    SPANS = False
    _tracer_provider = None


def _prio(p: int | None) -> str:
    return "" if p is None else _NAMES.get(p, str(p))


def _attrs(model: str, agent: str | None, mode: str, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "agent": agent or "", "quotaflow.mode": mode}
    out.update(more)
    return out


# the attributes of a kind of grant (model, agent, mode, priority, dimension), never changed
# once built
_GRANT_ATTRS: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = {}


# --- hooks the transports call (each a no-op when ON is false) -------------------------------
def granted(
    model: str, permit: Any, agent: str | None, mode: str = "enforce", limiter: Any = None
) -> None:
    """A call was admitted after ``permit.waited`` seconds."""
    inst = _inst or _get()
    p = getattr(permit, "priority", None)
    waited = float(getattr(permit, "waited", 0.0) or 0.0)
    dim = _WAITED_ON.pop(str(getattr(permit, "id", "")), "") if waited > 0 else ""
    if limiter is not None:
        seen(limiter, model)
    key = (model, agent, mode, p, dim)
    attrs = _GRANT_ATTRS.get(key)
    if attrs is None:  # built once per kind of grant: a grant on the hot path only looks up
        if len(_GRANT_ATTRS) >= 4096:
            _GRANT_ATTRS.clear()
        prio = _prio(p)
        attrs = _GRANT_ATTRS[key] = (
            _attrs(model, agent, mode, priority=prio),
            _attrs(model, agent, mode, priority=prio, dimension=dim),
        )
    inst.grants.add(1, attrs[0])
    inst.wait.record(waited, attrs[1])


def would_wait(
    model: str, seconds: float, dimension: str, priority: int | None, agent: str | None
) -> None:
    """Shadow mode: the wait the limiter would have imposed."""
    _get().wait.record(
        seconds,
        _attrs(model, agent, "shadow", priority=_prio(priority), dimension=dimension),
    )


def refused(model: str, reason: str, agent: str | None, mode: str = "enforce") -> None:
    """The limiter refused a call locally (a timeout, a request larger than a limit, ...)."""
    _get().refusals.add(1, _attrs(model, agent, mode, reason=reason))


def denied(model: str, reason: str, agent: str | None) -> None:
    """An agent policy or budget denied a call."""
    _get().denials.add(1, {"model": model, "reason": reason, "agent": agent or ""})


def rate_limited(model: str, quota_ids: list[str]) -> None:
    """The server answered 429 (one count per violated ``quotaId``, or one unnamed)."""
    inst = _get()
    for qid in quota_ids or [""]:
        inst.rate_limited.add(1, {"model": model, "quota_id": qid})


def call_done(model: str, statuses: list[int], attempts: int) -> None:
    """A call ended after ``attempts`` sends with ``statuses``: its retries by reason."""
    if attempts <= 1:
        return
    inst = _get()
    sent = statuses[:-1] if len(statuses) >= attempts else statuses
    reasons = [("429" if s == 429 else "5xx" if s >= 500 else str(s)) for s in sent]
    reasons += ["connection"] * max(0, attempts - 1 - len(reasons))
    for r in reasons[: attempts - 1]:
        inst.retries.add(1, {"model": model, "reason": r})


def settled(model: str, reserved: int, actual: int | None) -> None:
    """A call's usage is known: how far off the reservation was."""
    if actual is None:
        return
    _get().estimate_error.record(int(reserved) - int(actual), {"model": model})


def paused(model: str, dimension: str) -> None:
    """A dimension was paused after a 429."""
    _get().pauses.add(1, {"model": model, "dimension": dimension})


def seen(limiter: Any, model: str) -> None:
    """Report ``limiter``'s use and in-flight amounts of ``model`` in the observable gauges."""
    models = _watched.get(limiter)
    if models is None:
        with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced
            _watched[limiter] = models = set()
    if models is not None:
        models.add(model)


_READ_EVERY = 0.5  # seconds: the two gauges of one collection share one read of Redis
_reads: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, Mapping[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)
_readers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _redis_levels(limiter: Any, backend: Any, model: str) -> Mapping[str, Any] | None:
    """The fleet's levels of ``model`` from Redis, read as ``quotaflow status`` reads them
    (:func:`quotaflow.observe.status.read_levels`: the scope script's ``status`` op with its writes
    off). ``None`` when the backend is down or no process configured the scope. One read per
    model serves both gauges of a collection."""
    import time

    from quotaflow.backends.redis import script as rs
    from quotaflow.observe.status import read_levels

    engine = backend._engine
    if not engine.up:  # the backend knows Redis is away: no stalled collection
        return None
    now = time.monotonic()
    cache = _reads.get(limiter)
    if cache is None:
        cache = _reads[limiter] = {}
    hit = cache.get(model)
    if hit is not None and now - hit[0] < _READ_EVERY:
        return hit[1]
    codec = _readers.get(backend)
    if codec is None:
        import uuid

        owner = f"metrics-{uuid.uuid4().hex[:8]}"
        codec = _readers[backend] = rs.Codec(engine.codec.namespace, owner, engine.codec.ttl)
    key, _canonical, limits, _ = limiter._core.scope(model)
    got = read_levels(backend._client, codec, key, limits)
    levels: Mapping[str, Any] | None = None if got is None else got[0]
    cache[model] = (now, levels or {})
    return levels


def _observe(field: str) -> Iterator[Any]:
    """Observations of the gauges: every watched limiter's models, on a memory backend from
    the process, on Redis from the fleet's shared state (one read per model a collection)."""
    from opentelemetry.metrics import Observation

    for limiter, models in list(_watched.items()):
        backend = limiter.backend
        backend = getattr(backend, "_owner", backend)  # a SyncLimiter's Redis: its async twin
        local = getattr(backend, "nonblocking", False) and callable(
            getattr(backend, "status", None)
        )
        remote = not local and hasattr(backend, "_engine") and hasattr(backend, "_client")
        if not (local or remote):
            continue
        core = limiter._core
        for model in list(models):
            try:
                if local:
                    key, _canonical, _limits, _ = core.scope(model)
                    levels: Mapping[str, Any] | None = backend.status(key, core.clock.now())
                else:
                    levels = _redis_levels(limiter, backend, model)
            except Exception:  # a model gone from the book, Redis unreachable: nothing now
                continue
            for dim, level in (levels or {}).items():
                yield Observation(getattr(level, field), {"model": model, "dimension": dim})


@contextlib.contextmanager
def span(method: str, url: Any) -> Iterator[None]:
    """A ``quotaflow.call`` span around one call, when spans are on."""
    if not SPANS or _otel_trace is None:
        yield
        return
    tracer = (
        _tracer_provider.get_tracer("quotaflow")
        if _tracer_provider is not None
        else _otel_trace.get_tracer("quotaflow")
    )
    path = getattr(url, "path", "")
    with tracer.start_as_current_span(
        "quotaflow.call", attributes={"http.request.method": method, "url.path": str(path)}
    ):
        yield
