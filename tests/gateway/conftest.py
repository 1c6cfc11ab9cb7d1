"""Fixtures for the gateway tests: one emulator per module (reset per test) that knows only
the real key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_helpers import FLASH, KEY, PERIOD, PRO

from quotaflow.emulator import (
    ApiKeyConfig,
    EmulatorConfig,
    ModelConfig,
    ServedEmulator,
    serve,
)


def emulator_config(rpm: int = 600, **kw: object) -> EmulatorConfig:
    return EmulatorConfig(
        keys=[ApiKeyConfig(key=KEY, project="proj")],
        minute_seconds=PERIOD,
        models=[
            ModelConfig(name=FLASH, rpm=rpm, tpm=1_000_000, rpd=100_000),
            ModelConfig(name=PRO, rpm=rpm, tpm=1_000_000, rpd=100_000),
            ModelConfig(
                name="gemini-embedding-001", kind="embed", rpm=rpm, tpm=1_000_000, rpd=100_000
            ),
        ],
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def module_served() -> Iterator[ServedEmulator]:
    with serve(emulator_config()) as served:
        yield served


@pytest.fixture
def emulator(module_served: ServedEmulator) -> ServedEmulator:
    module_served.emulator.reset()
    return module_served
