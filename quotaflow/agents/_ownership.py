"""Who created which resource: the ``own`` scope's memory. In-memory, per process.

A resource created through an agent's transport (an uploaded file, a cache, a batch, a tuned
model, an interaction) is recorded under that agent's name from the create response (a
streamed interaction's from its first event, before the caller reads it); a delete through
quotaflow forgets it. The record lives in this process only: resources created elsewhere
(another process, the console) have no known owner, so an ``own`` grant cannot change them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["Ownership", "created_interaction", "created_name"]


class Ownership:
    """A thread-safe map of resource name to the agent that created it."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, resource: str, agent: str) -> None:
        """Note that ``agent`` created ``resource``."""
        with self._lock:
            self._owners[resource] = agent

    def owner(self, resource: str) -> str | None:
        """The agent that created ``resource``, if known."""
        with self._lock:
            return self._owners.get(resource)

    def forget(self, resource: str) -> None:
        """Forget ``resource`` (deleted)."""
        with self._lock:
            self._owners.pop(resource, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._owners)

    def __repr__(self) -> str:
        return f"Ownership({len(self)} resources)"


def created_name(body: Mapping[str, Any]) -> str | None:
    """The name of the resource a create response describes.

    Handles an upload (``{"file": {"name": "files/x"}}``), a cache or batch
    (``{"name": "cachedContents/x"}``) and a tuning operation
    (``{"name": "tunedModels/x/operations/y", "metadata": {"tunedModel": "tunedModels/x"}}``).
    """
    file = body.get("file")
    if isinstance(file, Mapping) and isinstance(file.get("name"), str):
        return str(file["name"])
    meta = body.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("tunedModel"), str):
        return str(meta["tunedModel"])
    name = body.get("name")
    if isinstance(name, str) and name:
        return name.split("/operations/", 1)[0]
    return None


def created_interaction(body: Mapping[str, Any]) -> str | None:
    """The name (``interactions/<id>``) of the interaction a create response describes: the
    interaction itself (``{"id": "x", ...}``) or a stream event that holds it
    (``{"event_type": "interaction.created", "interaction": {"id": "x", ...}}``)."""
    inner = body.get("interaction")
    if isinstance(inner, Mapping):
        ident = inner.get("id")
    elif "event_type" in body:  # another event of the stream (a step, a delta)
        return None
    else:
        ident = body.get("id")
    return f"interactions/{ident}" if isinstance(ident, str) and ident else None
