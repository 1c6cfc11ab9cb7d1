"""The gateway configuration's error and its type checks (shared by the config modules)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from quotaflow.errors import ConfigError

__all__ = ["GatewayConfigError"]


class GatewayConfigError(ConfigError):
    """A gateway configuration that cannot be used; the message names the file, the key and
    the fix.

    Attributes:
        path: the file.
        key: the dotted key that is wrong (``gateway.port``), when one is known.
    """

    def __init__(self, message: str, *, path: str = "", key: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.key = key


def _check(
    table: Mapping[str, Any], allowed: Mapping[str, type], section: str, src: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        kind = allowed.get(key)
        where = f"{section}.{key}"
        if kind is None:
            raise GatewayConfigError(
                f"{src}: {where}: unknown key; use one of {', '.join(sorted(allowed))}",
                path=src,
                key=where,
            )
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        )
        if not ok:
            raise GatewayConfigError(
                f"{src}: {where}: give a {kind.__name__}, not {type(value).__name__} {value!r}",
                path=src,
                key=where,
            )
        if kind is float and not (math.isfinite(value) and (value > 0 or
                                  (value == 0 and key == "tokens_recheck"))):  # fmt: skip
            raise GatewayConfigError(
                f"{src}: {where}: give a positive number of seconds, not {value!r}",
                path=src,
                key=where,
            )
        out[key] = float(value) if kind is float else value
    return out
