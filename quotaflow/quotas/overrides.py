"""How overrides change a tier table: each override entry validated, then merged into the
table's models and sources (a new entry starts from the limits its name resolves to)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from quotaflow.quotas.keyed import dotted
from quotaflow.quotas.model_names import bare
from quotaflow.quotas.schema import (
    DIMENSIONS,
    ModelOverride,
    Source,
    describe_validation_error,
    limits_from_override,
)
from quotaflow.quotas.table_io import table_error

if TYPE_CHECKING:
    from quotaflow.quotas.tiers import TierTable

__all__ = ["merged_update", "parse_overrides"]


def parse_overrides(
    overrides: Mapping[str, Mapping[str, Any]], origin: str, hint: str = ""
) -> dict[str, ModelOverride]:
    """Each override entry validated, or a :class:`~quotaflow.errors.TierTableError` naming
    its key."""
    parsed: dict[str, ModelOverride] = {}
    for name, fields in overrides.items():
        try:
            parsed[name] = ModelOverride.model_validate(fields)
        except ValidationError as exc:
            problems = [
                (dotted((name,)) + ("." + k if k else ""), p)
                for k, p in describe_validation_error(exc, "override")
            ]
            raise table_error(origin, problems, hint) from exc
    return parsed


def merged_update(
    table: TierTable,
    overrides: Mapping[str, ModelOverride],
    *,
    origin: str,
    source_id: str,
    key_prefix: tuple[str, ...],
    sources: Mapping[str, Source] | None = None,
    unknown: ModelOverride | None = None,
    tuned_models: str | None = None,
    hint: str = "",
) -> dict[str, Any]:
    """The fields of ``table`` with ``overrides`` merged in (for the table's ``_revalidate``)."""
    all_sources = dict(table.sources if sources is None else sources)
    cited = [((*key_prefix, n, "source"), o.source) for n, o in overrides.items()]
    cited += [(("unknown", "source"), unknown.source)] if unknown else []
    for key, sid in cited:
        if sid is not None and sid not in all_sources:
            known = ", ".join(sorted(all_sources)) or "none defined"
            problem = f"unknown source id {sid!r}; use one of: {known}"
            raise table_error(origin, [(dotted(key), problem)], hint)
    models: dict[str, Any] = {n: m.model_dump(exclude_none=True) for n, m in table.models.items()}
    spelled = {**{n.lower(): n for n in models}, **table._names()}
    for name, override in overrides.items():
        plain = bare(name)
        target = spelled.get(plain.lower())
        if target is None:  # a new entry, starting from the limits the name resolves to
            found = table._lookup(plain)
            base = models[found[1]] if found else {}
            models[plain] = {k: v for k, v in base.items() if k not in {"aliases", "note"}}
            target = spelled[plain.lower()] = plain
        models[target] = limits_from_override(models[target], override, source_id)
    update: dict[str, Any] = {"models": models}
    if unknown is not None:
        current = table.unknown.model_dump(exclude_none=True) if table.unknown else {}
        update["unknown"] = limits_from_override(current, unknown, source_id)
    if tuned_models is not None:
        update["tuned_models"] = tuned_models
    pending = [*overrides.values(), *([unknown] if unknown else [])]
    if any(ov.source is None and any(getattr(ov, d) for d in DIMENSIONS) for ov in pending):
        all_sources[source_id] = Source(note=f"set by {origin}")
    update["sources"] = all_sources
    return update
