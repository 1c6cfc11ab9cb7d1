"""Which HTTP package google-genai drives its clients with (``httpx`` or ``httpx2``).

The SDK has no public way to tell; :func:`genai_http_package` is the one place quotaflow asks
its private picker, ``google.genai._api_client._get_http_client_backend``. It takes the
``HttpOptions`` in google-genai 3.x (the transports they hold decide, unless
``GOOGLE_GENAI_HTTP_CLIENT`` says otherwise) and no argument in 2.x (only the variable decides,
else ``httpx``); before it existed the SDK used ``httpx`` only. ``pyproject.toml`` bounds
google-genai below the next major release, which may change it again.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from quotaflow.errors import ConfigError

__all__ = [
    "check_genai_http_package",
    "genai_http_package",
    "make_http_options",
    "split_options",
]


def genai_http_package(http_options: Any = None) -> str:
    """``"httpx"`` or ``"httpx2"``: the package google-genai uses for a client made with
    ``http_options`` (``None``: by itself, from the environment and what is installed)."""
    try:
        from google.genai import _api_client
    except ImportError:
        return "httpx"
    pick = getattr(_api_client, "_get_http_client_backend", None)
    if pick is None:  # an SDK without httpx2 support
        return "httpx"
    try:
        takes_options = bool(inspect.signature(pick).parameters)
    except (TypeError, ValueError):
        takes_options = False
    try:
        picked = pick(http_options) if takes_options else pick()
    except ImportError:
        # GOOGLE_GENAI_HTTP_CLIENT names a package that is not installed: the SDK raises its
        # own error when the client is made
        return "httpx"
    return "httpx2" if picked == "httpx2" else "httpx"


def check_genai_http_package(http_options: Any, built_for: str) -> None:
    """Fail at once if google-genai would drive transports built for ``built_for`` with the
    other HTTP package.

    ``GOOGLE_GENAI_HTTP_CLIENT`` overrides what the SDK detects from the transports; an httpx
    client then sends through an httpx2 transport (or the reverse), which fails only after the
    request has reached the server, with an ``AssertionError`` deep in the HTTP package.

    Raises:
        ConfigError: naming the variable and what to pass instead.
    """
    picked = genai_http_package(http_options)
    if picked != built_for:
        raise ConfigError(
            f"google-genai will use {picked} (GOOGLE_GENAI_HTTP_CLIENT="
            f"{os.environ.get('GOOGLE_GENAI_HTTP_CLIENT')!r}), but the quota transports were "
            f"built for {built_for}, which a {picked} client cannot drive: pass "
            f"backend='auto' (or backend={picked!r}), or unset GOOGLE_GENAI_HTTP_CLIENT"
        )


# HttpOptions fields quotaflow cannot merge, and what to do instead
_REFUSED = {
    "retry_options": (
        "the quota transports retry 429s (after the server's retryDelay) and transient failures "
        "themselves, and the SDK's retries would stack on theirs: drop retry_options= and set "
        "max_429_retries=, max_5xx_retries= or backoff= instead"
    ),
    "httpx_client": (
        "a client of your own would send past the quota transports: drop httpx_client= and pass "
        "its settings as client_args= (everything but transport=)"
    ),
    "httpx_async_client": (
        "a client of your own would send past the quota transports: drop httpx_async_client= "
        "and pass its settings as async_client_args= (everything but transport=)"
    ),
    "aiohttp_client": (
        "an aiohttp client would send past the quota transports: drop aiohttp_client= (the "
        "async client goes through an httpx transport)"
    ),
}


def split_options(options: dict[str, Any], transport_options: Any) -> dict[str, Any]:
    """Take google-genai's own ``HttpOptions`` fields out of ``options`` (what is left are the
    transports' options); returns them, to merge into the ``HttpOptions`` made.

    Raises:
        ConfigError: a field that cannot be merged (``retry_options``, a client of the
            caller's own, a ``transport`` in ``client_args``), or an option that is neither
            the SDK's nor the transports' (``transport_options``: their names).
    """
    from google.genai import types

    fields = set(types.HttpOptions.model_fields)
    sdk: dict[str, Any] = {}
    for name in [n for n in options if n in fields]:
        if name in _REFUSED:
            raise ConfigError(f"{name}=: {_REFUSED[name]}")
        value = options.pop(name)
        if name in ("client_args", "async_client_args") and value is not None:
            value = dict(value)
            if "transport" in value:
                raise ConfigError(
                    f"{name}={{'transport': ...}}: the quota transports take that place; wrap "
                    "yours instead: QuotaTransport(limiter, transport=yours) in HttpOptions("
                    f"{name}={{'transport': ...}}) made by hand"
                )
        if value is not None:
            sdk[name] = value
    unknown = sorted(set(options) - set(transport_options))
    if unknown:
        takes = ", ".join(sorted(transport_options))
        raise ConfigError(
            f"{', '.join(unknown)}: not an option of the quota transports nor a field of "
            f"google-genai's HttpOptions; the transports take {takes}"
        )
    return sdk


def make_http_options(async_t: Any, sync_t: Any, sdk: dict[str, Any], built_for: str) -> Any:
    """``HttpOptions`` whose clients send through ``async_t`` and ``sync_t``, with the SDK's
    own fields ``sdk`` merged (``client_args``: the transport is added to the caller's), checked
    with :func:`check_genai_http_package`."""
    from google.genai import types

    kw = dict(sdk)
    kw["async_client_args"] = {**kw.get("async_client_args", {}), "transport": async_t}
    kw["client_args"] = {**kw.get("client_args", {}), "transport": sync_t}
    if "headers" in kw:
        kw["headers"] = dict(kw["headers"])
    http_options = types.HttpOptions(**kw)
    check_genai_http_package(http_options, built_for)
    return http_options
