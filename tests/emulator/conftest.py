"""Fixtures for the emulator tests: a manual clock and served emulators.

The ``anyio_backend`` fixture (asyncio and trio) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from emulator_helpers import KEY, TickClock, small_config

from quotaflow.emulator import EmulatorConfig, ServedEmulator, serve


@pytest.fixture
def clock() -> TickClock:
    return TickClock()


@pytest.fixture
def start() -> Iterator[Callable[..., ServedEmulator]]:
    """Factory: serve an emulator (small config + overrides) on a free loopback port."""
    running: list[ServedEmulator] = []

    def factory(config: EmulatorConfig | None = None, clock: Any = None) -> ServedEmulator:
        served = serve(config or small_config(), clock=clock).start()
        running.append(served)
        return served

    yield factory
    for served in running:
        served.stop()


@pytest.fixture
def served(start: Callable[..., ServedEmulator], clock: TickClock) -> ServedEmulator:
    """A served small-config emulator driven by ``clock``."""
    return start(small_config(), clock)


@pytest.fixture
def http(served: ServedEmulator) -> Iterator[httpx.Client]:
    """Raw httpx client (with the key) on ``served``."""
    with httpx.Client(base_url=served.base_url, headers={"x-goog-api-key": KEY}) as client:
        yield client
