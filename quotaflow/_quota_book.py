"""Model names to limits: the tier table, the user's quotas and overrides, headroom and the
limits calibrated from 429s, per canonical model."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from quotaflow.errors import ConfigError, UnknownModelError
from quotaflow.limits import RPD, RPM, TPD, TPM, Limit, check_quota
from quotaflow.tiers import ModelLimits, TierTable, load_tier

__all__ = ["QuotaBook", "limits_from_table"]


def limits_from_table(entry: ModelLimits) -> tuple[Limit, ...]:
    """Gemini's dimensions of one tier-table entry as limits (absent figures: no limit)."""
    out: list[Limit] = []
    if entry.rpm is not None:
        out.append(RPM(entry.rpm))
    if entry.tpm is not None:
        out.append(TPM(entry.tpm))
    if entry.rpd is not None:
        out.append(RPD(entry.rpd))
    if entry.tpd is not None:
        out.append(TPD(entry.tpd))
    return tuple(out)


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
    ) -> None:
        if not 0.0 <= headroom < 1.0:
            raise ConfigError(
                f"headroom={headroom!r}: give the fraction of each limit to keep free, "
                "0 <= headroom < 1 (e.g. 0.05)"
            )
        table: TierTable | None
        if tier is None:
            table = None
        elif isinstance(tier, TierTable):
            table = tier
        else:
            table = load_tier(tier)
        if table is not None:
            if overrides:
                table = table.with_overrides(overrides)
            if use_env:
                table = table.with_env_overrides(os.environ)
        elif overrides:
            raise ConfigError("overrides=... needs a tier table: pass tier='free' (or another)")
        self.table = table
        self.headroom = headroom
        self._quotas = {self._plain(k): check_quota(v) for k, v in (quotas or {}).items()}
        self._unknown = check_quota(unknown_model) if unknown_model is not None else None
        self._cache: dict[str, tuple[str, tuple[Limit, ...]]] = {}
        self._canonical: dict[str, tuple[str, tuple[Limit, ...]]] = {}
        self._calibrated: dict[str, dict[str, int]] = {}

    @staticmethod
    def _plain(name: str) -> str:
        return name[len("models/") :] if name.startswith("models/") else name

    def _scale(self, limits: tuple[Limit, ...]) -> tuple[Limit, ...]:
        if not self.headroom:
            return limits
        return tuple(lim.scaled(1.0 - self.headroom) for lim in limits)

    def resolve(self, model: str) -> tuple[str, tuple[Limit, ...]]:
        """``(canonical name, limits)`` for ``model``; raises UnknownModelError."""
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"model={model!r}: give a model name such as 'gemini-2.5-flash'")
        hit = self._cache.get(model)
        if hit is not None:
            return hit
        plain = self._plain(model.strip())
        if plain in self._quotas:
            out = (plain, self._scale(self._quotas[plain]))
        else:
            try:
                if self.table is None:
                    raise UnknownModelError(model, self._close(plain))
                canonical, entry = self.table.resolve(model)
                out = (canonical, self._scale(limits_from_table(entry)))
            except UnknownModelError as exc:
                if self._unknown is None:
                    if self._quotas:
                        raise UnknownModelError(
                            model, self._close(plain) or exc.suggestions
                        ) from None
                    raise
                out = (plain, self._scale(self._unknown))
        canonical = out[0]
        first = self._canonical.setdefault(canonical, out)
        if first[1] == out[1]:
            out = first  # every spelling of a model shares one tuple of limits
        calibrated = self._calibrated.get(canonical)
        if calibrated:
            out = (
                canonical,
                tuple(
                    lim.with_amount(calibrated[lim.name]) if lim.name in calibrated else lim
                    for lim in out[1]
                ),
            )
        self._cache[model] = out
        return out

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
        for key, value in list(self._cache.items()):
            if value[0] == canonical:
                del self._cache[key]
        return old
