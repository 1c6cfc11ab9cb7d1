"""Fixtures for the gateway tests: one emulator per module (reset per test) that knows only
the real key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_helpers import emulator_config

from quotaflow.emulator import ServedEmulator, serve


@pytest.fixture(scope="module")
def module_served() -> Iterator[ServedEmulator]:
    with serve(emulator_config()) as served:
        yield served


@pytest.fixture
def emulator(module_served: ServedEmulator) -> ServedEmulator:
    module_served.emulator.reset()
    return module_served
