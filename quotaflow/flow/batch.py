"""What the flow keeps of unmetered calls: batch jobs' ends (their enqueued tokens come back)
and files' metadata (their sizes size later calls)."""

from __future__ import annotations

import re
from collections.abc import Generator, Mapping
from typing import Any

from quotaflow.clock import Clock
from quotaflow.flow.effects import Effect, Settle
from quotaflow.flow.held import BATCH_TERMINAL, BatchHold, Held
from quotaflow.flow.settings import Settings, log
from quotaflow.flow.sizing import parse_body
from quotaflow.gemini import (
    Call,
    FileMeta,
)

_BATCH_NAME = re.compile(r"(batches/[^/:?]+)")
_FILE_NAME = re.compile(r"(files/[^/:?]+)")


def batch_file(body: Mapping[str, Any]) -> str | None:
    batch = body.get("batch")
    config = batch.get("inputConfig") if isinstance(batch, dict) else None
    name = config.get("fileName") if isinstance(config, dict) else None
    return name if isinstance(name, str) and _FILE_NAME.fullmatch(name) else None


def batch_job(call: Call) -> bool:
    """Whether ``call`` creates a batch job: not metered itself, its requests spend an agent's
    budget (:func:`batch_requests` of them)."""
    return call.area == "batch" and call.creates and not call.metered


def batch_requests(body: Mapping[str, Any]) -> int:
    """The requests a batch create holds: its inline requests, or 1 for an input file (its
    lines are not read here)."""
    batch = body.get("batch")
    if not isinstance(batch, dict):
        return 1
    config = batch.get("inputConfig", batch.get("input_config"))
    inline = config.get("requests") if isinstance(config, dict) else None
    items = inline.get("requests") if isinstance(inline, dict) else None
    return max(1, len(items)) if isinstance(items, list) else 1


def sibling(path: str, *, version: str | None, name: str) -> str:
    """The path of resource ``name`` under the same prefix and version as ``path``."""
    head = path[: path.find(f"/{version}/") + 1] if version and f"/{version}/" in path else "/"
    return f"{head}{version or 'v1beta'}/{name}"


def batch_ended(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata")
    state = obj.get("state")
    if isinstance(meta, dict):
        state = meta.get("state", state)
    return obj.get("done") is True or state in BATCH_TERMINAL


def batch_created(
    raw: bytes,
    permit: Any,
    held: Held,
    model: str,
    tokens: int,
    clock: Clock,
    settings: Settings,
) -> Generator[Effect, Any, None]:
    """Keep the new job's hold under its name, or give it back if the job is already over."""
    obj = parse_body(raw)
    name = obj.get("name")
    if isinstance(name, str) and name and not batch_ended(obj):
        held.hold(BatchHold(name, model, tokens, clock.now() + settings.batch_expiry, permit))
        return
    yield Settle(permit, None)


def observes(call: Call, held: Held) -> bool:
    """Whether the response of an unmetered call says something the limiter keeps: a batch
    job's state (while any job holds tokens) or a file's metadata."""
    if call.area == "batch":
        return bool(held) and call.action in ("get", "list", "cancel", "delete")
    return call.area == "files" and call.action in ("get", "list", "delete")


def observe(call: Call, status: int, raw: bytes, held: Held) -> Generator[Effect, Any, None]:
    obj = parse_body(raw)
    if call.area == "files":
        if status >= 300:
            return
        if call.action == "delete":
            m = _FILE_NAME.search(call.path)
            if m:
                held.files.forget(m.group(1))
            return
        items = obj.get("files") if call.action == "list" else [obj]
        for f in items if isinstance(items, list) else ():
            if isinstance(f, dict) and isinstance(f.get("name"), str):
                held.files.put(f["name"], FileMeta.from_json(f))
        return
    ended: list[str] = []
    m = _BATCH_NAME.search(call.path)
    if call.action in ("cancel", "delete"):
        if m and (status < 300 or status == 404):
            ended.append(m.group(1))
    elif call.action == "get":
        if m and (status == 404 or (status < 300 and batch_ended(obj))):
            ended.append(m.group(1))
    elif status < 300:
        jobs = obj.get("operations", obj.get("batches"))
        for job in jobs if isinstance(jobs, list) else ():
            if isinstance(job, dict) and isinstance(job.get("name"), str) and batch_ended(job):
                ended.append(job["name"])
    for name in ended:
        hold = held.end(name)
        if hold is not None:
            log.info("%s ended; %d enqueued tokens of %s given back", name, hold.tokens, hold.model)
            yield Settle(hold.permit, None)
