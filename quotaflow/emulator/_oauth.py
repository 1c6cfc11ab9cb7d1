"""The emulator's OAuth 2.0 token endpoint and the access tokens it issued.

``POST /_emulator/oauth2/token`` speaks the refresh-token grant as Google's token endpoint
does (form-encoded or JSON body; ``access_token``, ``expires_in``, ``token_type``, ``scope``
back; ``invalid_grant``/``invalid_client`` errors as RFC 6749 words them). An authorized-user
JSON whose ``token_uri`` points there and whose ``client_id``, ``client_secret`` and
``refresh_token`` match an :class:`~quotaflow.emulator.OAuthClientConfig` refreshes against it
with google-auth; the emulator then accepts ``Authorization: Bearer <access token>`` on the
Gemini routes until the token expires (by the emulator's clock).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from ._config import OAuthClientConfig

__all__ = ["TokenIssuer"]

_DEFAULT_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def _form(body: bytes, content_type: str) -> dict[str, str]:
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return dict(parse_qsl(text, keep_blank_values=True))


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class TokenIssuer:
    """The clients the token endpoint knows and the access tokens it issued (thread-safe
    under the emulator's lock)."""

    def __init__(self, clients: Sequence[OAuthClientConfig], clock: Callable[[], float]) -> None:
        self._clients = {c.client_id: c for c in clients}
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self.issued = 0
        self.refused = 0

    def reset(self) -> None:
        """Forget the issued tokens and the counts."""
        self._tokens.clear()
        self.issued = self.refused = 0

    def grant(self, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        """Answer one token request: ``(status, JSON body)``."""
        form = _form(body, content_type)
        if form.get("grant_type") != "refresh_token":
            self.refused += 1
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "Invalid grant_type: " + form.get("grant_type", "")[:40],
            }
        client = self._clients.get(form.get("client_id", ""))
        if client is None or not _same(form.get("client_secret", ""), client.client_secret):
            self.refused += 1
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        if not _same(form.get("refresh_token", ""), client.refresh_token):
            self.refused += 1
            return 400, {"error": "invalid_grant", "error_description": "Bad Request"}
        now = self._clock()
        for token, (_, expiry) in list(self._tokens.items()):
            if expiry + 3600.0 <= now:  # an expired token is still known (as expired) an hour
                del self._tokens[token]
        token = "ya29.emulator-" + secrets.token_urlsafe(32)
        self._tokens[token] = (client.project, now + client.expires_in)
        self.issued += 1
        return 200, {
            "access_token": token,
            "expires_in": client.expires_in,
            "token_type": "Bearer",
            "scope": form.get("scope") or _DEFAULT_SCOPE,
        }

    def knows(self, token: str) -> bool:
        """Whether this endpoint issued ``token`` (expired or not)."""
        return token in self._tokens

    def project(self, token: str) -> tuple[str | None, bool]:
        """The project of an access token this endpoint issued and whether it expired
        (``(None, False)``: never issued here)."""
        found = self._tokens.get(token)
        if found is None:
            return None, False
        project, expiry = found
        if self._clock() >= expiry:
            return None, True
        return project, False

    def snapshot(self) -> dict[str, int]:
        """Token requests answered: ``issued`` and ``refused``."""
        return {"issued": self.issued, "refused": self.refused}
