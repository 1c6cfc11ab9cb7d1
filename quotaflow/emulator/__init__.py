"""A local Gemini Developer API emulator with Gemini's quotas, for offline tests.

Serve it and point google-genai (or the OpenAI SDK) at it::

    from quotaflow.emulator import EmulatorConfig, ModelConfig, serve

    config = EmulatorConfig(models=[ModelConfig(name="gemini-2.5-flash", rpm=5, tpm=10_000)])
    with serve(config) as served:
        ...  # base_url=served.base_url; served.emulator.stats()

Needs the ``emulator`` extra (starlette, uvicorn).
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    if exc.name not in ("starlette", "uvicorn"):
        raise  # something else is broken: its own error names it
    raise ImportError(
        f"quotaflow.emulator needs the 'emulator' extra ({exc.name} is missing): "
        "pip install 'quotaflow[emulator]'",
        name=exc.name,
    ) from exc

from ._app import Emulator
from ._config import (
    ApiKeyConfig,
    EmulatorConfig,
    EmulatorConfigError,
    FaultConfig,
    ModelConfig,
    OAuthClientConfig,
    WebhookConfig,
    default_models,
    load_config,
)
from ._faults import Injection
from ._quota import quota_names
from ._serve import ServedEmulator, serve

__all__ = [
    "ApiKeyConfig",
    "Emulator",
    "EmulatorConfig",
    "EmulatorConfigError",
    "FaultConfig",
    "Injection",
    "ModelConfig",
    "OAuthClientConfig",
    "ServedEmulator",
    "WebhookConfig",
    "default_models",
    "load_config",
    "quota_names",
    "serve",
]
