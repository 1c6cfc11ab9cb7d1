"""The quotaflow gateway: a separate process that alone holds the Gemini key.

Agents point google-genai's ``base_url`` (or the OpenAI SDK's) at it and use their own agent
token as the API key; every call goes through quotaflow's agent transports (grants, budgets,
shares, scheduling, settlement, audit) and upstream with the real key. Run it with
``quotaflow gateway --config gateway.toml``; see ``docs/gateway.md``.

Needs the ``gateway`` extra (starlette, uvicorn).
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    if exc.name not in ("starlette", "uvicorn"):
        raise
    raise ImportError(
        f"quotaflow.gateway needs the 'gateway' extra ({exc.name} is missing): "
        "pip install 'quotaflow[gateway]'",
        name=exc.name,
    ) from exc

from quotaflow.gateway._app import Gateway
from quotaflow.gateway._config import (
    GatewayConfig,
    GatewayConfigError,
    gateway_config_from_dict,
    load_gateway_config,
)
from quotaflow.gateway._serve import ServedGateway, run
from quotaflow.gateway._tokens import TokenEntry, TokenFile, TokenStore, hash_token, new_token

__all__ = [
    "Gateway",
    "GatewayConfig",
    "GatewayConfigError",
    "ServedGateway",
    "TokenEntry",
    "TokenFile",
    "TokenStore",
    "gateway_config_from_dict",
    "hash_token",
    "load_gateway_config",
    "new_token",
    "run",
]
