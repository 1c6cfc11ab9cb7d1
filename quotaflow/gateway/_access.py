"""The gateway's view of who calls: the agent token a request carries, the proof an upload's
chunks carry of the token that started it, and one access-log line per request."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from quotaflow.gateway._config import GatewayConfig
from quotaflow.gateway._tokens import TokenEntry, TokenStore
from quotaflow.gateway._wire import _UPLOAD_PROOF, _Line, _param_name, _split_query

__all__ = ["GatewayAccess"]

access = logging.getLogger("quotaflow.gateway.access")


class GatewayAccess:
    """The credential, upload-proof and access-log part of :class:`~quotaflow.Gateway`."""

    config: GatewayConfig
    tokens: TokenStore
    _proof_key: bytes
    _clock: Callable[[], float]

    def _credential(self, request: Request, openai: bool) -> tuple[str | None, bool]:
        """The agent's token and whether the request carried conflicting ones."""
        found: list[str] = []
        h = request.headers.get("x-goog-api-key")
        if h:
            found.append(h.strip())
        found += [
            s.strip() for s in _split_query(request.scope["query_string"].decode("latin-1"))[0]
        ]
        auth = request.headers.get("authorization", "")
        if openai and auth[:7].lower() == "bearer ":
            found.append(auth[7:].strip())
        found = [f for f in found if f]
        if not found:
            return None, False
        return found[0], len(set(found)) > 1

    def _proof(self, token_id: str, upload_id: str) -> str:
        mac = hmac.new(self._proof_key, f"{token_id}:{upload_id}".encode(), hashlib.sha256)
        return f"{token_id}.{mac.hexdigest()[:32]}"

    def _upload_entry(self, request: Request) -> TokenEntry | None:
        """The token that started the upload a chunk belongs to (``None``: no valid proof,
        or its token was revoked since)."""
        pairs = {
            _param_name(k): v for k, v in parse_qsl(request.scope["query_string"].decode("latin-1"))
        }
        proof, upload_id = pairs.get(_UPLOAD_PROOF), pairs.get("upload_id")
        if not proof or not upload_id:
            return None
        token_id = proof.partition(".")[0]
        if not hmac.compare_digest(proof, self._proof(token_id, upload_id)):
            return None
        return next((e for e in self.tokens.entries() if e.id == token_id), None)

    def _log(self, request: Request, entry: TokenEntry | None, status: int, start: float,
             sent: int = 0, note: str = "") -> None:  # fmt: skip
        if not self.config.access_log:
            return
        if not access.isEnabledFor(logging.INFO):
            return
        client = request.client
        line = {
            "event": "access",
            "agent": entry.agent if entry else None,
            "token_id": entry.id if entry else None,
            "method": request.method,
            "path": (request.scope.get("raw_path") or b"")
            .split(b"?", 1)[0]
            .decode("latin-1")[:300],
            "status": status,
            "bytes": sent,
            "duration_ms": round((self._clock() - start) * 1000, 3),
            "client": client.host if client else None,
        }
        if note:
            line["note"] = note
        access.info("%s", _Line(line))

    def _access_ws(self, ws: Any, entry: TokenEntry | None, status: int, note: str,
                   agent: str | None = None) -> None:  # fmt: skip
        if not self.config.access_log or not access.isEnabledFor(logging.INFO):
            return
        line = {
            "event": "access",
            "agent": entry.agent if entry else agent,
            "token_id": entry.id if entry else None,
            "method": "WEBSOCKET",
            "path": str(ws.scope.get("path", ""))[:300],
            "status": status,
            "client": ws.client.host if ws.client else None,
            "note": note,
        }
        access.info("%s", _Line(line))
