"""The gateway's google-auth glue: loading the OAuth credentials ``[upstream]`` names,
google-auth's blocking HTTP calls on httpx, and a failed refresh as an error that holds no
secret."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from quotaflow.gateway._config import GatewayConfig, GatewayConfigError

__all__ = ["DEFAULT_SCOPES", "UpstreamAuthError", "load_credentials"]

DEFAULT_SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/generative-language.retriever",
)
"""The scopes asked for a service account (and for ADC) when ``upstream.scopes`` is not set;
an authorized user's refresh asks for the scopes it was granted."""

_ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


class UpstreamAuthError(httpx.ConnectError):
    """No access token could be had, so the call was not sent (a ``ConnectError``: the quota
    transport releases its permit and may retry).

    Attributes:
        status: 503 (the token endpoint cannot be reached or fails: retry) or 502 (it refused
            the gateway's credentials: the operator must fix them).
        why: what happened, in words that hold no secret.
    """

    def __init__(self, why: str, *, status: int) -> None:
        super().__init__(why)
        self.why = why
        self.status = status


class _AuthResponse:
    """google-auth's view of an HTTP answer (``google.auth.transport.Response``)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.data = response.content


class _AuthRequest:
    """google-auth's blocking HTTP call (``google.auth.transport.Request``) on httpx, so no
    ``requests`` package is needed."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _AuthResponse:
        from google.auth import exceptions

        try:
            with httpx.Client(timeout=timeout or self._timeout) as client:
                return _AuthResponse(client.request(method, url, content=body, headers=headers))
        except httpx.HTTPError as exc:
            raise exceptions.TransportError(type(exc).__name__) from None  # type: ignore[no-untyped-call]


def _refusal(exc: Exception) -> UpstreamAuthError:
    """The failed refresh as an error that names no secret (the token endpoint's answer is
    not copied, only its RFC 6749 error code)."""
    from google.auth import exceptions

    if isinstance(exc, exceptions.TransportError):
        return UpstreamAuthError(
            f"the token endpoint cannot be reached ({exc.args[0] if exc.args else 'error'})",
            status=503,
        )
    code = ""
    data = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(data, Mapping) and isinstance(data.get("error"), str):
        code = data["error"] if _ERROR_CODE.match(data["error"]) else ""
    retryable = bool(getattr(exc, "retryable", False))
    what = f"the token endpoint refused the refresh ({code or type(exc).__name__})"
    return UpstreamAuthError(what, status=503 if retryable else 502)


def _secret_values(text: str) -> list[str]:
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    keys = ("refresh_token", "private_key", "client_secret", "private_key_id")
    return [v for k, v in data.items() if k in keys and isinstance(v, str) and v]


def _with_token_uri(credentials: Any, config: GatewayConfig) -> Any:
    uri = config.upstream_auth.token_uri
    if uri is None:
        return credentials
    if not callable(getattr(credentials, "with_token_uri", None)):
        src = str(config.path or "<config>")
        raise GatewayConfigError(
            f"{src}: upstream.token_uri: these credentials ({type(credentials).__name__}) take "
            "no token endpoint: remove upstream.token_uri",
            path=src,
            key="upstream.token_uri",
        )
    return credentials.with_token_uri(uri)


def load_credentials(config: GatewayConfig) -> tuple[Any, bytes]:
    """google-auth credentials from ``upstream.credentials_file`` (or application default
    credentials), and the bytes of the file they came from (``b""``: none).

    Raises:
        GatewayConfigError: the file cannot be read or holds no credentials google-auth
            loads; no application default credentials (the message names the fix, never a
            secret of the file).
    """
    import google.auth
    from google.auth import exceptions

    up = config.upstream_auth
    src = str(config.path or "<config>")
    credentials: Any
    scopes = list(up.scopes) if up.scopes is not None else None
    path = up.credentials_file
    if path is None:
        try:
            credentials, _ = google.auth.default(
                scopes=scopes,
                default_scopes=DEFAULT_SCOPES,
                request=_AuthRequest(up.token_timeout),  # type: ignore[arg-type]
            )
        except exceptions.DefaultCredentialsError:
            raise GatewayConfigError(
                f"{src}: upstream.credentials: no application default credentials: set "
                "upstream.credentials_file to a service-account or authorized-user JSON, or "
                "GOOGLE_APPLICATION_CREDENTIALS, or run 'gcloud auth application-default login'",
                path=src,
                key="upstream.credentials_file",
            ) from None
        credentials = _with_token_uri(credentials, config)
        adc = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        try:
            return credentials, Path(adc).read_bytes() if adc else b""
        except OSError:
            return credentials, b""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise GatewayConfigError(
            f"{src}: upstream.credentials_file: cannot read {path}: {exc.strerror}",
            path=src,
            key="upstream.credentials_file",
        ) from None
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            from google.oauth2 import service_account

            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=scopes, default_scopes=DEFAULT_SCOPES
            )
        elif kind == "authorized_user":
            from google.oauth2 import credentials as user

            credentials = user.Credentials.from_authorized_user_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
        else:
            raise ValueError(
                "not a JSON object" if kind is None else f"its type {str(kind)[:40]!r} is not one"
            )
    except (exceptions.GoogleAuthError, ValueError) as exc:
        why = str(exc)
        for secret in _secret_values(raw.decode("utf-8", "replace")):
            why = why.replace(secret, "<hidden>")
        raise GatewayConfigError(
            f"{src}: upstream.credentials_file: {path} holds no credentials the gateway "
            f"loads ({why[:300]}): give a service-account or authorized-user JSON "
            '("type": "service_account" or "authorized_user")',
            path=src,
            key="upstream.credentials_file",
        ) from None
    return _with_token_uri(credentials, config), raw
