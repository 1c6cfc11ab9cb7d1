"""Emulator state and the decisions every route shares: auth, model lookup, admission.

All state sits behind one ``threading.Lock`` so a test thread may read stats or inject faults
while a served emulator handles requests in its own thread. Nothing here awaits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from ._config import EmulatorConfig, ModelConfig
from ._errors import (
    ErrorReply,
    api_key_invalid,
    not_found,
    permission_denied,
    resource_exhausted,
    server_error,
    unauthenticated,
)
from ._faults import FaultInjector, Injection
from ._oauth import TokenIssuer
from ._quota import QuotaLedger, Violation, quota_names
from ._spend import SPEND_QUOTA_ID, SPEND_QUOTA_METRIC, SpendLedger
from ._stats import Admission, StatsRecorder
from ._store import Store
from ._webhooks import WebhookSender

__all__ = ["Clock", "ClockLike", "EmulatorState", "Ticket", "as_clock", "methods_of"]

Clock = Callable[[], float]


class _HasNow(Protocol):
    def now(self) -> float: ...


ClockLike = Clock | _HasNow


def as_clock(clock: ClockLike) -> Clock:
    """A plain callable from a callable or an object with ``now()`` (e.g. a ManualClock)."""
    now = getattr(clock, "now", None)
    if callable(now):
        return cast(Clock, now)
    return cast(Clock, clock)


_GENERATE_METHODS = (
    "generateContent",
    "countTokens",
    "createCachedContent",
    "batchGenerateContent",
)
_EMBED_METHODS = ("embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent")
_ALIASES = {"streamGenerateContent": "generateContent", "batchEmbedContents": "embedContent"}


def methods_of(model: ModelConfig) -> list[str]:
    """``supportedGenerationMethods`` of a model."""
    return list(_GENERATE_METHODS if model.kind == "generate" else _EMBED_METHODS)


@dataclass(frozen=True)
class Ticket:
    """What an admitted request must do before answering.

    Attributes:
        latency: Seconds to wait before the response.
        error: Server error to send instead of the response (already charged), if any.
        served: The service tier the request is served at (``None``: none was asked).
    """

    latency: float
    error: ErrorReply | None = None
    served: str | None = None


class EmulatorState:
    """Shared emulator state.

    Args:
        config: Validated configuration.
        clock: Callable returning epoch seconds.
    """

    def __init__(self, config: EmulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        self.ledger = QuotaLedger(config)
        self.spend = SpendLedger(config)
        self.stats = StatsRecorder()
        self.faults = FaultInjector(config.faults)
        self.store = Store()
        self._keys = {k.key: k for k in config.keys}
        self.oauth = TokenIssuer(config.oauth_clients, clock)
        self.webhooks = WebhookSender(config.webhooks, clock)

    def reset(self) -> None:
        """Forget quotas, statistics, injections and resources."""
        with self.lock:
            self.ledger.reset()
            self.spend.reset()
            self.stats.reset()
            self.faults.reset()
            self.store.reset()
            self.oauth.reset()
            self.webhooks.reset()

    def authenticate(
        self, key: str | None, token: str | None = None, *, oauth_only: bool = False
    ) -> str:
        """Return the project of ``key`` (or, without one, of the OAuth access ``token``).

        Raises:
            ErrorReply: 400 API_KEY_INVALID for a missing or unknown key, 403 if blocked;
                401 UNAUTHENTICATED for an unknown or expired token, or for a key where
                ``oauth_only``.
        """
        if not key and token:
            with self.lock:
                project, expired = self.oauth.project(token)
            if project is None:
                raise unauthenticated(
                    "ACCESS_TOKEN_EXPIRED" if expired else "ACCESS_TOKEN_TYPE_UNSUPPORTED"
                )
            return project
        if key and oauth_only:
            raise unauthenticated("CREDENTIALS_MISSING")
        entry = self._keys.get(key or "")
        if entry is None:
            raise api_key_invalid()
        if entry.blocked:
            raise permission_denied(
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."
            )
        return entry.project

    def resolve(self, model_id: str, method: str, version: str) -> ModelConfig:
        """The config of ``model_id`` if it supports ``method``.

        Raises:
            ErrorReply: 404 NOT_FOUND as Gemini words it.
        """
        model = self.config.model(model_id)
        if model is None or _ALIASES.get(method, method) not in methods_of(model):
            bare = model_id.removeprefix("models/")
            raise not_found(
                f"models/{bare} is not found for API version {version}, or is not supported "
                f"for {method}. Call ListModels to see the list of available models and their "
                "supported methods."
            )
        return model

    def admit(
        self,
        project: str,
        model: ModelConfig,
        *,
        requests: int,
        tokens: int,
        output_tokens: int = 0,
        service_tier: str | None = None,
    ) -> Ticket:
        """Charge a generate/embed request or raise its 429.

        Args:
            project: Project of the caller.
            model: Model whose quota is charged.
            requests: Request cost.
            tokens: Input tokens.
            output_tokens: Output tokens of the answer (billed with the input).
            service_tier: The tier the request asks for (``serviceTier``).

        Returns:
            A ticket; its ``error`` is an injected server error to send.

        Raises:
            ErrorReply: 429 RESOURCE_EXHAUSTED (real or injected, or the spend cap), 402 when
                the project's prepaid balance is spent.
        """
        in_micros, out_micros = _micros(model, tokens, output_tokens)
        with self.lock:
            now = self.clock()
            self.stats.received(model.name)
            over = self.spend.check(project, model, service_tier, in_micros, now)
            if over is not None:
                self.stats.rejected(model.name, ["spend"])
                raise self._spend_429(over)
            forced = self.faults.take(model.name, project)
            if forced is not None and forced.status == 429:
                self.stats.rejected(model.name, ["injected"])
                raise self._injected_429(forced, model)
            violations = self.ledger.try_admit(
                project, model, requests=requests, tokens=tokens, now=now
            )
            if forced is not None:
                if not violations:
                    self.stats.admitted(Admission(now, project, model.name, requests, tokens))
                self.stats.failed(model.name)
                return Ticket(self.faults.latency(), server_error(forced.status))
            if violations:
                self.stats.rejected(model.name, [v.dimension for v in violations])
                raise self._real_429(violations, model)
            self.stats.admitted(Admission(now, project, model.name, requests, tokens))
            served = self.spend.served(project, model, service_tier, tokens, now)
            self.spend.charge(project, model, served, in_micros + out_micros, tokens, now)
            code = self.faults.roll()
            if code is not None:
                self.stats.failed(model.name)
            error = None if code is None else server_error(code)
            return Ticket(self.faults.latency(), error, served)

    def admit_count(self, project: str, model: ModelConfig) -> None:
        """Charge a countTokens request against the model's ``count_rpm``.

        Raises:
            ErrorReply: 429 RESOURCE_EXHAUSTED.
        """
        with self.lock:
            self.stats.received(model.name, count=True)
            violations = self.ledger.try_admit_count(project, model, now=self.clock())
            if violations:
                self.stats.rejected(model.name, ["count_rpm"], count=True)
                raise self._real_429(violations, model)
            self.stats.count_admitted(model.name)

    def _spend_429(self, over: tuple[float, int, int]) -> ErrorReply:
        retry, _used, cap = over
        usd = cap / 1_000_000
        value = int(usd) if usd == int(usd) else usd
        metric, qid = SPEND_QUOTA_METRIC, SPEND_QUOTA_ID
        violation = Violation("spend", value, metric, qid, retry)
        return resource_exhausted([violation], "*", retry, self.config.retry_delay_format)

    def _real_429(self, violations: list[Violation], model: ModelConfig) -> ErrorReply:
        delay = max(v.retry_after for v in violations)
        return resource_exhausted(
            violations,
            model.name,
            delay,
            self.config.retry_delay_format,
            self.config.quota_error_detail,
        )

    def set_limits(self, model: str, limits: dict[str, int | None]) -> ModelConfig:
        """Change a model's limits from now on (e.g. a tier drop); admissions already counted
        stay in their windows. Returns the model's new config.

        Raises:
            ValueError: an unknown model or dimension, or a bad amount.
        """
        allowed = {"rpm", "tpm", "rpd", "tpd", "count_rpm"}
        bad = sorted(set(limits) - allowed)
        if bad:
            raise ValueError(f"unknown dimensions {bad}: use {sorted(allowed)}")
        for dim, value in limits.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{dim}={value!r}: give an int >= 0 or null (unlimited)")
        with self.lock:
            current = self.config.model(model)
            if current is None:
                raise ValueError(f"unknown model {model!r}")
            new = current.model_copy(update=limits)
            models = [new if m.name == current.name else m for m in self.config.models]
            self.config = self.config.model_copy(update={"models": models})
            return new

    def _injected_429(self, forced: Injection, model: ModelConfig) -> ErrorReply:
        if forced.body is not None:
            return ErrorReply(429, forced.body)
        limits = {"rpm": model.rpm, "tpm": model.tpm, "rpd": model.rpd, "tpd": model.tpd}
        delay = self.config.minute_seconds if forced.retry_delay is None else forced.retry_delay
        violations = []
        for dim in forced.violations:
            metric, qid = quota_names(self.config.tier, model.kind, dim)
            violations.append(Violation(dim, limits[dim] or 0, metric, qid, delay))
        return resource_exhausted(violations, model.name, delay, self.config.retry_delay_format)


def _micros(model: ModelConfig, input_tokens: int, output_tokens: int) -> tuple[float, float]:
    """Micro-dollars of a request's input and output at the model's standard prices."""
    if model.input_price is None:
        return 0.0, 0.0
    out_price = model.input_price if model.output_price is None else model.output_price
    return input_tokens * model.input_price, output_tokens * out_price
