"""The ``[upstream]`` table of ``gateway.toml``: what the gateway's upstream calls carry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quotaflow.gateway._checks import GatewayConfigError, _check

__all__ = ["UpstreamAuthConfig"]

_UPSTREAM_KEYS = {
    "credentials": str,
    "credentials_file": str,
    "quota_project": str,
    "scopes": list,
    "refresh_margin": float,
    "token_timeout": float,
    "token_uri": str,
}
_CREDENTIALS = ("key", "oauth", "key+oauth")


@dataclass(frozen=True)
class UpstreamAuthConfig:
    """What the gateway's upstream calls carry (``[upstream]``; see
    :mod:`quotaflow.gateway._oauth`).

    Attributes:
        credentials: ``"key"`` (every call: the key), ``"oauth"`` (every call: an OAuth
            access token, no key held) or ``"key+oauth"`` (the key, and the access token on
            the tuned-model routes, which need a principal).
        credentials_file: a service-account or authorized-user JSON (``None``: application
            default credentials).
        quota_project: sent as ``x-goog-user-project`` (default: the credentials' own).
        scopes: the OAuth scopes (``None``: a service account's default scopes, an
            authorized user's granted ones).
        refresh_margin: seconds before expiry to refresh (at most half the token's lifetime).
        token_timeout: seconds a token request may take.
        token_uri: the token endpoint to refresh at, instead of the one google-auth picks
            (Google's, for an authorized user: google-auth ignores a file's own).
    """

    credentials: str = "key"
    credentials_file: str | None = None
    quota_project: str | None = None
    scopes: tuple[str, ...] | None = None
    refresh_margin: float = 300.0
    token_timeout: float = 10.0
    token_uri: str | None = None


def upstream_auth_config(
    table: Mapping[str, Any], gw: Mapping[str, Any], base: Path, src: str
) -> UpstreamAuthConfig:
    up = _check(table, _UPSTREAM_KEYS, "upstream", src)
    mode = up.pop("credentials", "key")
    if mode not in _CREDENTIALS:
        raise GatewayConfigError(
            f"{src}: upstream.credentials: give one of {', '.join(map(repr, _CREDENTIALS))}, "
            f"not {mode!r}",
            path=src,
            key="upstream.credentials",
        )
    if mode == "key" and up:
        first = sorted(up)[0]
        raise GatewayConfigError(
            f"{src}: upstream.{first}: used only with OAuth: set upstream.credentials = "
            '"oauth" (or "key+oauth"), or remove it',
            path=src,
            key=f"upstream.{first}",
        )
    if mode == "oauth":
        for k in ("key_env", "key_file"):
            if k in gw:
                raise GatewayConfigError(
                    f"{src}: gateway.{k}: no key is used with upstream.credentials = "
                    '"oauth" (every call carries an access token): remove it, or set '
                    'upstream.credentials = "key+oauth"',
                    path=src,
                    key=f"gateway.{k}",
                )
    scopes = up.get("scopes")
    if scopes is not None and (
        not scopes
        or not all(isinstance(x, str) and x.startswith("https://") and " " not in x for x in scopes)
    ):
        raise GatewayConfigError(
            f"{src}: upstream.scopes: give a list of scope URLs "
            '("https://www.googleapis.com/auth/cloud-platform", ...), not {scopes!r}',
            path=src,
            key="upstream.scopes",
        )
    quota = up.get("quota_project")
    if quota is not None and (not quota or any(c.isspace() for c in quota)):
        raise GatewayConfigError(
            f"{src}: upstream.quota_project: give a project id (no spaces), not {quota!r}",
            path=src,
            key="upstream.quota_project",
        )
    file = up.get("credentials_file")
    if file is not None and not file:
        raise GatewayConfigError(
            f"{src}: upstream.credentials_file: give a file's path, or remove the key for "
            "application default credentials",
            path=src,
            key="upstream.credentials_file",
        )
    uri = up.get("token_uri")
    if uri is not None and not uri.startswith(("http://", "https://")):
        raise GatewayConfigError(
            f"{src}: upstream.token_uri: give an http:// or https:// URL, not {uri!r}",
            path=src,
            key="upstream.token_uri",
        )
    return UpstreamAuthConfig(
        credentials=mode,
        credentials_file=str(base / file) if file else None,
        quota_project=quota,
        scopes=tuple(scopes) if scopes is not None else None,
        refresh_margin=up.get("refresh_margin", 300.0),
        token_timeout=up.get("token_timeout", 10.0),
        token_uri=uri,
    )
