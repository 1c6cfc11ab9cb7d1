"""The service tier a request asks for and the one its response says it got. Pure.

The request names it in the body: ``serviceTier`` (google-genai writes
``GenerateContentConfig.service_tier`` there, values ``flex``, ``standard``, ``priority``) or
``service_tier`` (the Interactions API, REST examples), case-insensitive, and some pages write
``SERVICE_TIER_PRIORITY`` (ai.google.dev/gemini-api/docs/priority-inference, read 2026-12-04).
A Priority request over its limit is served at Standard instead of failing, and the response
says so in its ``x-gemini-service-tier`` header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SERVED_TIER_HEADER", "requested_tier", "served_tier"]

SERVED_TIER_HEADER = "x-gemini-service-tier"

_KNOWN = ("standard", "flex", "priority")


def _norm(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower().removeprefix("service_tier_")
    if text in ("", "unspecified", "default"):
        return "standard"
    return text if text in _KNOWN else None


def requested_tier(body: Mapping[str, Any]) -> str | None:
    """``"standard"``, ``"flex"`` or ``"priority"`` as the body asks, or ``None`` (unnamed)."""
    for where in (body, body.get("generationConfig"), body.get("config")):
        if where is not None and isinstance(where, Mapping):
            for key in ("serviceTier", "service_tier"):
                if key in where:
                    return _norm(where[key])
    return None


def served_tier(headers: Mapping[str, str] | Any, requested: str | None) -> str:
    """The tier a response was served at: its ``x-gemini-service-tier`` header, else the one
    requested (``standard`` when none was)."""
    value = None
    get_list = getattr(headers, "get_list", None)
    if callable(get_list):  # httpx's and httpx2's Headers: no KeyError raised inside when absent
        values = get_list(SERVED_TIER_HEADER)
        value = ", ".join(values) if values else None
    else:
        try:
            value = headers.get(SERVED_TIER_HEADER)
        except AttributeError:
            value = None
    return _norm(value) or requested or "standard"
