"""Helpers shared by the agents tests: an emulator config, a policy, an emulator request log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from quotaflow import RPD, RPM, TPM, Limit, Limiter
from quotaflow.agents import Agents, AuditLog, AuditRecord, CallbackSink, Policy
from quotaflow.emulator import ApiKeyConfig, EmulatorConfig, ModelConfig

KEY = "AIzaSyA1234567890abcdefghijklmnopqrstuv"  # shaped like a real key; searched for
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
EMBED = "gemini-embedding-001"
PERIOD = 1.0


def emulator_config(rpm: int = 600, **kw: Any) -> EmulatorConfig:
    """Generous limits on a 1 s period, our key, instant batches and tuning."""
    return EmulatorConfig(
        keys=[ApiKeyConfig(key=KEY, project="proj")],
        minute_seconds=PERIOD,
        models=[
            ModelConfig(name=FLASH, rpm=rpm, tpm=1_000_000, rpd=100_000),
            ModelConfig(name=PRO, rpm=rpm, tpm=1_000_000, rpd=100_000),
            ModelConfig(name=EMBED, kind="embed", rpm=rpm, tpm=1_000_000, rpd=100_000),
        ],
        cache_min_tokens=0,
        batch_delay_seconds=0.0,
        tuning_delay_seconds=0.0,
        **kw,
    )


def quotas(rpm: int = 600) -> dict[str, list[Limit]]:
    q = [RPM(rpm, PERIOD), TPM(1_000_000, PERIOD), RPD(100_000)]
    return {FLASH: q, PRO: q, EMBED: q}


def limiter(policy: Policy | dict[str, Any], rpm: int = 600, **kw: Any) -> Agents:
    """The agents layer of a limiter on :func:`quotas` (``.limiter`` is the limiter)."""
    p = policy if isinstance(policy, Policy) else Policy.from_dict(policy)
    return Agents(Limiter(None, quotas=quotas(rpm), **kw), p)


class Records:
    """An audit log whose records land in a list."""

    def __init__(self) -> None:
        self.items: list[AuditRecord] = []
        self.log = AuditLog([CallbackSink(self.items.append)])

    def flushed(self) -> list[AuditRecord]:
        self.log.flush()
        return list(self.items)


class EmulatorRequests(logging.Handler):
    """The request lines the emulator logs (``METHOD /path -> status``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def clear(self) -> None:
        self.lines.clear()

    @contextmanager
    def attached(self) -> Iterator[EmulatorRequests]:
        logger = logging.getLogger("quotaflow.emulator")
        old = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(old)
