"""Helpers shared by the emulator tests (imported by the test modules and conftest)."""

from __future__ import annotations

from typing import Any

from quotaflow.emulator import EmulatorConfig, ModelConfig

KEY = "test-key"
# 2026-03-02 12:00:00 PST, a quiet Monday far from any DST change.
T0 = 1_772_481_600.0


class TickClock:
    """Manual clock: a callable returning a settable epoch time."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def small_config(**overrides: Any) -> EmulatorConfig:
    """Tiny limits: flash 3 rpm / 100 tpm / 10 rpd, embed 5 rpm; a 1 s period."""
    base: dict[str, Any] = {
        "minute_seconds": 1.0,
        "keys": [
            {"key": KEY, "project": "proj-a"},
            {"key": "second-key", "project": "proj-a"},
            {"key": "other-key", "project": "proj-b"},
            {"key": "blocked-key", "project": "proj-c", "blocked": True},
        ],
        "models": [
            ModelConfig(
                name="gemini-2.5-flash", rpm=3, tpm=100, rpd=10, count_rpm=4, input_token_limit=500
            ),
            ModelConfig(name="gemini-2.5-pro"),
            ModelConfig(name="gemini-embedding-001", kind="embed", rpm=5, tpm=1000, rpd=100),
        ],
        "cache_min_tokens": 0,
        "batch_delay_seconds": 0.0,
        "tuning_delay_seconds": 0.0,
    }
    base.update(overrides)
    return EmulatorConfig.model_validate(base)


def gen_body(text: str = "hello") -> dict[str, Any]:
    """A minimal GenerateContentRequest."""
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}
