"""The canonical request: the one form of a request every decision reads. Pure, no I/O.

A server decodes a URL's path once and acts on the decoded segments; it reads Google's system
parameters (https://docs.cloud.google.com/apis/docs/system-parameters, read 2026-12-03) under
any spelling of their names: ``key``, ``$key``, ``%24key``, ``%6Bey``. So quotaflow does the
same, once, before it classifies, checks grants and owners, meters, redacts or audits:

* the path is split on ``/`` and each segment percent-decoded once; a segment that decodes to
  a separator (``%2F``, ``%5C``), a dot segment (``.``, ``..``, ``%2e%2e``), an empty segment,
  a ``%`` (encoded twice), a control or invisible character, or bytes that are not UTF-8 make
  the request *malformed* (:attr:`CanonicalRequest.problem`): the agents layer answers it
  locally with a 400 and audits it, and never sends it;
* query parameter names are decoded, case-folded and stripped of the system parameters' ``$``
  prefix (``?%24KEY=`` is ``key``);
* a method override (the ``X-HTTP-Method-Override`` header or the ``$httpMethod`` parameter)
  that names another method than the request's makes it malformed: a request is judged by the
  method it is sent with, and the server must not act on another.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus, urlsplit

__all__ = [
    "MODEL_NAME",
    "SECRET_PARAMS",
    "CanonicalRequest",
    "canonical_request",
    "param_name",
    "valid_model",
]

MODEL_NAME = re.compile(r"(?:models/|tunedModels/)?[A-Za-z0-9][A-Za-z0-9._-]*\Z")
"""What a model name may look like before it is classified or becomes part of a scope key."""

SECRET_PARAMS = frozenset(
    {"key", "api_key", "apikey", "access_token", "oauth_token", "token", "upload_id"}
)
"""Query parameters (canonical names, see :func:`param_name`) whose values are never shown."""

_OVERRIDE_HEADER = "x-http-method-override"
_OVERRIDE_RAW = _OVERRIDE_HEADER.encode("ascii")
_OVERRIDE_PARAM = "httpmethod"  # $httpMethod


def param_name(raw: str) -> str:
    """A query parameter's canonical name: decoded once, case-folded, without the ``$`` of a
    system parameter.

    Example:
        >>> [param_name(n) for n in ("key", "%24key", "%6Bey", "KEY", "$Key")]
        ['key', 'key', 'key', 'key', 'key']
    """
    name = unquote_plus(raw).casefold()
    return name[1:] if name.startswith("$") else name


def valid_model(name: str) -> bool:
    """Whether ``name`` is shaped like a Gemini model id (``gemini-2.5-flash``,
    ``models/...``, ``tunedModels/...``)."""
    return bool(MODEL_NAME.match(name))


@dataclass(frozen=True)
class CanonicalRequest:
    """A request as the server reads it.

    Attributes:
        method: the HTTP method (upper case).
        path: the path, each segment decoded once (``/v1beta/files/abc``); the raw path
            when the request is malformed.
        query: ``(canonical name, decoded value)`` pairs, in order.
        problem: why the request is malformed (``None``: it is not).
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    problem: str | None = None

    def param(self, name: str) -> str | None:
        """The last value of the parameter ``name`` (a canonical name), if any."""
        found = None
        for k, v in self.query:
            if k == name:
                found = v
        return found

    @property
    def sse(self) -> bool:
        """Whether the response is asked for as server-sent events (``alt=sse``)."""
        return (self.param("alt") or "").casefold() == "sse"

    def logged(self) -> str:
        """The path and query with secret values hidden (for logs and the audit record)."""
        shown = [f"{k}={'***' if k in SECRET_PARAMS else v}" for k, v in self.query]
        return self.path + ("?" + "&".join(shown) if shown else "")


def _segment_problem(decoded: str) -> str | None:
    if decoded in (".", ".."):
        return "a dot segment"
    if "/" in decoded or "\\" in decoded:
        return "an encoded path separator"
    if "%" in decoded:
        return "a segment encoded twice"
    if decoded.isascii():  # ASCII has no Cf/Cs/Co/Cn; its controls are not printable
        if decoded.isprintable() and " " not in decoded:
            return None
        return "a control, space or invisible character"
    for ch in decoded:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            return "a control, space or invisible character"
    return None


@functools.lru_cache(maxsize=512)
def _path(raw: str) -> tuple[str, str | None]:
    """The canonical path of a raw (percent-encoded) path, and its problem if any; cached, as
    a client sends the same few paths again and again (a path holds no secret: a key is sent
    in a header or the query)."""
    segs = raw.split("/")
    if segs and segs[0] == "":
        segs = segs[1:]
    if len(segs) > 1 and segs[-1] == "":
        segs = segs[:-1]  # one trailing slash names the same resource
    out: list[str] = []
    for seg in segs:
        if seg == "":
            return raw, "an empty path segment"
        try:
            decoded = unquote(seg, errors="strict")
        except UnicodeDecodeError:
            return raw, "a segment that is not UTF-8"
        problem = _segment_problem(decoded)
        if problem is not None:
            return raw, problem
        out.append(decoded)
    return "/" + "/".join(out), None


def _query(raw: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            pairs.append((param_name(name), unquote_plus(value)))
        else:  # nothing to decode
            name = name.casefold()
            pairs.append((name[1:] if name.startswith("$") else name, value))
    return tuple(pairs)


def canonical_request(
    method: str, url: str, headers: Mapping[str, str] | None = None
) -> CanonicalRequest:
    """The canonical form of a request (see the module docstring).

    Args:
        method: the HTTP method.
        url: the URL (or its path and query) as sent, percent-encoded.
        headers: the request headers (for ``X-HTTP-Method-Override``), if known.

    Example:
        >>> canonical_request("DELETE", "/v1beta/files/%61bc?%24KEY=s").path
        '/v1beta/files/abc'
        >>> canonical_request("GET", "/v1beta/files/x/%2e%2e/y").problem
        'a dot segment'
    """
    # a URL without a query or user info holds no secret: its form is cached (a client sends
    # the same few URLs again and again); the rest is worked out each time
    canon = _canonical(method, url) if "?" in url or "@" in url else _cached(method, url)
    if headers is None or canon.problem is not None:
        return canon
    override = _override_header(headers)
    if override is None:
        return canon  # no header override
    if any(k == _OVERRIDE_PARAM for k, _ in canon.query):
        return canon  # the query's own override (already judged) wins
    if override.strip().upper() == canon.method:
        return canon
    problem = f"a method override to {override.strip()[:16]!r}"
    return CanonicalRequest(canon.method, canon.path, canon.query, problem)


def _override_header(headers: Mapping[str, str]) -> str | None:
    """The ``X-HTTP-Method-Override`` header's value, in any spelling of its name (the values
    of a repeated header joined by ``", "``, as httpx's ``Headers.items()`` joins them)."""
    raw = getattr(headers, "raw", None)  # httpx's and httpx2's (name, value) bytes
    if isinstance(raw, list) and _OVERRIDE_RAW not in b"\n".join([k for k, _ in raw]).lower():
        return None  # not there: found without decoding every header (or their encoding)
    override = None
    for k, v in headers.items():
        if k.lower() == _OVERRIDE_HEADER:
            override = v
    return override


def _canonical(method: str, url: str) -> CanonicalRequest:
    """The canonical form of a request without its headers."""
    method = method.upper()
    parts = urlsplit(url)
    query = _query(parts.query) if parts.query else ()
    path, problem = _path(parts.path or "/")
    override = None
    for k, v in query:
        if k == _OVERRIDE_PARAM:
            override = v
    if problem is None and override is not None and override.strip().upper() != method:
        problem = f"a method override to {override.strip()[:16]!r}"
    return CanonicalRequest(method, path, query, problem)


_cached = functools.lru_cache(maxsize=512)(_canonical)
