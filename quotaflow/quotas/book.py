"""Model names to limits: the tier table, the user's quotas and overrides, the figures learned
from 429s, headroom, and where each figure came from, per canonical model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from quotaflow.errors import ConfigError, UnknownModelError
from quotaflow.gemini._canonical import MODEL_NAME
from quotaflow.limits import Concurrent, Limit, check_quota
from quotaflow.quotas.keyed import KeyedProblem
from quotaflow.quotas.learned import GEMINI_DIMENSIONS, Figure, Origin, TimeScale, gemini_limit
from quotaflow.quotas.pricing import SPEND_SCOPE, SpendBook
from quotaflow.quotas.schema import parse_env_value
from quotaflow.quotas.tiers import ENV_VAR, ModelLimits, TierTable, load_tier

__all__ = ["BATCH_LIMIT", "Learned", "QuotaBook", "limits_from_table"]

BATCH_LIMIT = "batch_enqueued_tokens"
PROBE = "probe"
"""The in-flight cap of a model with no figures yet (a ``Concurrent`` limit)."""
SEEN = "seen"
"""Requests per minute counted (never limited) while a model has no request figure."""
SEEN_AMOUNT = 1_000_000_000
SERVED = "served"
"""The metric of :data:`SEEN`: 1 per call, settled to 0 when the server refused it (429)."""

Learned = Literal["adopted", "lowered", "higher", "same", "adapted", "known"]
"""What :meth:`QuotaBook.learn` did: adopted a figure the model lacked, lowered a higher one,
kept a lower configured one (the server's is ``higher``), nothing (``same``), set an adaptive
figure (``adapted``), or refused an adaptive one because a figure is ``known``."""


def limits_from_table(entry: ModelLimits, scale: TimeScale | None = None) -> tuple[Limit, ...]:
    """Gemini's dimensions of one tier-table entry as limits (absent figures: no limit)."""
    scale = scale or TimeScale()
    return tuple(
        gemini_limit(dim, amount, scale)
        for dim in GEMINI_DIMENSIONS
        if (amount := getattr(entry, dim)) is not None
    )


class QuotaBook:
    """Resolves a model name to its canonical name and its limits (headroom applied)."""

    def __init__(
        self,
        tier: str | TierTable | None,
        quotas: Mapping[str, Sequence[Limit]] | None,
        overrides: Mapping[str, Mapping[str, int]] | None,
        unknown_model: Sequence[Limit] | None,
        headroom: float,
        use_env: bool = True,
        scale: TimeScale | None = None,
        spend: SpendBook | None = None,
    ) -> None:
        if (
            isinstance(headroom, bool)
            or not isinstance(headroom, (int, float))
            or not 0.0 <= headroom < 1.0
        ):
            raise ConfigError(
                f"headroom={headroom!r}: give the fraction of each limit to keep free, "
                "0 <= headroom < 1 (e.g. 0.05)"
            )
        if tier is not None and not isinstance(tier, (str, TierTable)):
            raise ConfigError(
                f"tier={tier!r}: give a tier's name ('free', 'tier1', 'tier2', 'tier3'), a "
                "TierTable, or None to use only quotas=..."
            )
        if quotas is not None and not isinstance(quotas, Mapping):
            raise ConfigError(f"quotas={quotas!r}: give a dict of model name to a list of limits")
        for name, value in (quotas or {}).items():
            if (
                not isinstance(name, str)
                or isinstance(value, (Limit, str))
                or not isinstance(value, Iterable)
            ):
                raise ConfigError(
                    f"quotas[{name!r}]={value!r}: give a list of limits, e.g. [RPM(5), TPM(1000)]"
                )
        table: TierTable | None
        if tier is None:
            table = None
        elif isinstance(tier, TierTable):
            table = tier
        else:
            table = load_tier(tier)
        self.shipped = table  # before overrides: tells a table figure from an override
        if table is not None:
            if overrides:
                table = table.with_overrides(overrides)
            if use_env:
                table = table.with_env_overrides(os.environ)
        elif overrides:
            raise ConfigError("overrides=... needs a tier table: pass tier='free' (or another)")
        self.table = table
        self.spend = spend
        self.headroom = headroom
        self.scale = scale or TimeScale()
        checked = {self._plain(k): check_quota(v) for k, v in (quotas or {}).items()}
        # a limit named batch_enqueued_tokens is the model's Batch API figure, kept apart: it
        # holds the tokens of active batch jobs (the transports' batch scope), not of calls
        self.batch_quotas = {
            k: lim.amount for k, v in checked.items() for lim in v if lim.name == BATCH_LIMIT
        }
        self._quotas = {
            k: tuple(lim for lim in v if lim.name != BATCH_LIMIT) for k, v in checked.items()
        }
        if table is None and use_env:
            self._quotas = _env_quotas(self._quotas, os.environ)
        self._unknown = check_quota(unknown_model) if unknown_model is not None else None
        self._cache: dict[str, tuple[str, tuple[Limit, ...]]] = {}
        self._canonical: dict[str, tuple[str, tuple[Limit, ...]]] = {}
        self._calibrated: dict[str, dict[str, int]] = {}
        # per canonical model: what the server taught (or the adaptive rule set)
        self.figures: dict[str, dict[str, Figure]] = {}
        self.probe: int | None = None  # see LimiterCore(probe=...)
        self.probed: set[str] = set()  # models whose quiet first minute ended the probe
        self._origins: dict[str, dict[str, Origin]] = {}
        self.check_names = True

    @staticmethod
    def _plain(name: str) -> str:
        return name[len("models/") :] if name.startswith("models/") else name

    def _scale(self, limits: tuple[Limit, ...]) -> tuple[Limit, ...]:
        if not self.headroom:
            return limits
        return tuple(lim.scaled(1.0 - self.headroom) for lim in limits)

    def resolve(self, model: str) -> tuple[str, tuple[Limit, ...]]:
        """``(canonical name, limits)`` for ``model``; raises UnknownModelError."""
        hit = self._cache.get(model) if isinstance(model, str) else None
        if hit is not None:
            return hit
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"model={model!r}: give a model name such as 'gemini-2.5-flash'")
        if self.check_names and model != SPEND_SCOPE and not MODEL_NAME.match(model.strip()):
            raise ConfigError(
                f"model={model!r}: not a Gemini model name; give letters, digits, '.', '_' "
                "and '-' (e.g. 'gemini-2.5-flash', 'models/gemini-2.5-flash' or "
                "'tunedModels/my-model')"
            )
        plain = self._plain(model.strip())
        origins: dict[str, Origin]
        spend_limit = self.spend.limit() if self.spend is not None else None
        if plain == SPEND_SCOPE and plain not in self._quotas and spend_limit is not None:
            cal = self._calibrated.get(plain, {}).get(spend_limit.name)
            lim = self._scale((spend_limit,))[0]
            scope: tuple[str, tuple[Limit, ...]] = (
                plain,
                (lim if cal is None else lim.with_amount(cal),),
            )
            self._origins[plain] = {
                lim.name: Origin("override" if cal else "table", source="prices")
            }
            self._cache[model] = scope
            return scope
        if plain in self._quotas:
            canonical, raw = plain, self._quotas[plain]
            origins = {lim.name: Origin("configured") for lim in raw}
        else:
            try:
                if self.table is None:
                    raise UnknownModelError(model, self._close(plain))
                canonical, entry = self.table.resolve(model)
                raw = limits_from_table(entry, self.scale)
                origins = self._table_origins(canonical, entry)
            except UnknownModelError as exc:
                if self._unknown is None:
                    if self._quotas:
                        raise UnknownModelError(
                            model, self._close(plain) or exc.suggestions
                        ) from None
                    raise
                canonical, raw = plain, self._unknown
                origins = {lim.name: Origin("configured") for lim in raw}
        raw, origins = self._merge(canonical, raw, origins)
        if self.probe is not None and canonical not in self._quotas:
            extra: list[Limit] = []
            if not raw and canonical not in self.probed:
                # no figure anywhere yet: at most `probe` calls in flight until the server
                # names one (a 429) or a quiet minute passes, so that learning costs few 429s
                extra.append(
                    Limit(PROBE, self.probe, self.scale.minute_seconds, "requests", Concurrent())
                )
                origins = {**origins, PROBE: Origin("adaptive", source="probe")}
            rpm = origins.get("rpm")
            if rpm is None or rpm.kind == "adaptive":
                # no request figure the server named: count what the fleet was served, so that
                # a 429 naming no figure sets the adaptive rate from what the server let through
                extra.append(Limit(SEEN, SEEN_AMOUNT, self.scale.minute_seconds, SERVED))
                origins = {**origins, SEEN: Origin("adaptive", source="observer")}
            raw = raw + tuple(extra)
        if self.spend is not None and self.spend.priority:
            subs = self.spend.sub_limits(raw)
            for sub in subs:  # a sub-limit comes from its standard limit
                base = origins.get(sub.name.removesuffix(".priority"))
                origins[sub.name] = base if base is not None else Origin("configured")
            raw = raw + subs
        out = (canonical, self._scale(raw))
        first = self._canonical.setdefault(canonical, out)
        if first[1] == out[1]:
            out = first  # every spelling of a model shares one tuple of limits
        else:
            self._canonical[canonical] = out
        self._origins[canonical] = origins
        self._cache[model] = out
        return out

    def _table_origins(self, canonical: str, entry: ModelLimits) -> dict[str, Origin]:
        shipped: ModelLimits | None = None
        if self.shipped is not None and self.shipped is not self.table:
            try:
                shipped = self.shipped.resolve(canonical)[1]
            except UnknownModelError:
                shipped = None
        out: dict[str, Origin] = {}
        for dim in GEMINI_DIMENSIONS:
            value = getattr(entry, dim)
            if value is None:
                continue
            if self.shipped is not self.table and (
                shipped is None or getattr(shipped, dim) != value
            ):
                out[dim] = Origin("override")
            else:
                src: dict[str, str] = {str(k): v for k, v in entry.sources.items()}
                out[dim] = Origin("table", source=src.get(dim, entry.source or ""))
        return out

    def _merge(
        self, canonical: str, raw: tuple[Limit, ...], origins: dict[str, Origin]
    ) -> tuple[tuple[Limit, ...], dict[str, Origin]]:
        """The configured limits with what was set by hand and what the server taught."""
        calibrated = self._calibrated.get(canonical, {})
        figures = self.figures.get(canonical, {})
        if not calibrated and not figures:
            return raw, origins
        origins = dict(origins)
        out: list[Limit] = []
        for lim in raw:
            if lim.name in calibrated:
                lim = lim.with_amount(calibrated[lim.name])
                origins[lim.name] = Origin("override")
            fig = figures.get(lim.name)
            if fig is not None and fig.kind == "learned" and fig.amount < lim.amount:
                lim = lim.with_amount(fig.amount)
                origins[lim.name] = fig.origin
            out.append(lim)
        names = {lim.name for lim in raw}
        for dim in GEMINI_DIMENSIONS:
            fig = figures.get(dim)
            if fig is not None and dim not in names:
                out.append(gemini_limit(dim, fig.amount, self.scale))
                origins[dim] = fig.origin
        return tuple(out), origins

    def origins(self, model: str) -> dict[str, Origin]:
        """Per dimension of ``model``: where its figure came from."""
        canonical, _ = self.resolve(model)
        return dict(self._origins.get(canonical, {}))

    def _configured(self, canonical: str, name: str) -> int | None:
        """The configured (not learned) amount of a dimension before headroom, or ``None``."""
        if canonical in self._quotas:
            src: tuple[Limit, ...] = self._quotas[canonical]
        elif self.table is not None:
            try:
                src = limits_from_table(self.table.resolve(canonical)[1], self.scale)
            except UnknownModelError:
                src = self._unknown or ()
        else:
            src = self._unknown or ()
        amount = next((x.amount for x in src if x.name == name), None)
        if amount is None:
            return None
        return self._calibrated.get(canonical, {}).get(name, amount)

    def _forget(self, canonical: str) -> None:
        for key, value in list(self._cache.items()):
            if value[0] == canonical:
                del self._cache[key]
        self._canonical.pop(canonical, None)

    def learn(self, model: str, dimension: str, figure: Figure) -> tuple[Learned, int | None]:
        """Take what a 429 taught about ``dimension`` of ``model``: ``(what was done, the
        configured amount it was compared with)``."""
        canonical, _ = self.resolve(model)
        configured = self._configured(canonical, dimension)
        figures = self.figures.setdefault(canonical, {})
        held = figures.get(dimension)
        if figure.kind == "adaptive":
            if configured is not None or (held is not None and held.kind == "learned"):
                return "known", configured
            figures[dimension] = figure
            self._forget(canonical)
            return "adapted", held.amount if held is not None else None
        if held is not None and held.kind == "learned" and held.amount == figure.amount:
            return "same", configured
        if configured is not None and figure.amount >= configured:
            # the configured figure stays in force (a lower one taught before goes)
            figures[dimension] = figure
            self._forget(canonical)
            return ("same" if figure.amount == configured else "higher"), configured
        figures[dimension] = figure
        self._forget(canonical)
        return ("adopted" if configured is None else "lowered"), configured

    def end_probe(self, canonical: str) -> None:
        """A quiet first minute passed: the model has room; drop its in-flight cap."""
        self.probed.add(canonical)
        self._forget(canonical)

    def figure(self, model: str, dimension: str) -> Figure | None:
        """What the server taught about ``dimension`` of ``model``, if anything."""
        canonical, _ = self.resolve(model)
        return self.figures.get(canonical, {}).get(dimension)

    def merge_shared(self, canonical: str, shared: dict[str, Figure]) -> bool:
        """Take figures other processes learned (newer ones win); ``True`` if any changed."""
        mine = self.figures.setdefault(canonical, {})
        changed = False
        for dim, fig in shared.items():
            if dim not in GEMINI_DIMENSIONS:
                continue
            held = mine.get(dim)
            if held is not None and held.kind == "learned" and fig.kind == "adaptive":
                continue  # a figure the server named beats a guess
            if held is None or (held != fig and fig.at >= held.at):
                mine[dim] = fig
                changed = True
        if changed:
            self._forget(canonical)
        return changed

    def batch_limit(self, model: str) -> int | None:
        """The ``batch_enqueued_tokens`` figure of ``model`` (``quotas=`` first, then the tier
        table; headroom applied), or ``None``."""
        try:
            canonical, _ = self.resolve(model)
        except UnknownModelError:
            return None
        amount = self.batch_quotas.get(canonical)
        if amount is None and self.table is not None and canonical not in self._quotas:
            try:
                amount = self.table.resolve(model)[1].batch_enqueued_tokens
            except UnknownModelError:
                amount = None
        if amount is None:
            return None
        return max(1, int(amount * (1.0 - self.headroom))) if self.headroom else amount

    def _close(self, name: str) -> list[str]:
        import difflib

        return difflib.get_close_matches(name, list(self._quotas), n=3, cutoff=0.5)

    def set_limit(self, model: str, name: str, amount: int) -> Limit | None:
        """Change one limit's amount (self-calibration); returns the old limit."""
        canonical, limits = self.resolve(model)
        old = next((lim for lim in limits if lim.name == name), None)
        if old is None:
            return None
        # kept per canonical model, so that every spelling resolved later sees it too
        self._calibrated.setdefault(canonical, {})[name] = amount
        self._forget(canonical)
        return old


def _env_quotas(
    quotas: dict[str, tuple[Limit, ...]], environ: Mapping[str, str]
) -> dict[str, tuple[Limit, ...]]:
    """``quotas`` with the ``QUOTAFLOW_LIMITS`` figures applied: with no tier table, the
    variable changes the amounts of the limits given in ``quotas=...`` (a malformed value
    raises, as with a table)."""
    raw = environ.get(ENV_VAR, "").strip()
    if not raw:
        return quotas
    where = f"environment variable {ENV_VAR}"
    try:
        overrides = parse_env_value(raw)
    except KeyedProblem as exc:
        key = ".".join(str(k) for k in exc.key)
        raise ConfigError(
            f"{where}: {key + ': ' if key else ''}{exc}; write MODEL:KEY=VALUE entries "
            "separated by ';' (gemini-2.5-flash:rpm=5,tpm=1000) or a JSON object"
        ) from None
    out = dict(quotas)
    for model, fields in overrides.items():
        plain = model.removeprefix("models/")
        if plain not in out:
            continue  # as with a tier table: a model this limiter does not know
        limits = {lim.name: lim for lim in out[plain]}
        for name, amount in fields.items():
            if name not in limits:
                raise ConfigError(
                    f"{where}: {model}.{name}: the quota of {model!r} has no limit {name!r} "
                    f"({', '.join(sorted(limits))})"
                )
            if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                raise ConfigError(f"{where}: {model}.{name}={amount!r}: give a whole number >= 0")
            limits[name] = limits[name].with_amount(amount)
        out[plain] = tuple(limits.values())
    return out
