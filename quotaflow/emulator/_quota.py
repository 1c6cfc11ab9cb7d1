"""Server-side quota metering per (project, model), the way Gemini meters it. Pure, no I/O.

Each model has up to four generate/embed dimensions (``rpm``, ``tpm``, ``rpd``, ``tpd``) and a
separate ``count_rpm`` for countTokens. A request is admitted only if every dimension still holds
after it; a rejected request costs nothing.

Quota names follow what Gemini's 429 bodies show (gemini-facts §1.6). Names marked UNCONFIRMED
below were never seen in a real body and follow the pattern of the confirmed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from ._config import EmulatorConfig, ModelConfig
from ._windows import FixedWindow, RollingWindow, Window, day_bounds, period_bounds

__all__ = ["DIMENSIONS", "QuotaLedger", "Violation", "quota_names"]

DIMENSIONS = ("rpm", "tpm", "rpd", "tpd", "count_rpm")
_DAILY = frozenset({"rpd", "tpd"})
_PREFIX = "generativelanguage.googleapis.com/"

_SUFFIX = {"free": "-FreeTier", "tier1": "", "tier2": "-PaidTier2", "tier3": "-PaidTier3"}
_METRIC_TIER = {
    "free": "free_tier",
    "tier1": "paid_tier",
    "tier2": "paid_tier_2",
    "tier3": "paid_tier_3",
}


def quota_names(tier: str, kind: str, dimension: str) -> tuple[str, str]:
    """Return ``(quotaMetric, quotaId)`` for a dimension of a model kind in a tier.

    Args:
        tier: ``free``, ``tier1``, ``tier2`` or ``tier3``.
        kind: ``generate`` or ``embed``.
        dimension: One of :data:`DIMENSIONS`.

    Example:
        >>> quota_names("free", "generate", "rpm")[1]
        'GenerateRequestsPerMinutePerProjectPerModel-FreeTier'
    """
    sfx, mt = _SUFFIX[tier], _METRIC_TIER[tier]
    free = tier == "free"
    if dimension == "count_rpm":
        # UNCONFIRMED: countTokens quota names were never seen in a 429 body.
        return _PREFIX + "count_tokens_requests", "CountTokensRequestsPerMinutePerProjectPerModel"
    per = "Day" if dimension in _DAILY else "Minute"
    if kind == "embed":
        # UNCONFIRMED quotaIds; metric names seen in Cloud Monitoring lists.
        if dimension in ("rpm", "rpd"):
            metric = f"embed_content_{mt}_requests"
            return _PREFIX + metric, f"EmbedContentRequestsPer{per}PerProjectPerModel{sfx}"
        metric = f"embed_content_{mt}_input_token_count"
        return _PREFIX + metric, f"EmbedContentInputTokensPerModelPer{per}{sfx}"
    if dimension in ("rpm", "rpd"):
        metric = f"generate_content_{mt}_requests"
        if dimension == "rpd" and tier == "tier1":
            metric = "generate_requests_per_model_per_day"  # seen in Cloud Monitoring
        # Confirmed for the free tier; paid tiers UNCONFIRMED (pattern).
        return _PREFIX + metric, f"GenerateRequestsPer{per}PerProjectPerModel{sfx}"
    metric = f"generate_content_{mt}_input_token_count"
    if free:
        return _PREFIX + metric, f"GenerateContentInputTokensPerModelPer{per}-FreeTier"
    # Per-minute confirmed for tier1/tier2; per-day and tier3 UNCONFIRMED (pattern).
    return _PREFIX + metric, f"GenerateContentPaidTierInputTokensPerModelPer{per}{sfx}"


@dataclass(frozen=True)
class Violation:
    """One violated dimension of one request.

    Attributes:
        dimension: ``rpm``, ``tpm``, ``rpd``, ``tpd`` or ``count_rpm``.
        limit: The configured limit (``quotaValue``).
        quota_metric: Full metric name, e.g. ``generativelanguage.googleapis.com/...``.
        quota_id: Quota id, e.g. ``GenerateRequestsPerMinutePerProjectPerModel-FreeTier``.
        retry_after: Seconds until this dimension would admit the request; if it never would
            (the request alone exceeds the limit), the time until the window is fresh.
        satisfiable: False if the request alone exceeds the limit.
    """

    dimension: str
    limit: int | float
    quota_metric: str
    quota_id: str
    retry_after: float
    satisfiable: bool = True


class QuotaLedger:
    """All quota windows of an emulator.

    Args:
        config: The emulator configuration (tier, period, window kind, day).
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._period = period_bounds(config.minute_seconds)
        self._day = day_bounds(ZoneInfo(config.timezone), config.day_seconds)
        self._windows: dict[tuple[str, str, str], Window] = {}

    def reset(self) -> None:
        """Forget every admission."""
        self._windows.clear()

    def _window(self, project: str, model: str, dimension: str) -> Window:
        key = (project, model, dimension)
        window = self._windows.get(key)
        if window is None:
            if dimension in _DAILY:
                window = FixedWindow(self._day)
            elif self._config.window == "fixed":
                window = FixedWindow(self._period)
            else:
                window = RollingWindow(self._config.minute_seconds)
            self._windows[key] = window
        return window

    def _fresh_in(self, dimension: str, now: float) -> float:
        bounds = self._day if dimension in _DAILY else self._period
        if dimension in _DAILY or self._config.window == "fixed":
            return bounds(now)[1] - now
        return self._config.minute_seconds

    def try_admit(
        self, project: str, model: ModelConfig, *, requests: int, tokens: int, now: float
    ) -> list[Violation]:
        """Admit and charge a generate/embed request, or list what it violates.

        Args:
            project: Project the key belongs to.
            model: The model whose quota is charged.
            requests: Request cost (1, or N for a batch of N embeddings).
            tokens: Input tokens.
            now: Current time, epoch seconds.

        Returns:
            An empty list if admitted (and charged); else one violation per violated dimension.
        """
        costs = {"rpm": requests, "tpm": tokens, "rpd": requests, "tpd": tokens}
        limits = {"rpm": model.rpm, "tpm": model.tpm, "rpd": model.rpd, "tpd": model.tpd}
        return self._admit(project, model, costs, limits, now)

    def try_admit_count(self, project: str, model: ModelConfig, *, now: float) -> list[Violation]:
        """Admit and charge a countTokens request against ``count_rpm`` only."""
        return self._admit(project, model, {"count_rpm": 1}, {"count_rpm": model.count_rpm}, now)

    def _admit(
        self,
        project: str,
        model: ModelConfig,
        costs: dict[str, int],
        limits: dict[str, int | None],
        now: float,
    ) -> list[Violation]:
        violations: list[Violation] = []
        for dim, limit in limits.items():
            if limit is None:
                continue
            wait = self._window(project, model.name, dim).wait(now, costs[dim], limit)
            if wait == 0.0:
                continue
            metric, qid = quota_names(self._config.tier, model.kind, dim)
            violations.append(
                Violation(
                    dimension=dim,
                    limit=limit,
                    quota_metric=metric,
                    quota_id=qid,
                    retry_after=self._fresh_in(dim, now) if wait is None else wait,
                    satisfiable=wait is not None,
                )
            )
        if not violations:
            for dim, limit in limits.items():
                if limit is not None:
                    self._window(project, model.name, dim).add(now, costs[dim])
        return violations
