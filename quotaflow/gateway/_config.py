"""The gateway's configuration file: the server, the limiter, the key's source, the policy.

Example ``gateway.toml``::

    [gateway]
    host = "127.0.0.1"
    port = 8080
    upstream = "https://generativelanguage.googleapis.com"
    key_env = "GEMINI_API_KEY"              # or key_file = "/run/secrets/gemini-key"
    tokens_file = "gateway-tokens.toml"     # token hashes, relative to this file

    [upstream]                              # optional: OAuth instead of (or beside) the key
    credentials = "oauth"                   # "key" (default), "oauth" or "key+oauth"
    credentials_file = "/run/secrets/gemini-sa.json"  # or application default credentials
    quota_project = "my-project"            # sent as x-goog-user-project

    [limiter]
    tier = "tier1"
    backend = "redis://localhost:6379/0?namespace=gateway&on_error=raise"

    [agents.researcher.grants]              # the policy, in quotaflow's policy format
    content = { access = "write", models = ["gemini-2.5-flash*"] }
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quotaflow.agents.policy import Policy, load_policy
from quotaflow.gateway._auth_config import UpstreamAuthConfig, upstream_auth_config
from quotaflow.gateway._checks import GatewayConfigError, _check

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["GatewayConfig", "GatewayConfigError", "UpstreamAuthConfig", "load_gateway_config"]


_GATEWAY_KEYS = {
    "host": str,
    "port": int,
    "upstream": str,
    "key_env": str,
    "key_file": str,
    "tokens_file": str,
    "tokens_recheck": float,
    "policy": str,
    "public_url": str,
    "request_timeout": float,
    "connect_timeout": float,
    "max_body_bytes": int,
    "max_upload_bytes": int,
    "shutdown_timeout": float,
    "access_log": bool,
    "server": str,
    "live_max_per_agent": int,
    "live_max_per_model": int,
    "webhook_path": str,
    "webhook_secret_env": str,
    "webhook_secret_file": str,
}
_LIMITER_KEYS = {
    "tier": str,
    "backend": str,
    "project": str,
    "minute_seconds": float,
    "headroom": float,
    "overrides": dict,
    "learned_cache": str,
    "spend": bool,
}
_TRANSPORT_KEYS = {
    "sizing": str,
    "max_429_retries": int,
    "max_5xx_retries": int,
    "backoff": float,
    "max_backoff": float,
}
_POLICY_KEYS = ("agents", "default", "audit")


@dataclass(frozen=True)
class GatewayConfig:
    """A validated gateway configuration (see the module docstring for the file).

    The upstream key is never held here: :meth:`read_key` reads it from ``key_env`` or
    ``key_file`` when the gateway starts.

    Attributes:
        path: the configuration file (``None``: built in code).
        host, port: where the gateway listens.
        upstream: Gemini's base URL (or the emulator's).
        key_env, key_file: where the real key is read from (the file wins when both are set).
        tokens_file: the agent tokens' hashes (``quotaflow gateway token create`` writes it).
        tokens_recheck: seconds between two checks of the tokens file for changes: a created,
            rotated or revoked token takes effect within this time (0: checked per request).
        public_url: the URL agents reach the gateway at, for the upload URLs it hands out
            (default: the URL each request came to).
        request_timeout: seconds a call may take until its response starts (quota wait
            included), and between two chunks of a response.
        connect_timeout: seconds to connect upstream.
        max_body_bytes: the largest request body (uploads: ``max_upload_bytes``).
        shutdown_timeout: seconds in-flight calls get to finish on shutdown.
        access_log: write one JSON line per request to the ``quotaflow.gateway.access`` logger.
        server: ``"uvicorn"`` (the one server supported).
        live_max_per_agent, live_max_per_model: concurrent Live API sessions allowed per agent
            and per model, across the replicas on one backend.
        webhook_path: the route Gemini's batch webhooks are posted to (served only when a
            signing secret is configured).
        webhook_secret_env, webhook_secret_file: where the webhook's signing secret is read
            from (``whsec_...``; the file wins when both are set; neither: no webhook route).
        limiter: keyword arguments of :class:`quotaflow.Limiter` (``tier``, ``backend``, ...).
        transport: quota transport options (``max_429_retries``, ...).
        upstream_auth: the upstream credentials (``[upstream]``).
        policy: the agents' policy.
    """

    policy: Policy
    path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str = "https://generativelanguage.googleapis.com"
    key_env: str = "GEMINI_API_KEY"
    key_file: str | None = None
    tokens_file: Path = Path("gateway-tokens.toml")
    tokens_recheck: float = 1.0
    public_url: str | None = None
    request_timeout: float = 600.0
    connect_timeout: float = 10.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    shutdown_timeout: float = 30.0
    access_log: bool = True
    server: str = "uvicorn"
    live_max_per_agent: int = 4
    live_max_per_model: int = 16
    webhook_path: str = "/quotaflow/webhooks/gemini"
    webhook_secret_env: str | None = None
    webhook_secret_file: str | None = None
    limiter: Mapping[str, Any] = field(default_factory=dict)
    transport: Mapping[str, Any] = field(default_factory=dict)
    upstream_auth: UpstreamAuthConfig = field(default_factory=UpstreamAuthConfig)

    def read_webhook_secret(self) -> str | None:
        """The batch webhook's signing secret, from ``webhook_secret_file`` or the
        ``webhook_secret_env`` variable (``None``: no webhook route)."""
        src = str(self.path or "<config>")
        if self.webhook_secret_file:
            try:
                secret = Path(self.webhook_secret_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise GatewayConfigError(
                    f"{src}: gateway.webhook_secret_file: cannot read "
                    f"{self.webhook_secret_file}: {exc.strerror}",
                    path=src,
                    key="gateway.webhook_secret_file",
                ) from None
        elif self.webhook_secret_env:
            secret = os.environ.get(self.webhook_secret_env, "").strip()
        else:
            return None
        if not secret:
            raise GatewayConfigError(
                f"{src}: no webhook signing secret in "
                f"{self.webhook_secret_file or self.webhook_secret_env}: set it (the "
                "new_signing_secret webhooks.create returned) or remove the webhook_secret keys",
                path=src,
                key="gateway.webhook_secret_file"
                if self.webhook_secret_file
                else "gateway.webhook_secret_env",
            )
        return secret

    def read_key(self) -> str:
        """The real Gemini key, from ``key_file`` or the ``key_env`` variable.

        Raises:
            GatewayConfigError: neither holds a key (the message names where it looked,
                never a value).
        """
        src = str(self.path or "<config>")
        if self.key_file:
            try:
                key = Path(self.key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise GatewayConfigError(
                    f"{src}: gateway.key_file: cannot read {self.key_file}: {exc.strerror}",
                    path=src,
                    key="gateway.key_file",
                ) from None
            where = f"the file {self.key_file}"
        else:
            key = os.environ.get(self.key_env, "").strip()
            where = f"the environment variable {self.key_env}"
        if not key:
            raise GatewayConfigError(
                f"{src}: no Gemini API key in {where}: set it (gateway.key_env names the "
                "variable, gateway.key_file a file)",
                path=src,
                key="gateway.key_file" if self.key_file else "gateway.key_env",
            )
        return key

    def __repr__(self) -> str:
        return (
            f"GatewayConfig(path={str(self.path) if self.path else None!r}, "
            f"host={self.host!r}, port={self.port}, upstream={self.upstream!r}, "
            f"credentials={self.upstream_auth.credentials!r}, agents={sorted(self.policy.agents)})"
        )


def gateway_config_from_dict(data: Mapping[str, Any], *, path: Path | None = None) -> GatewayConfig:
    """Validate a gateway configuration from plain data (the parsed TOML file).

    Raises:
        GatewayConfigError: a key is unknown or of the wrong type (named, with the fix).
        PolicyError: the policy tables are invalid.
    """
    src = str(path or "<config>")
    base = path.parent if path is not None else Path.cwd()
    tables = ("gateway", "upstream", "limiter", "transport")
    unknown = [k for k in data if k not in (*tables, *_POLICY_KEYS)]
    if unknown:
        raise GatewayConfigError(
            f"{src}: {unknown[0]}: unknown table; use [gateway], [upstream], [limiter], "
            "[transport], and the policy's [agents.*], [default], [audit]",
            path=src,
            key=unknown[0],
        )
    for section in tables:
        if not isinstance(data.get(section, {}), Mapping):
            raise GatewayConfigError(
                f"{src}: {section}: give a table ([{section}])", path=src, key=section
            )
    gw = _check(data.get("gateway", {}), _GATEWAY_KEYS, "gateway", src)
    lim = _check(data.get("limiter", {}), _LIMITER_KEYS, "limiter", src)
    tr = _check(data.get("transport", {}), _TRANSPORT_KEYS, "transport", src)
    auth = upstream_auth_config(data.get("upstream", {}), gw, base, src)
    port = gw.get("port", 8080)
    if not 0 <= port <= 65535:
        raise GatewayConfigError(
            f"{src}: gateway.port: give a port in 0..65535 (0: any free one), not {port}",
            path=src,
            key="gateway.port",
        )
    for key in ("max_body_bytes", "max_upload_bytes"):
        if key in gw and gw[key] <= 0:
            raise GatewayConfigError(
                f"{src}: gateway.{key}: give a positive number of bytes, not {gw[key]}",
                path=src,
                key=f"gateway.{key}",
            )
    upstream = gw.get("upstream", GatewayConfig.upstream).rstrip("/")
    if not upstream.startswith(("http://", "https://")):
        raise GatewayConfigError(
            f"{src}: gateway.upstream: give an http:// or https:// URL, not {upstream!r}",
            path=src,
            key="gateway.upstream",
        )
    if gw.get("server", "uvicorn") != "uvicorn":
        raise GatewayConfigError(
            f"{src}: gateway.server: only 'uvicorn' is supported", path=src, key="gateway.server"
        )
    inline = {k: data[k] for k in _POLICY_KEYS if k in data}
    if "policy" in gw:
        if inline:
            raise GatewayConfigError(
                f"{src}: gateway.policy names a policy file and the config holds policy tables "
                f"({', '.join(inline)}): keep one of them",
                path=src,
                key="gateway.policy",
            )
        policy = load_policy(base / gw.pop("policy"))
    else:
        policy = Policy.from_dict(inline, source=src)
    if not policy.agents and policy.default is None:
        raise GatewayConfigError(
            f"{src}: the policy names no agent: add [agents.<name>.grants] (every call of an "
            "agent without a policy is denied)",
            path=src,
            key="agents",
        )
    key_file = gw.pop("key_file", None)
    tokens = gw.pop("tokens_file", "gateway-tokens.toml")
    if "webhook_secret_file" in gw:
        gw["webhook_secret_file"] = str(base / gw["webhook_secret_file"])
    if not gw.get("webhook_path", "/").startswith("/") or gw.get("webhook_path") in (
        "/healthz",
        "/readyz",
    ):
        raise GatewayConfigError(
            f"{src}: gateway.webhook_path: give a path of its own starting with /, such as "
            "/quotaflow/webhooks/gemini",
            path=src,
            key="gateway.webhook_path",
        )
    if "learned_cache" in lim:
        lim["learned_cache"] = str(base / lim["learned_cache"])
    return GatewayConfig(
        policy=policy,
        path=path,
        upstream=upstream,
        key_file=str(base / key_file) if key_file else None,
        tokens_file=base / tokens,
        limiter=lim,
        transport=tr,
        upstream_auth=auth,
        **{k: v for k, v in gw.items() if k != "upstream"},
    )


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Load and validate ``gateway.toml``.

    Raises:
        GatewayConfigError: unreadable, not TOML, or a key is wrong (named, with the fix).
        PolicyError: the policy tables are invalid.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayConfigError(
            f"{p}: cannot read the gateway config: {exc.strerror}", path=str(p)
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GatewayConfigError(f"{p}: not valid TOML: {exc}", path=str(p)) from None
    return gateway_config_from_dict(data, path=p)
