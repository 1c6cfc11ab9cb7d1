"""Agent tokens: made once, kept as hashes, looked up per request, reloaded when the file changes.

A token reads ``qfg_<id>_<secret>``: the id (12 hex digits) finds its entry, the secret (256
random bits) proves it. The tokens file holds each entry's id, agent, creation time and hash,
never a token::

    [[tokens]]
    id = "3f9c1a7be2d4"
    agent = "researcher"
    hash = "sha256:9b74c9897bac770ffc029102a200c5de..."
    created = "2026-12-04T19:40:00Z"

Hashes: ``sha256:<hex>`` (the default: a token is 256 random bits, so a fast hash cannot be
searched) or ``scrypt:<n>:<r>:<p>:<salt hex>:<hex>`` (``hashlib.scrypt``; a verified token is
remembered in memory, by its SHA-256, so scrypt runs once per token and process).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from quotaflow.gateway._config import GatewayConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["TokenEntry", "TokenFile", "TokenStore", "hash_token", "new_token"]

log = logging.getLogger("quotaflow.gateway")

_TOKEN = re.compile(r"qfg_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SCRYPT = (2**14, 8, 1)
HashKind = Literal["sha256", "scrypt"]


@dataclass(frozen=True)
class TokenEntry:
    """One token's record: never the token itself.

    Attributes:
        id: the public part of the token (``qfg_<id>_...``), used to list and revoke it.
        agent: the agent it authenticates as.
        hash: ``sha256:<hex>`` or ``scrypt:...``.
        created: ISO 8601 UTC time it was made.
    """

    id: str
    agent: str
    hash: str
    created: str

    def __repr__(self) -> str:
        return f"TokenEntry(id={self.id!r}, agent={self.agent!r}, created={self.created!r})"


def hash_token(token: str, kind: HashKind = "sha256") -> str:
    """The stored form of ``token``."""
    if kind == "scrypt":
        n, r, p = _SCRYPT
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
        return f"scrypt:{n}:{r}:{p}:{salt.hex()}:{digest.hex()}"
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _verify(token: str, stored: str) -> bool:
    kind, _, rest = stored.partition(":")
    if kind == "sha256":
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), rest)
    if kind == "scrypt":
        try:
            n, r, p, salt, want = rest.split(":")
            got = hashlib.scrypt(
                token.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
            )
        except ValueError:
            return False
        return hmac.compare_digest(got.hex(), want)
    return False


def new_token(agent: str, kind: HashKind = "sha256") -> tuple[str, TokenEntry]:
    """A fresh token for ``agent`` and its entry (show the token once; store the entry)."""
    tid = secrets.token_hex(6)
    token = f"qfg_{tid}_{secrets.token_urlsafe(32)}"
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return token, TokenEntry(tid, agent, hash_token(token, kind), created)


class TokenFile:
    """The tokens file: read, add, revoke (written atomically, mode 0600)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> list[TokenEntry]:
        """The entries (none when the file does not exist).

        Raises:
            GatewayConfigError: the file is unreadable or malformed (named, with the entry).
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise GatewayConfigError(
                f"{self.path}: cannot read the tokens file: {exc.strerror}", path=str(self.path)
            ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GatewayConfigError(
                f"{self.path}: not valid TOML: {exc}", path=str(self.path)
            ) from None
        items = data.get("tokens", [])
        if not isinstance(items, list):
            raise GatewayConfigError(
                f"{self.path}: tokens: give [[tokens]] entries", path=str(self.path), key="tokens"
            )
        out: list[TokenEntry] = []
        for i, item in enumerate(items):
            fields = ("id", "agent", "hash", "created")
            if not isinstance(item, dict) or not all(isinstance(item.get(f), str) for f in fields):
                raise GatewayConfigError(
                    f"{self.path}: tokens[{i}]: each entry needs the strings "
                    "id, agent, hash, created (make entries with 'quotaflow gateway token "
                    "create')",
                    path=str(self.path),
                    key=f"tokens[{i}]",
                )
            out.append(TokenEntry(*(item[f] for f in fields)))
        return out

    def save(self, entries: list[TokenEntry]) -> None:
        """Replace the file's entries (atomically: agents never see a half-written file)."""
        lines = [
            "# quotaflow gateway tokens: hashes only. Manage with 'quotaflow gateway token'.",
            "",
        ]
        for e in entries:
            lines += ["[[tokens]]"]
            lines += [f"{k} = {json.dumps(getattr(e, k))}" for k in ("id", "agent", "hash")]
            lines += [f"created = {json.dumps(e.created)}", ""]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-", suffix=".toml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, entry: TokenEntry) -> None:
        """Add one entry."""
        self.save([*self.load(), entry])

    def revoke(self, token_id: str) -> TokenEntry | None:
        """Remove the entry with ``token_id`` (``None``: no such entry)."""
        entries = self.load()
        gone = next((e for e in entries if e.id == token_id), None)
        if gone is not None:
            self.save([e for e in entries if e.id != token_id])
        return gone


class TokenStore:
    """Looks tokens up for the gateway, reloading the tokens file when it changes (checked at
    most every ``recheck`` seconds of ``clock``; 0: on every lookup), so created, rotated and
    revoked tokens take effect without a restart. A file that turns malformed keeps the last
    good entries (and warns)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recheck: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._file = TokenFile(path)
        self._recheck = recheck
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -float("inf")
        self._by_id: dict[str, TokenEntry] = {}
        self._verified: dict[str, str] = {}  # id -> sha256 of a token that verified (scrypt)
        self._reload(force=True)

    @property
    def path(self) -> Path:
        """The tokens file."""
        return self._file.path

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._file.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked < self._recheck:
            return
        self._checked = now
        stamp = self._stat()
        if not force and stamp == self._stamp:
            return
        try:
            entries = self._file.load()
        except GatewayConfigError as exc:
            if force:
                raise
            log.warning("quotaflow gateway: tokens file not reloaded: %s", exc)
            return
        with self._lock:
            self._stamp = stamp
            self._by_id = {e.id: e for e in entries}
            self._verified = {
                k: v for k, v in self._verified.items() if self._by_id.get(k) is not None
            }

    def entries(self) -> list[TokenEntry]:
        """The entries in force."""
        self._reload()
        return list(self._by_id.values())

    def lookup(self, token: str) -> TokenEntry | None:
        """The entry ``token`` proves, or ``None`` (unknown, revoked or malformed)."""
        self._reload()
        m = _TOKEN.fullmatch(token)
        if m is None:
            return None
        entry = self._by_id.get(m.group(1))
        if entry is None:
            return None
        if entry.hash.startswith("scrypt:"):
            fast = hashlib.sha256(token.encode()).hexdigest()
            known = self._verified.get(entry.id)
            if known is not None:
                return entry if hmac.compare_digest(known, fast) else None
            if not _verify(token, entry.hash):
                return None
            with self._lock:
                self._verified[entry.id] = fast
            return entry
        return entry if _verify(token, entry.hash) else None

    def __repr__(self) -> str:
        return f"TokenStore({str(self._file.path)!r}, tokens={len(self._by_id)})"
