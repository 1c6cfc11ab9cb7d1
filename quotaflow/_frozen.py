"""The base of quotaflow's configuration models: immutable, and strict about their keys.

A model built on :class:`Frozen` refuses a key it does not declare (a typo is an error naming
the key, never a setting silently ignored) and cannot be changed once built.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Frozen"]


class Frozen(BaseModel):
    """A pydantic model with ``extra="forbid"`` and ``frozen=True``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
