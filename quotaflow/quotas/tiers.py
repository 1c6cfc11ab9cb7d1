"""Tier tables: the rate limits of each Gemini model in a usage tier, as validated data.

quotaflow ships one TOML file per usage tier (``free``, ``tier1``, ``tier2``, ``tier3``) with the
limits Google last published and the source of every figure. Google stopped publishing
per-model figures in late 2025; the live limits of a project are shown only in AI Studio
(https://aistudio.google.com/rate-limit), so load your own table or override single models::

    table = load_tier("tier1")
    table = load_table("my_limits.toml")
    table = table.with_overrides({"gemini-2.5-flash": {"rpm": 5, "tpm": 1000}})
    table = table.with_overrides_file("overrides.toml")
    table = table.with_env_overrides()  # QUOTAFLOW_LIMITS='gemini-2.5-flash:rpm=5;...'
    name, limits = table.resolve("models/gemini-2.5-flash-preview-05-20")

Scope: Gemini meters every limit per Google Cloud project and model, not per API key, so one
table describes one project; several keys of one project share it.

Model names resolve, in this order (case-insensitive, after dropping a leading ``models/``):

1. an entry's name or one of its ``aliases``;
2. the name with version suffixes stripped one at a time from the end: ``-latest``,
   ``-preview-MM-DD``, ``-preview-MM-YYYY``, ``-exp-MMDD``, ``-exp-MM-DD``, bare ``-preview`` or
   ``-exp``, and ``-001``-style versions
   (``gemini-2.5-flash-preview-05-20`` -> ``gemini-2.5-flash``);
3. any of those names plus ``-preview`` (``gemini-3-pro`` -> ``gemini-3-pro-preview``, as
   quota names in 429 bodies read);
4. tuned models (``tunedModels/my-model-abc``): an entry of that exact name, else the entry
   ``tunedModels/*``, else the entry named by the table's ``tuned_models`` key. Each tuned model
   keeps its own name as the resolved name, so it gets buckets of its own;
5. the table's ``unknown`` limits, under the requested name; else :class:`UnknownModelError`
   with close matches.

Moving aliases such as ``gemini-flash-latest`` are not mapped: their target changes over time.
Add them as ``aliases`` (or with an override) to the entry you want.

A dimension with no value has no limit. ``tpm``/``tpd`` count input tokens only; ``rpd`` resets at
midnight Pacific time.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from quotaflow.errors import ConfigError, TierTableError, UnknownModelError
from quotaflow.quotas.keyed import KeyedProblem, dotted
from quotaflow.quotas.model_names import bare, close_matches, name_candidates
from quotaflow.quotas.overrides import merged_update, parse_overrides
from quotaflow.quotas.schema import (
    DIMENSIONS,
    Dimension,
    ModelKind,
    ModelLimits,
    OverrideFile,
    Source,
    check_table,
    describe_validation_error,
    parse_env_value,
    provenance_problems,
)
from quotaflow.quotas.table_io import parse_toml, read_text, table_error

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "DIMENSIONS",
    "ENV_VAR",
    "SHIPPED_TIERS",
    "Dimension",
    "ModelKind",
    "ModelLimits",
    "Source",
    "TierTable",
    "TierTableError",
    "UnknownModelError",
    "load_table",
    "load_tier",
]

ENV_VAR: Final = "QUOTAFLOW_LIMITS"
"""The environment variable read by :meth:`TierTable.with_env_overrides`."""

SHIPPED_TIERS: Final = ("free", "tier1", "tier2", "tier3")
"""The tiers :func:`load_tier` knows."""

_CACHE_SIZE: Final = 4096
_ENV_FORM: Final = (
    f"fix: set {ENV_VAR}='gemini-2.5-flash:rpm=5,tpm=1000;gemini-2.5-pro:rpd=10' "
    '(VALUE none removes a limit) or a JSON object such as {"gemini-2.5-flash": {"rpm": 5}}'
)


class TierTable(BaseModel):
    """The limits of every model in one usage tier, with the sources of the figures.

    Immutable: the ``with_*`` methods return a new table. Build one with :func:`load_tier`,
    :func:`load_table`, or directly.

    Attributes:
        schema_version: the file format version (``schema = 1`` in TOML).
        tier: the tier's name (``"free"``, ``"tier1"``, ... or your own).
        note: free text.
        sources: source id -> :class:`Source`.
        models: model id -> :class:`ModelLimits`.
        unknown: limits for any model not in ``models``; ``None`` makes unknown names an error.
        tuned_models: the entry whose limits ``tunedModels/...`` get when there is no
            ``tunedModels/*`` entry.

    Example:
        >>> table = TierTable(tier="mine", models={"gemini-2.5-flash": ModelLimits(rpm=5)})
        >>> table.resolve("models/gemini-2.5-flash-latest")[0]
        'gemini-2.5-flash'
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(default=1, alias="schema")
    tier: str = Field(min_length=1)
    note: str | None = None
    sources: dict[str, Source] = Field(default_factory=dict)
    models: dict[str, ModelLimits] = Field(default_factory=dict)
    unknown: ModelLimits | None = None
    tuned_models: str | None = None

    _index: dict[str, str] | None = PrivateAttr(default=None)
    _cache: dict[str, tuple[str, ModelLimits]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> TierTable:
        check_table(self.models, self.sources, self.unknown, self.tuned_models)
        return self

    # -- resolution ---------------------------------------------------------------------------

    def _names(self) -> dict[str, str]:
        if self._index is None:
            index: dict[str, str] = {}
            for name, limits in self.models.items():
                index[name.lower()] = name
                index.update((alias.lower(), name) for alias in limits.aliases)
            self._index = index
        return self._index

    def _lookup(self, name: str) -> tuple[str, str] | None:
        """Return (resolved name, entry name) for ``name`` without the unknown fallback."""
        index = self._names()
        plain = bare(name)
        if plain.lower().startswith("tunedmodels/"):
            tuned = "tunedModels/" + plain[len("tunedModels/") :]
            for entry in (tuned.lower(), "tunedmodels/*", (self.tuned_models or "").lower()):
                if entry in index:
                    return tuned, index[entry]
            return None
        candidates = list(name_candidates(plain.lower()))
        for candidate in candidates + [c + "-preview" for c in candidates]:
            if candidate in index:
                return index[candidate], index[candidate]
        return None

    def resolve(self, name: str) -> tuple[str, ModelLimits]:
        """Find the limits for a model name as a user or the API writes it.

        The resolved name is the entry's name (aliases and suffixed names share the entry's
        buckets), the tuned model's own name, or the requested name for the ``unknown`` fallback.

        Args:
            name: e.g. ``"gemini-2.5-flash"``, ``"models/gemini-2.5-flash-preview-05-20"``,
                ``"tunedModels/my-model-abc"``.

        Returns:
            ``(resolved name, limits)``.

        Raises:
            UnknownModelError: no entry matches and the table has no ``unknown`` limits; its
                ``suggestions`` lists close matches.
        """
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        found = self._lookup(name)
        if found is not None:
            result = (found[0], self.models[found[1]])
        elif self.unknown is not None:
            result = (bare(name).lower(), self.unknown)
        else:
            raise UnknownModelError(name, close_matches(bare(name), self._spelled_names()))
        if len(self._cache) < _CACHE_SIZE:
            self._cache[name] = result
        return result

    def _spelled_names(self) -> list[str]:
        return [n for name, lim in self.models.items() for n in (name, *lim.aliases)]

    # -- overrides ----------------------------------------------------------------------------

    def with_overrides(
        self, overrides: Mapping[str, Mapping[str, Any]], *, origin: str = "with_overrides()"
    ) -> TierTable:
        """Return a table with some limits of some models replaced, or models added.

        Keys are model names. A name that is an entry or alias changes that entry. Any other
        name becomes a new entry; if it resolves to an entry (``tunedModels/x``, a dated
        preview), the new entry starts from that entry's limits. A value of ``None`` or
        ``"none"`` removes a limit.

        Args:
            overrides: e.g. ``{"gemini-2.5-flash": {"rpm": 5, "tpm": 1000}}``. Per model:
                ``rpm``, ``tpm``, ``rpd``, ``tpd``, ``batch_enqueued_tokens``, ``kind``,
                ``aliases``, ``note``, ``source`` (a source id of this table).
            origin: names the overrides in errors and in the figures' source.

        Raises:
            TierTableError: an override is invalid; the message names the key.
        """
        return self._override_with(overrides, origin=origin, source_id="override", key_prefix=())

    def with_overrides_file(self, path: str | os.PathLike[str]) -> TierTable:
        """Return a table with the overrides of a TOML file applied.

        The file is a partial table: ``[models."gemini-2.5-flash"]`` sections with the keys
        :meth:`with_overrides` takes, optional ``[sources.<id>]`` to cite, ``[unknown]`` for the
        fallback limits, ``tuned_models``, and ``schema``/``tier``/``note`` (informational).

        Raises:
            TierTableError: the file cannot be read or is invalid; names the file and key.
        """
        origin = os.fspath(path)
        data = parse_toml(read_text(path), origin)
        try:
            parsed = OverrideFile.model_validate(data)
        except ValidationError as exc:
            raise table_error(origin, describe_validation_error(exc, "override_file")) from exc
        sources = {**self.sources, **parsed.sources}
        update = merged_update(
            self,
            parsed.models,
            origin=origin,
            source_id=f"file:{Path(path).name}",
            key_prefix=("models",),
            sources=sources,
            unknown=parsed.unknown,
            tuned_models=parsed.tuned_models,
        )
        return self._revalidate(update, origin)

    def with_env_overrides(
        self, environ: Mapping[str, str] | None = None, *, var: str = ENV_VAR
    ) -> TierTable:
        """Return a table with the overrides of the ``QUOTAFLOW_LIMITS`` variable applied.

        The value is ``MODEL:KEY=VALUE[,KEY=VALUE...]`` entries separated by ``;`` (e.g.
        ``gemini-2.5-flash:rpm=5,tpm=1000;gemini-2.5-pro:rpd=10``) or a JSON object in the form
        :meth:`with_overrides` takes. Unset or empty: the table is returned unchanged.

        Args:
            environ: the environment to read; ``os.environ`` by default.
            var: the variable's name.

        Raises:
            TierTableError: the value is malformed; the message names the variable and the fix.
        """
        raw = (os.environ if environ is None else environ).get(var, "").strip()
        if not raw:
            return self
        origin = f"environment variable {var}"
        hint = _ENV_FORM.replace(ENV_VAR, var)
        try:
            overrides = parse_env_value(raw)
        except KeyedProblem as exc:
            raise table_error(origin, [(dotted(exc.key), exc.problem)], hint) from exc
        return self._override_with(
            overrides, origin=origin, source_id=f"env:{var}", key_prefix=(), hint=hint
        )

    def with_unknown(self, limits: ModelLimits | Mapping[str, Any] | None) -> TierTable:
        """Return a table whose unknown models get ``limits`` (``None``: unknown is an error).

        Example:
            >>> TierTable(tier="t").with_unknown({"rpm": 10}).resolve("any-model")[1].rpm
            10
        """
        if isinstance(limits, Mapping):
            limits = _validate_limits(limits, "with_unknown()")
        return self._revalidate({"unknown": limits}, "with_unknown()")

    def _override_with(
        self,
        overrides: Mapping[str, Mapping[str, Any]],
        *,
        origin: str,
        source_id: str,
        key_prefix: tuple[str, ...],
        hint: str = "",
    ) -> TierTable:
        parsed = parse_overrides(overrides, origin, hint)
        update = merged_update(
            self, parsed, origin=origin, source_id=source_id, key_prefix=key_prefix, hint=hint
        )
        return self._revalidate(update, origin, hint)

    def _revalidate(self, update: Mapping[str, Any], origin: str, hint: str = "") -> TierTable:
        data = {**self.model_dump(by_alias=True, exclude_none=True), **update}
        try:
            return TierTable.model_validate(data)
        except ValidationError as exc:
            raise table_error(origin, describe_validation_error(exc), hint) from exc


def _validate_limits(data: Mapping[str, Any], origin: str) -> ModelLimits:
    try:
        return ModelLimits.model_validate(data)
    except ValidationError as exc:
        raise table_error(origin, describe_validation_error(exc, "limits")) from exc


def _table_from_toml(text: str, origin: str, *, require_sources: bool) -> TierTable:
    data = parse_toml(text, origin)
    if "schema" not in data:
        raise table_error(origin, [("schema", "missing; put `schema = 1` at the top")])
    try:
        table = TierTable.model_validate(data)
    except ValidationError as exc:
        raise table_error(origin, describe_validation_error(exc)) from exc
    if require_sources and (
        problems := provenance_problems(table.sources, table.models, table.unknown)
    ):
        raise table_error(origin, problems)
    return table


def load_table(path: str | os.PathLike[str], *, require_sources: bool = False) -> TierTable:
    """Load and validate a tier table file of your own.

    Args:
        path: a TOML file in the format of the shipped tables (``schema = 1``, ``tier``,
            ``[sources.<id>]``, ``[models."<id>"]``, optional ``[unknown]`` and ``tuned_models``).
        require_sources: also demand that every figure cites a source with a URL and a read
            date, as the shipped tables do.

    Raises:
        TierTableError: the file cannot be read or is invalid; names the file, key and problem.

    Example:
        >>> table = load_table("my_limits.toml")  # doctest: +SKIP
    """
    return _table_from_toml(read_text(path), os.fspath(path), require_sources=require_sources)


def load_tier(tier: str) -> TierTable:
    """Load a shipped tier table: ``"free"``, ``"tier1"``, ``"tier2"`` or ``"tier3"``.

    Spellings such as ``"Tier 1"``, ``"tier-1"`` or ``"1"`` are accepted. Tables are cached;
    they are immutable.

    Raises:
        ConfigError: not a shipped tier; the message lists the valid ones.
        TierTableError: a shipped file is invalid (a packaging bug).
    """
    key = tier.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    key = f"tier{key}" if key.isdigit() else key
    if key not in SHIPPED_TIERS:
        raise ConfigError(
            f"unknown tier {tier!r}; shipped tiers: {', '.join(SHIPPED_TIERS)} "
            "(load a file of your own with load_table(path))"
        )
    return _load_shipped(key)


@functools.cache
def _load_shipped(tier: str) -> TierTable:
    file = _shipped_dir() / f"{tier}.toml"
    table = _table_from_toml(file.read_text(encoding="utf-8"), str(file), require_sources=True)
    if table.tier != tier:
        raise table_error(str(file), [("tier", f"is {table.tier!r}, expected {tier!r}")])
    return table


def _shipped_dir() -> Traversable:
    """Where the shipped tables are: in the package (wheel) or next to it (source checkout)."""
    try:
        package: Traversable | None = resources.files("quotaflow")
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - namespace package on 3.10
        package = None
    return _find_shipped_dir(package, Path(__file__).resolve().parents[2] / "tier_tables")


def _find_shipped_dir(package: Traversable | None, checkout: Path) -> Traversable:
    """Prefer ``<package>/_tier_tables`` (a wheel), else ``checkout`` (an editable install)."""
    if package is not None and (package / "_tier_tables").is_dir():
        return package / "_tier_tables"
    if checkout.is_dir():
        return checkout
    raise ConfigError(
        f"quotaflow's tier tables are missing: looked in {package}/_tier_tables (installed "
        f"package) and {checkout} (source checkout); reinstall quotaflow"
    )
