"""Spend in the emulator: prepaid balances (402 when empty), the rolling spend cap per project
(429 naming a spend quotaId), and the Priority sub-limit with its downgrade. Pure, no I/O."""

from __future__ import annotations

import math
from typing import Any

from quotaflow.emulator._config import EmulatorConfig, ModelConfig
from quotaflow.emulator._errors import ErrorReply
from quotaflow.emulator._windows import RollingWindow

__all__ = ["SPEND_QUOTA_ID", "SPEND_QUOTA_METRIC", "SpendLedger", "billing_error"]

SPEND_QUOTA_ID = "GenerateContentSpendPerTenMinutesPerBillingAccount"
SPEND_QUOTA_METRIC = "generativelanguage.googleapis.com/spend_per_ten_minutes"

_DEPLETED = (
    "Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects "
    "to manage your project and billing."
)


def billing_error() -> ErrorReply:
    """402 with the message users report (dyad-sh/dyad#3626); the ``status`` is a guess."""
    return ErrorReply(
        402, {"error": {"code": 402, "message": _DEPLETED, "status": "FAILED_PRECONDITION"}}
    )


class SpendLedger:
    """Balances, the spend windows and the Priority windows of an emulator."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget spend and restore the configured balances."""
        self.balances = {p: round(usd * 1_000_000) for p, usd in self.config.balances.items()}
        self._spend: dict[str, RollingWindow] = {}
        self._priority: dict[tuple[str, str, str], RollingWindow] = {}
        self.spent: dict[str, int] = {}
        self._charges: dict[str, list[tuple[float, int]]] = {}

    def _window(self, project: str) -> RollingWindow:
        w = self._spend.get(project)
        if w is None:
            w = self._spend[project] = RollingWindow(self.config.spend_window)
        return w

    def multiplier(self, tier: str | None) -> float:
        """The price multiplier of a served tier."""
        if tier == "priority":
            return self.config.priority_multiplier
        if tier == "flex":
            return self.config.flex_multiplier
        return 1.0

    def check(
        self, project: str, model: ModelConfig, tier: str | None, input_micros: float, now: float
    ) -> tuple[float, int, int] | None:
        """``None`` if the request may spend, else ``(retry_after, used, cap)`` of the cap.

        Raises:
            ErrorReply: 402 when the project's prepaid balance is spent.
        """
        balance = self.balances.get(project)
        if balance is not None and balance <= 0:
            raise billing_error()
        cap_usd = self.config.spend_cap_usd
        if cap_usd is None:
            return None
        cap = round(cap_usd * 1_000_000)
        w = self._window(project)
        need = math.ceil(input_micros * self.multiplier(tier) - 1e-9)
        wait = w.wait(now, need, cap)
        if wait is None or wait > 0:
            retry = self.config.spend_window if wait is None else wait
            return retry, w.usage(now), cap
        return None

    def served(
        self, project: str, model: ModelConfig, tier: str | None, tokens: int, now: float
    ) -> str | None:
        """The tier a request is served at: a Priority request over its sub-limit (a fraction
        of the model's rpm and tpm) is served at Standard; the others as asked."""
        if tier != "priority":
            return tier
        f = self.config.priority_fraction
        for dim, amount, limit in (("rpm", 1, model.rpm), ("tpm", tokens, model.tpm)):
            if limit is None:
                continue
            w = self._priority_window(project, model.name, dim)
            if w.usage(now) + amount > max(1, math.floor(limit * f)):
                return "standard"
        return "priority"

    def _priority_window(self, project: str, model: str, dim: str) -> RollingWindow:
        key = (project, model, dim)
        w = self._priority.get(key)
        if w is None:
            w = self._priority[key] = RollingWindow(self.config.minute_seconds)
        return w

    def charge(
        self,
        project: str,
        model: ModelConfig,
        served: str | None,
        micros: float,
        tokens: int,
        now: float,
    ) -> int:
        """Record what an answered request cost (at its served tier); returns the micro-dollars."""
        cost = math.ceil(micros * self.multiplier(served) - 1e-9)
        self._window(project).add(now, cost)
        self.spent[project] = self.spent.get(project, 0) + cost
        self._charges.setdefault(project, []).append((now, cost))
        if project in self.balances:
            self.balances[project] -= cost
        if served == "priority":
            self._priority_window(project, model.name, "rpm").add(now, 1)
            self._priority_window(project, model.name, "tpm").add(now, tokens)
        return cost

    def snapshot(self, include_log: bool = False) -> dict[str, dict[str, Any]]:
        """Spend per project: charged, balance left, the most in any rolling spend window, and
        (``include_log``) every charge as ``[time, micros]``."""
        out: dict[str, dict[str, Any]] = {}
        period = self.config.spend_window
        for project in sorted(set(self.spent) | set(self.balances)):
            charges = self._charges.get(project, [])
            best = total = 0
            start = 0
            for at, cost in charges:  # windows (at - period, at], exact (times are sorted)
                total += cost
                while charges[start][0] <= at - period:
                    total -= charges[start][1]
                    start += 1
                best = max(best, total)
            entry: dict[str, Any] = {
                "spent_micros": self.spent.get(project, 0),
                "max_window_micros": best,
            }
            if project in self.balances:
                entry["balance_micros"] = self.balances[project]
            if include_log:
                entry["log"] = [[at, cost] for at, cost in charges]
            out[project] = entry
        return out
