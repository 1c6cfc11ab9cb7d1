"""Emulator configuration: pydantic models, defaults and file loading.

Every model forbids unknown keys, so a typo in a config file fails loudly with the key's path.
Example TOML::

    tier = "free"
    minute_seconds = 1.0          # a test's "minute"
    day_seconds = 10.0            # compressed day (omit for the Pacific calendar day)

    [[keys]]
    key = "test-key"
    project = "proj-a"

    [[models]]
    name = "gemini-2.5-flash"
    rpm = 5
    tpm = 1000
    rpd = 100
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator

from quotaflow._frozen import Frozen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

__all__ = [
    "ApiKeyConfig",
    "EmulatorConfig",
    "EmulatorConfigError",
    "FaultConfig",
    "ModelConfig",
    "OAuthClientConfig",
    "default_models",
    "load_config",
]

Tier = Literal["free", "tier1", "tier2", "tier3"]


class EmulatorConfigError(ValueError):
    """Raised by :func:`load_config` when a config file is unreadable or invalid.

    The message names the file and the path of every offending key.
    """


class ApiKeyConfig(Frozen):
    """One accepted API key.

    Attributes:
        key: The key string clients send (``x-goog-api-key``, ``?key=`` or ``Bearer``).
        project: The project the key belongs to; quotas and resources are per project.
        blocked: If true, every call with this key gets 403 PERMISSION_DENIED.
    """

    key: str = Field(min_length=1)
    project: str = Field(default="default-project", min_length=1)
    blocked: bool = False


BatchEvent = Literal["batch.succeeded", "batch.failed", "batch.cancelled", "batch.expired"]
BATCH_EVENT_TYPES: tuple[BatchEvent, ...] = get_args(BatchEvent)


class WebhookConfig(Frozen):
    """A static webhook: the emulator posts each batch job's end to ``uri``, signed as Gemini's
    are (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
    retried a few times until it answers 2xx.

    Attributes:
        uri: Where events are posted.
        signing_secret: The secret deliveries are signed with (``whsec_`` and base64).
        subscribed_events: The events posted (default: every batch event).
    """

    uri: str = Field(pattern=r"^https?://\S+$")
    signing_secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/]+={0,2}$")
    subscribed_events: list[BatchEvent] = Field(default_factory=lambda: list(BATCH_EVENT_TYPES))


class OAuthClientConfig(Frozen):
    """One OAuth client the emulator's token endpoint (``POST /_emulator/oauth2/token``)
    knows: an authorized-user JSON holding these values, with ``token_uri`` pointing at that
    endpoint, refreshes against it (google-auth's refresh-token grant).

    Attributes:
        client_id, client_secret, refresh_token: What a refresh must carry.
        project: The project of the calls made with the access tokens it issues.
        expires_in: Seconds an access token it issues is valid (by the emulator's clock).
    """

    client_id: str = Field(min_length=1)
    client_secret: str = Field(min_length=1)
    refresh_token: str = Field(min_length=1)
    project: str = Field(default="default-project", min_length=1)
    expires_in: int = Field(default=3599, ge=1)


class ModelConfig(Frozen):
    """One served model and its limits.

    A limit of ``None`` means unlimited. ``rpm``/``tpm``/``count_rpm`` use the configured period
    (60 s by default); ``rpd``/``tpd`` use the day.

    Attributes:
        name: Model id without the ``models/`` prefix, e.g. ``gemini-2.5-flash``.
        kind: ``generate`` (generateContent & co.) or ``embed`` (embedContent & co.).
        display_name: Human name shown by models.get; derived from ``name`` if omitted.
        input_token_limit: Largest accepted prompt (400 INVALID_ARGUMENT above it).
        output_token_limit: Advertised output limit.
        rpm: Requests per period.
        tpm: Input tokens per period.
        rpd: Requests per day.
        tpd: Input tokens per day.
        count_rpm: countTokens requests per period (its own quota).
        batch_enqueued_tokens: Input tokens the project's active batch jobs of this model may
            hold at once (429 above it); ``None``: unlimited.
        embedding_dimensions: Default vector size of an embed model.
        input_price: USD per 1,000,000 prompt tokens (``None``: not billed).
        output_price: USD per 1,000,000 output tokens (``None``: the input price).
    """

    name: str = Field(min_length=1)
    kind: Literal["generate", "embed"] = "generate"
    display_name: str | None = None
    input_token_limit: int = Field(default=1_048_576, gt=0)
    output_token_limit: int = Field(default=65_536, gt=0)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    rpd: int | None = Field(default=None, ge=0)
    tpd: int | None = Field(default=None, ge=0)
    count_rpm: int | None = Field(default=3000, ge=0)
    batch_enqueued_tokens: int | None = Field(default=None, ge=0)
    embedding_dimensions: int = Field(default=3072, gt=0)
    input_price: float | None = Field(default=None, ge=0.0)
    output_price: float | None = Field(default=None, ge=0.0)

    @field_validator("name")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        return value.removeprefix("models/")


class FaultConfig(Frozen):
    """Random faults and latency, drawn from ``random.Random(seed)``.

    Attributes:
        seed: Seed of the fault random generator.
        error_rate_500: Probability that an admitted request fails with 500 INTERNAL.
        error_rate_503: Probability of 503 UNAVAILABLE.
        error_rate_504: Probability of 504 DEADLINE_EXCEEDED.
        latency_seconds: Fixed delay added to every admitted request.
        jitter_seconds: Extra uniform random delay in ``[0, jitter_seconds]``.
    """

    seed: int = 0
    error_rate_500: float = Field(default=0.0, ge=0.0, le=1.0)
    error_rate_503: float = Field(default=0.0, ge=0.0, le=1.0)
    error_rate_504: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_seconds: float = Field(default=0.0, ge=0.0)
    jitter_seconds: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _rates_sum(self) -> FaultConfig:
        if self.error_rate_500 + self.error_rate_503 + self.error_rate_504 > 1.0:
            raise ValueError("error rates must sum to at most 1")
        return self


def _gen(name: str, rpm: int, tpm: int, rpd: int, output: int = 65_536) -> ModelConfig:
    return ModelConfig(name=name, rpm=rpm, tpm=tpm, rpd=rpd, output_token_limit=output)


def default_models() -> list[ModelConfig]:
    """The models served when a config names none.

    Free-tier numbers from the last published rate-limit table (~Nov 2025); Google no longer
    publishes them, so treat them as plausible defaults, not facts.

    Returns:
        A fresh list of model configs.
    """
    return [
        _gen("gemini-2.5-pro", 2, 125_000, 50),
        _gen("gemini-2.5-flash", 10, 250_000, 250),
        _gen("gemini-2.5-flash-lite", 15, 250_000, 1000),
        _gen("gemini-2.0-flash", 15, 1_000_000, 200, output=8192),
        _gen("gemini-2.0-flash-lite", 30, 1_000_000, 200, output=8192),
        ModelConfig(
            name="gemini-embedding-001",
            kind="embed",
            input_token_limit=2048,
            output_token_limit=1,
            rpm=100,
            tpm=30_000,
            rpd=1000,
        ),
    ]


class EmulatorConfig(Frozen):
    """Whole emulator configuration.

    Attributes:
        tier: Usage tier; selects the quotaId/metric names in 429 bodies.
        keys: Accepted API keys.
        oauth_clients: OAuth clients the token endpoint refreshes for; their access tokens
            are accepted as ``Authorization: Bearer`` until they expire.
        oauth_only: Collections (``tunedModels``, ``files``, ...) that refuse API keys with
            401 ``UNAUTHENTICATED``, as Google's does for calls that need a principal.
        webhooks: Static webhooks batch jobs' ends are posted to.
        models: Served models (replaces the defaults when given).
        minute_seconds: Length of the "minute" for rpm/tpm/count_rpm.
        window: ``rolling`` (default) or ``fixed`` windows for the per-period limits.
        day_seconds: If set, a compressed day of this length replaces the calendar day.
        timezone: Zone whose midnight resets daily limits.
        retry_delay_format: ``RetryInfo.retryDelay`` as whole (rounded up) or fractional seconds.
        media_part_tokens: Tokens of a media part the emulator cannot size (a file part,
            unreadable inline data); readable inline media counts by the documented rates.
        response_tokens: Output tokens of a generated candidate (capped by maxOutputTokens).
        stream_chunks: Number of chunks a streamed response is cut into.
        batch_delay_seconds: Time a batch job takes to complete.
        tuning_delay_seconds: Time a tuned model takes to become ACTIVE.
        file_ttl_seconds: Lifetime of an uploaded file (48 h).
        cache_min_tokens: Smallest cached content accepted.
        openai_error_details: Keep ``details`` in errors of the OpenAI-compatible surface.
        quota_error_detail: What a quota 429 says: ``full`` (``QuotaFailure`` with
            ``quotaValue``, and ``RetryInfo``), ``no_value`` (``QuotaFailure`` without
            ``quotaValue``) or ``bare`` (only ``Help``), as Google's 429s vary.
        faults: Random faults and latency.
        spend_cap_usd: The spend cap per project per rolling ``spend_window_seconds``
            (429 naming a spend quotaId); ``None``: no cap.
        spend_window_seconds: The spend cap's rolling window; ``None``: ten minutes
            (``10 * minute_seconds``; Gemini: 600 s).
        balances: Prepaid USD per project; a project whose balance is spent gets 402. A project
            not named has no prepaid balance (never 402).
        priority_fraction: The Priority sub-limit as a fraction of rpm and tpm; a Priority
            request over it is served at Standard (``x-gemini-service-tier: standard``).
        priority_multiplier: Price multiplier of the Priority tier.
        flex_multiplier: Price multiplier of the Flex tier.
    """

    tier: Tier = "free"
    keys: list[ApiKeyConfig] = Field(default_factory=lambda: [ApiKeyConfig(key="test-key")])
    oauth_clients: list[OAuthClientConfig] = Field(default_factory=list)
    oauth_only: list[Literal["models", "tunedModels", "files", "cachedContents", "batches"]] = (
        Field(default_factory=list)
    )
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=default_models)
    minute_seconds: float = Field(default=60.0, gt=0.0)
    window: Literal["rolling", "fixed"] = "rolling"
    day_seconds: float | None = Field(default=None, gt=0.0)
    timezone: str = "America/Los_Angeles"
    retry_delay_format: Literal["whole", "fractional"] = "fractional"
    media_part_tokens: int = Field(default=258, ge=0)
    response_tokens: int = Field(default=24, ge=1)
    stream_chunks: int = Field(default=3, ge=1)
    batch_delay_seconds: float = Field(default=2.0, ge=0.0)
    tuning_delay_seconds: float = Field(default=2.0, ge=0.0)
    file_ttl_seconds: float = Field(default=48 * 3600.0, gt=0.0)
    cache_min_tokens: int = Field(default=1024, ge=0)
    openai_error_details: bool = True
    quota_error_detail: Literal["full", "no_value", "bare"] = "full"
    faults: FaultConfig = Field(default_factory=FaultConfig)
    spend_cap_usd: float | None = Field(default=None, gt=0.0)
    spend_window_seconds: float | None = Field(default=None, gt=0.0)
    balances: dict[str, float] = Field(default_factory=dict)
    priority_fraction: float = Field(default=0.3, gt=0.0, le=1.0)
    priority_multiplier: float = Field(default=2.0, gt=0.0)
    flex_multiplier: float = Field(default=0.5, gt=0.0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _unique(self) -> EmulatorConfig:
        keys = [k.key for k in self.keys]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate API key in keys")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        return self

    @property
    def spend_window(self) -> float:
        """The spend cap's rolling window in seconds."""
        if self.spend_window_seconds is not None:
            return self.spend_window_seconds
        return 10 * self.minute_seconds

    def model(self, name: str) -> ModelConfig | None:
        """Return the config of model ``name`` (with or without ``models/``), or None."""
        bare = name.removeprefix("models/")
        return next((m for m in self.models if m.name == bare), None)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> EmulatorConfig:
        """Validate a mapping (parsed TOML/JSON).

        Args:
            data: The raw mapping.
            source: Name used in error messages, e.g. the file path.

        Raises:
            EmulatorConfigError: naming every invalid or unknown key.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EmulatorConfigError(_describe(exc, source)) from exc


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {loc!r}")
        else:
            lines.append(f"{source}: {loc}: {err['msg']}")
    return "invalid emulator config:\n" + "\n".join(lines)


def load_config(path: str | Path) -> EmulatorConfig:
    """Load and validate a TOML (``.toml``) or JSON (anything else) config file.

    Args:
        path: File to read.

    Returns:
        The validated configuration.

    Raises:
        EmulatorConfigError: if the file cannot be read, parsed or validated.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data: Any = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise EmulatorConfigError(f"{p}: cannot load emulator config: {exc}") from exc
    if not isinstance(data, dict):
        raise EmulatorConfigError(f"{p}: top level must be a table/object")
    return EmulatorConfig.from_mapping(data, source=str(p))
