"""The schema of tier table files and the pure helpers behind :mod:`quotaflow.quotas.tiers`.

Private: import the public names from :mod:`quotaflow.quotas.tiers`. Nothing here reads files or the
environment: this module checks already-parsed data and says what is wrong with data that does
not validate (as dotted TOML keys). It re-exports the name rules used to resolve models
(:mod:`quotaflow.quotas.model_names`) and the located problems
(:mod:`quotaflow.quotas.keyed`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from quotaflow.quotas.keyed import KeyedProblem, dotted
from quotaflow.quotas.model_names import bare, close_matches, name_candidates

__all__ = [
    "DIMENSIONS",
    "Dimension",
    "KeyedProblem",
    "ModelKind",
    "ModelLimits",
    "ModelOverride",
    "OverrideFile",
    "Source",
    "bare",
    "check_table",
    "close_matches",
    "describe_validation_error",
    "dotted",
    "name_candidates",
    "parse_env_value",
    "parse_limits_spec",
    "provenance_problems",
]

Dimension = Literal["rpm", "tpm", "rpd", "tpd", "batch_enqueued_tokens"]
"""The name of one limit of a model: requests or input tokens per minute or day, batch tokens."""

DIMENSIONS: Final[tuple[Dimension, ...]] = ("rpm", "tpm", "rpd", "tpd", "batch_enqueued_tokens")

ModelKind = Literal["generate", "embed"]

PositiveInt = Annotated[int, Field(strict=True, gt=0)]


def _none_word(value: object) -> object:
    """Let an override say ``"none"`` (TOML has no null) to remove a limit."""
    if isinstance(value, str) and value.strip().lower() in {"none", "null", "unlimited"}:
        return None
    return value


OverrideInt = Annotated[PositiveInt | None, BeforeValidator(_none_word)]


class Source(BaseModel):
    """Where figures come from: a page and the date it was read.

    Attributes:
        url: the page the figures were read from.
        read: the date they were read (a TOML date: ``read = 2026-08-24``).
        version: which version of the page, when it changes over time.
        note: anything a reader should know (a copy was read, a figure was observed, ...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    read: dt.date | None = None
    version: str | None = None
    note: str | None = None


class ModelLimits(BaseModel):
    """The limits of one model in one tier (its *quota*), with their provenance.

    A dimension that is ``None`` has no limit. Limits count per Google Cloud project and model,
    not per API key; ``tpm`` and ``tpd`` count input tokens only; ``rpd`` resets at midnight
    Pacific time; ``batch_enqueued_tokens`` caps the tokens of all active Batch API jobs.

    Attributes:
        kind: ``"generate"`` or ``"embed"`` (embeddings count one request per batched item).
        rpm: requests per minute.
        tpm: input tokens per minute.
        rpd: requests per day.
        tpd: input tokens per day.
        batch_enqueued_tokens: tokens that may be enqueued in Batch API jobs at once.
        source: id of the :class:`Source` of every figure without its own entry in ``sources``.
        sources: per-figure source ids, e.g. ``{"batch_enqueued_tokens": "rate_limits_2026_08"}``.
        aliases: other ids that name this model (they share its limits and its buckets).
        note: remarks, e.g. values observed after the published table.

    Example:
        >>> ModelLimits(rpm=5, tpm=250_000).figures
        {'rpm': 5, 'tpm': 250000}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ModelKind = "generate"
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    rpd: PositiveInt | None = None
    tpd: PositiveInt | None = None
    batch_enqueued_tokens: PositiveInt | None = None
    source: str | None = None
    sources: dict[Dimension, str] = Field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    note: str | None = None

    @model_validator(mode="after")
    def _sources_match_figures(self) -> ModelLimits:
        for dim in self.sources:
            if getattr(self, dim) is None:
                raise KeyedProblem(
                    ("sources", dim), f"names a source for {dim}, but {dim} is not set"
                )
        return self

    @property
    def figures(self) -> dict[Dimension, int]:
        """The limited dimensions and their values, in :data:`DIMENSIONS` order."""
        out: dict[Dimension, int] = {}
        for dim in DIMENSIONS:
            value = getattr(self, dim)
            if value is not None:
                out[dim] = value
        return out

    def source_of(self, dimension: Dimension) -> str | None:
        """Return the source id of one figure (its own entry, else ``source``)."""
        return self.sources.get(dimension, self.source)


class ModelOverride(BaseModel):
    """What an override may say about one model; unset fields keep the table's value.

    A dimension set to ``None`` (or ``"none"``) removes that limit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ModelKind | None = None
    rpm: OverrideInt = None
    tpm: OverrideInt = None
    rpd: OverrideInt = None
    tpd: OverrideInt = None
    batch_enqueued_tokens: OverrideInt = None
    source: str | None = None
    aliases: tuple[str, ...] | None = None
    note: str | None = None


class OverrideFile(BaseModel):
    """The shape of an overrides file: a partial tier table."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(default=1, alias="schema")
    tier: str | None = None
    note: str | None = None
    sources: dict[str, Source] = Field(default_factory=dict)
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    unknown: ModelOverride | None = None
    tuned_models: str | None = None


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(f.alias or name for name, f in model.model_fields.items())


Root = Literal["table", "limits", "override", "override_file"]
"""What a validated document is: a tier table, one model's limits, one override, a file."""


_TABLE_KEYS: Final = ("schema", "tier", "note", "sources", "models", "unknown", "tuned_models")


def _allowed_here(loc: tuple[str | int, ...], root: Root) -> tuple[str, ...]:
    parent = loc[:-1]
    entry = _keys(ModelOverride) if root in {"override", "override_file"} else _keys(ModelLimits)
    if not parent:
        return entry if root in {"limits", "override"} else _TABLE_KEYS
    if parent[0] == "sources" and len(parent) == 2:
        return _keys(Source)
    if (parent[0] == "models" and len(parent) == 2) or parent == ("unknown",):
        return entry
    return ()


def describe_validation_error(exc: ValidationError, root: Root = "table") -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(dotted key, what is wrong)`` pairs, in order.

    Args:
        exc: the error.
        root: what was validated; decides which keys an "unknown key" message offers.
    """
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p != "[key]")
        cause = err.get("ctx", {}).get("error")
        kind = err["type"]
        if isinstance(cause, KeyedProblem):
            loc, problem = loc + cause.key, cause.problem
        elif kind == "extra_forbidden":
            allowed = _allowed_here(loc, root)
            problem = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif kind == "missing":
            problem = "missing"
        elif kind == "literal_error" and loc == ("schema",):
            problem = (
                f"unsupported schema version {err['input']!r}; this quotaflow reads schema = 1"
            )
        elif kind in {"greater_than", "int_type", "int_parsing"}:
            problem = f"must be a positive integer, got {err['input']!r}"
        else:
            problem = f"{err['msg']}, got {err['input']!r}"
        out.append((dotted(loc), problem))
    return out


def parse_limits_spec(text: str) -> dict[str, dict[str, Any]]:
    """Parse ``"gemini-2.5-flash:rpm=5,tpm=1000;gemini-2.5-pro:rpd=10"`` into override dicts.

    Values are checked by :class:`ModelOverride` later; here only the form is.

    Raises:
        KeyedProblem: the form is wrong; the message names the entry.
    """
    out: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(text.split(";"), start=1):
        entry = entry.strip()
        if not entry:
            continue
        model, colon, settings = entry.partition(":")
        model = model.strip()
        if not colon or not model or not settings.strip():
            raise KeyedProblem((), f"entry {index} ({entry!r}) is not MODEL:KEY=VALUE")
        fields = out.setdefault(model, {})
        for setting in settings.split(","):
            key, equals, value = (p.strip() for p in setting.partition("="))
            if not equals or not key or not value:
                raise KeyedProblem(
                    (model,), f"{setting.strip()!r} in entry {index} is not KEY=VALUE"
                )
            if key in fields:
                raise KeyedProblem((model, key), f"{key!r} is given twice for {model!r}: keep one")
            digits = value.replace("_", "")
            if key in DIMENSIONS and digits.isascii() and digits.isdigit():
                fields[key] = int(digits)
            elif key in DIMENSIONS and not digits.isascii():
                raise KeyedProblem(
                    (model, key), f"{key}={value!r} is not a whole number (ASCII digits)"
                )
            else:
                fields[key] = value
    return out


def limits_from_override(
    base: Mapping[str, Any], override: ModelOverride, default_source: str
) -> dict[str, Any]:
    """Apply ``override`` to the plain-data form of a :class:`ModelLimits`; return new data."""
    data = dict(base)
    sources: dict[str, str] = dict(data.get("sources") or {})
    given = override.model_fields_set
    for dim in DIMENSIONS:
        if dim not in given:
            continue
        value = getattr(override, dim)
        if value is None:
            data.pop(dim, None)
            sources.pop(dim, None)
        else:
            data[dim] = value
            sources[dim] = override.source or default_source
    for field in ("kind", "aliases", "note"):
        if field in given:
            data[field] = getattr(override, field)
            if data[field] is None:  # back to the default
                del data[field]
    # A figure not yet attributed keeps the entry's old `source`; if the entry had none, and
    # the override names one, the override's source covers the entry.
    if data.get("source") is None and "source" in given:
        data["source"] = override.source
    data["sources"] = {d: s for d, s in sources.items() if data.get(d) is not None}
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise KeyedProblem((k,), f"{k!r} is given twice: keep one")
        out[k] = v
    return out


def parse_env_value(raw: str) -> dict[str, Any]:
    """Parse an overrides variable: a JSON object or the ``MODEL:KEY=VALUE;...`` form.

    Raises:
        KeyedProblem: the value is malformed.
    """
    if not raw.startswith("{"):
        return parse_limits_spec(raw)
    try:
        value = json.loads(raw, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise KeyedProblem((), f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise KeyedProblem((), "the JSON must map model names to objects")
    return value


def _check_name(key: tuple[str | int, ...], name: str, owner: str, seen: dict[str, str]) -> None:
    if not name or any(c.isspace() for c in name):
        raise KeyedProblem(key, f"{name!r} is not a model id (empty or with spaces)")
    if name.lower().startswith("models/"):
        raise KeyedProblem(key, f"write {name[7:]!r}, without the 'models/' prefix")
    other = seen.get(name.lower())
    if other is not None:
        where = "this model" if other == owner else f"model {other!r}"
        raise KeyedProblem(key, f"{name!r} already names {where} (names are case-insensitive)")
    seen[name.lower()] = owner


def _check_sources(
    key: tuple[str | int, ...], limits: ModelLimits, sources: Mapping[str, Source]
) -> None:
    cited = [((*key, "source"), limits.source)]
    cited += [((*key, "sources", dim), sid) for dim, sid in limits.sources.items()]
    for at, sid in cited:
        if sid is not None and sid not in sources:
            known = ", ".join(sorted(sources)) or "none defined"
            raise KeyedProblem(
                at, f"unknown source id {sid!r}; define [sources.{sid}] or use one of: {known}"
            )


def check_table(
    models: Mapping[str, ModelLimits],
    sources: Mapping[str, Source],
    unknown: ModelLimits | None,
    tuned_models: str | None,
) -> None:
    """Check what one entry cannot: unique names and aliases, known source ids, tuned base.

    Raises:
        KeyedProblem: the first problem, at its key.
    """
    seen: dict[str, str] = {}
    for name in models:
        _check_name(("models", name), name, name, seen)
    for name, limits in models.items():
        for i, alias in enumerate(limits.aliases):
            _check_name(("models", name, "aliases", i), alias, name, seen)
        _check_sources(("models", name), limits, sources)
    if unknown is not None:
        if unknown.aliases:
            raise KeyedProblem(("unknown", "aliases"), "the unknown fallback takes no aliases")
        _check_sources(("unknown",), unknown, sources)
    if tuned_models is not None and tuned_models.lower() not in seen:
        raise KeyedProblem(
            ("tuned_models",), f"names {tuned_models!r}, which is not a model of this table"
        )


def provenance_problems(
    sources: Mapping[str, Source],
    models: Mapping[str, ModelLimits],
    unknown: ModelLimits | None,
) -> list[tuple[str, str]]:
    """List figures without a source and sources without a URL or read date (shipped rule)."""
    problems: list[tuple[str, str]] = []
    for sid, source in sources.items():
        for field in ("url", "read"):
            if getattr(source, field) is None:
                problems.append((dotted(("sources", sid, field)), "missing"))
    entries: list[tuple[tuple[str, ...], ModelLimits]]
    entries = [(("models", n), lim) for n, lim in models.items()]
    entries += [(("unknown",), unknown)] if unknown else []
    for key, limits in entries:
        for dim in limits.figures:
            if limits.source_of(dim) is None:
                problem = (
                    f'has no source: add source = "<id>" (or sources = {{ {dim} = "<id>" }}) '
                    "naming a [sources.<id>] with url and read"
                )
                problems.append((dotted((*key, dim)), problem))
    return problems
