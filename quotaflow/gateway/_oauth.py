"""The gateway's upstream credentials: the API key, OAuth 2.0 access tokens, or both.

``[upstream] credentials`` picks them (see :class:`~quotaflow.gateway.GatewayConfig`):

- ``"key"`` (default): every call carries the real key (``x-goog-api-key``).
- ``"oauth"``: every call carries ``Authorization: Bearer <access token>``; no key is held.
- ``"key+oauth"``: the key, except on the routes that need a principal (the tuned-model
  routes, ``/<version>/tunedModels...``), which carry the access token.

The access token comes from google-auth credentials (a service-account or authorized-user JSON
file, or application default credentials). google-auth's refresh is blocking: it runs in a
worker thread (``anyio.to_thread``), one refresh at a time, shared by every call that needs a
token meanwhile, ahead of the token's expiry (``refresh_margin``, at most half its lifetime).
The token is added just before a request leaves (after its quota wait, on every retry), and
``x-goog-user-project`` with it when a quota project is known.

Neither the token nor the credentials' secrets (refresh token, private key, client secret) go
into a response, a log line, an audit record, a metric, a repr or an error.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx

from quotaflow.gateway._config import GatewayConfig
from quotaflow.gateway._credentials import (
    DEFAULT_SCOPES,
    UpstreamAuthError,
    _AuthRequest,
    _refusal,
    load_credentials,
)
from quotaflow.gateway._wire import _Key

__all__ = ["DEFAULT_SCOPES", "AccessTokens", "UpstreamAuth", "UpstreamAuthError"]

log = logging.getLogger("quotaflow.gateway")

# the routes that need a principal (an API key is refused there): the tuned models'
_OAUTH_ROUTE = re.compile(r"^/[^/]+/tunedModels(?:[/:]|$)")
_COOLDOWN = 1.0  # seconds a failed refresh answers for itself (the token endpoint is spared)


class AccessTokens:
    """OAuth access tokens from google-auth ``credentials``, refreshed ahead of expiry.

    Args:
        credentials: google-auth credentials (``refresh(request)``, ``token``, ``expiry``).
        margin: seconds before expiry to refresh (at most half the token's lifetime).
        timeout: seconds a token request may take.
        clock: monotonic seconds (default ``time.monotonic``).

    Attributes:
        refreshes: refreshes that got a token.
    """

    def __init__(
        self,
        credentials: Any,
        *,
        margin: float = 300.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._margin = margin
        self._request = _AuthRequest(timeout)
        self._clock = clock
        self._token: _Key | None = None
        self._due = self._expires = -math.inf
        self._lock = anyio.Lock()
        self._attempts = 0
        self._error: UpstreamAuthError | None = None
        self._failed_at = -math.inf
        self.refreshes = 0

    async def token(self) -> str:
        """A valid access token; refreshes (in a worker thread) when it is due.

        Raises:
            UpstreamAuthError: no token could be had.
        """
        now = self._clock()
        token = self._token
        if token is not None and now < self._due:
            return token.value
        if token is not None and now < self._expires and self._lock.locked():
            return token.value  # a refresh is under way; the current token is still good
        seen = self._attempts
        async with self._lock:
            now = self._clock()
            if self._attempts != seen and self._token is not None and now < self._expires:
                return self._token.value  # a refresh ended while this call waited: share it
            if self._error is not None and (
                self._attempts != seen or now - self._failed_at < _COOLDOWN
            ):
                raise self._error
            self._attempts += 1
            try:
                value, lifetime = await anyio.to_thread.run_sync(self._refresh)
            except UpstreamAuthError as exc:
                self._error, self._failed_at = exc, self._clock()
                log.warning("quotaflow gateway: OAuth token refresh failed: %s", exc.why)
                raise
            self._error = None
            now = self._clock()
            self._token = _Key(value)
            self._expires = now + lifetime
            self._due = self._expires - min(self._margin, lifetime / 2)
            self.refreshes += 1
            return value

    def _refresh(self) -> tuple[str, float]:
        """Refresh (blocking: in a worker thread); the token and its seconds left."""
        try:
            self._credentials.refresh(self._request)
        except Exception as exc:
            raise _refusal(exc) from None
        token = self._credentials.token
        if not isinstance(token, str) or not token:
            raise UpstreamAuthError("the token endpoint sent no access token", status=502)
        expiry = self._credentials.expiry
        if expiry is None:
            return token, 3600.0
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        left = (expiry.replace(tzinfo=None) - now).total_seconds()  # google-auth's: naive UTC
        return token, max(left, 0.0)

    def __repr__(self) -> str:
        return f"AccessTokens(refreshes={self.refreshes}, token=<hidden>)"


class _Authorized(httpx.AsyncBaseTransport):
    """The upstream transport, with the access token on every request that carries no key."""

    def __init__(self, inner: httpx.AsyncBaseTransport, auth: UpstreamAuth) -> None:
        self._inner = inner
        self._auth = auth

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "x-goog-api-key" not in request.headers:
            for name, value in await self._auth.oauth_headers():
                request.headers[name] = value
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class UpstreamAuth:
    """What the gateway's upstream requests carry (see the module).

    Args:
        mode: ``"key"``, ``"oauth"`` or ``"key+oauth"``.
        key: the real key (``None`` with ``"oauth"``).
        tokens: the access tokens (``None`` with ``"key"``).
        quota_project: sent as ``x-goog-user-project`` with the access token.
        secret: bytes every replica holds (the key, or the credentials file), for the upload
            proofs' key.
    """

    def __init__(
        self,
        mode: str,
        *,
        key: str | None = None,
        tokens: AccessTokens | None = None,
        quota_project: str | None = None,
        secret: bytes = b"",
    ) -> None:
        self.mode = mode
        self.key = _Key(key) if key is not None else None
        self.tokens = tokens
        self.quota_project = quota_project
        if not secret:  # nothing shared: this replica's own (uploads stay with it)
            secret = os.urandom(32)
        self._secret = secret

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        *,
        key: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> UpstreamAuth:
        """The credentials ``config`` names; the key from ``key`` or ``config.read_key()``,
        the OAuth credentials loaded with google-auth.

        Raises:
            GatewayConfigError: the key or the credentials cannot be had (named, with the fix).
        """
        up = config.upstream_auth
        if up.credentials == "key":
            key = key if key is not None else config.read_key()
            return cls("key", key=key, secret=key.encode())
        if up.credentials == "key+oauth":
            key = key if key is not None else config.read_key()
        else:
            key = None
        credentials, raw = load_credentials(config)
        tokens = AccessTokens(
            credentials,
            margin=up.refresh_margin,
            timeout=up.token_timeout,
            clock=clock or time.monotonic,
        )
        quota = up.quota_project or getattr(credentials, "quota_project_id", None) or None
        secret = key.encode() if key is not None else raw
        return cls(up.credentials, key=key, tokens=tokens, quota_project=quota, secret=secret)

    def proof_key(self) -> bytes:
        """The upload proofs' key, derived from what every replica holds."""
        return hashlib.sha256(b"quotaflow-gateway-upload\0" + self._secret).digest()

    def key_headers(self, path: str) -> list[tuple[str, str]]:
        """The key header for a request to ``path`` (none where the access token goes)."""
        if self.key is None or (self.mode == "key+oauth" and _OAUTH_ROUTE.match(path)):
            return []
        return [("x-goog-api-key", self.key.value)]

    async def oauth_headers(self) -> list[tuple[str, str]]:
        """``Authorization: Bearer`` (and ``x-goog-user-project``) for a request without a key.

        Raises:
            UpstreamAuthError: no access token could be had.
        """
        if self.tokens is None:
            return []
        out = [("authorization", "Bearer " + await self.tokens.token())]
        if self.quota_project:
            out.append(("x-goog-user-project", self.quota_project))
        return out

    async def live_headers(self) -> dict[str, str]:
        """The headers of a Live session's upstream handshake (the key where there is one)."""
        if self.key is not None:
            return {"x-goog-api-key": self.key.value}
        return dict(await self.oauth_headers())

    def wrap(self, inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        """``inner`` with the access token added to requests that carry no key."""
        return inner if self.tokens is None else _Authorized(inner, self)

    def __repr__(self) -> str:
        return f"UpstreamAuth(mode={self.mode!r}, quota_project={self.quota_project!r})"
