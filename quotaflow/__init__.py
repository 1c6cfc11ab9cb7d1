"""quotaflow: run many AI agents against Gemini without tripping its quotas or wasting them.

The public API; implementation modules are private or documented per module.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from quotaflow.backends.base import AsyncBackend, Backend
from quotaflow.backends.memory import MemoryBackend
from quotaflow.clock import Clock, ManualClock, SystemClock
from quotaflow.context import PRIORITIES, agent, deadline, priority
from quotaflow.errors import (
    BackendError,
    BillingError,
    CannotFitError,
    ConfigError,
    MalformedRequestError,
    PermitError,
    QuotaError,
    QuotaExhaustedError,
    QuotaflowError,
    QuotaTimeoutError,
    TierTableError,
    UnknownModelError,
    WouldBlockError,
)
from quotaflow.limiter import Limiter
from quotaflow.limits import (
    RPD,
    RPM,
    TPD,
    TPM,
    Calendar,
    Concurrent,
    Limit,
    Rolling,
    TokenBucket,
    fixed_windows,
    pacific_days,
)
from quotaflow.permit import Permit, SyncPermit
from quotaflow.quotas.pricing import PriceTable, Spend, load_prices
from quotaflow.quotas.shares import Share
from quotaflow.quotas.tiers import ModelLimits, TierTable, load_table, load_tier
from quotaflow.scheduler.core import DimensionStatus
from quotaflow.sync import SyncLimiter

try:
    __version__ = version("quotaflow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "PRIORITIES",
    "RPD",
    "RPM",
    "TPD",
    "TPM",
    "AsyncBackend",
    "Backend",
    "BackendError",
    "BillingError",
    "Calendar",
    "CannotFitError",
    "Clock",
    "Concurrent",
    "ConfigError",
    "DimensionStatus",
    "Limit",
    "Limiter",
    "MalformedRequestError",
    "ManualClock",
    "MemoryBackend",
    "ModelLimits",
    "Permit",
    "PermitError",
    "PriceTable",
    "QuotaError",
    "QuotaExhaustedError",
    "QuotaTimeoutError",
    "QuotaflowError",
    "Rolling",
    "Share",
    "Spend",
    "SyncLimiter",
    "SyncPermit",
    "SystemClock",
    "TierTable",
    "TierTableError",
    "TokenBucket",
    "UnknownModelError",
    "WouldBlockError",
    "__version__",
    "agent",
    "deadline",
    "fixed_windows",
    "load_prices",
    "load_table",
    "load_tier",
    "pacific_days",
    "priority",
]
