"""Fixtures for the agents tests: one served emulator per module (reset per test), a request
log of the emulator, and a list-backed audit log. ``anyio_backend`` comes from
``tests/conftest.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agents_helpers import EmulatorRequests, Records, emulator_config

from quotaflow.emulator import ServedEmulator, serve


@pytest.fixture(scope="module")
def module_served() -> Iterator[ServedEmulator]:
    with serve(emulator_config()) as served:
        yield served


@pytest.fixture
def served(module_served: ServedEmulator) -> ServedEmulator:
    module_served.emulator.reset()
    return module_served


@pytest.fixture
def requests_seen() -> Iterator[EmulatorRequests]:
    with EmulatorRequests().attached() as seen:
        yield seen


@pytest.fixture
def records() -> Iterator[Records]:
    r = Records()
    yield r
    r.log.close()
