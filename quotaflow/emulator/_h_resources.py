"""Native routes of the files (resumable upload protocol) and context caching areas.

Files and caches the caller cannot see (unknown, expired or another project's) get the 403
"not found or permission denied" answer Gemini gives for them.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from ._engine import EmulatorState
from ._errors import JSON, ErrorReply, invalid_argument, permission_denied
from ._http import Ctx, json_response
from ._store import (
    CacheRecord,
    FileRecord,
    UploadSession,
    paginate,
    parse_duration,
    parse_timestamp,
)
from ._tokens import count_request

__all__ = [
    "create_cache",
    "delete_cache",
    "delete_file",
    "download_file",
    "get_cache",
    "get_file",
    "list_caches",
    "list_files",
    "patch_cache",
    "upload",
]

_CHUNK_GRANULARITY = "8388608"


def _page(ctx: Ctx, items: list[Any], default: int, maximum: int) -> tuple[list[Any], str | None]:
    try:
        return paginate(items, ctx.query("pageSize"), ctx.query("pageToken"), default, maximum)
    except ValueError as exc:
        raise invalid_argument(str(exc)) from exc


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


# --- files -------------------------------------------------------------------------------------


async def upload(ctx: Ctx, upload_id: str | None) -> Response:
    """POST /upload/{v}/files: start a resumable upload, or send a chunk of one."""
    headers = ctx.request.headers
    engine = ctx.engine
    if upload_id is None:
        if headers.get("x-goog-upload-protocol", "").lower() != "resumable":
            raise invalid_argument("Only the resumable upload protocol is supported.")
        raw = (await ctx.object()).get("file") or {}
        # Protobuf JSON accepts both spellings; google-genai sends snake_case here.
        meta = {_camel(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}
        try:
            size = int(headers["x-goog-upload-header-content-length"])
        except (KeyError, ValueError) as exc:
            raise invalid_argument("Missing X-Goog-Upload-Header-Content-Length.") from exc
        mime = headers.get("x-goog-upload-header-content-type") or meta.get("mimeType")
        if not mime:
            raise invalid_argument("Missing X-Goog-Upload-Header-Content-Type.")
        with engine.lock:
            sid = engine.store.new_id("upload")
            engine.store.uploads[sid] = UploadSession(ctx.project, dict(meta), size, mime)
        url = f"{ctx.base_url}/upload/{ctx.version}/files?upload_id={sid}&upload_protocol=resumable"
        return Response(
            b"",
            headers={
                "x-goog-upload-url": url,
                "x-goog-upload-control-url": url,
                "x-goog-upload-status": "active",
                "x-goog-upload-chunk-granularity": _CHUNK_GRANULARITY,
            },
        )
    command = {c.strip() for c in headers.get("x-goog-upload-command", "").lower().split(",")}
    data = await ctx.request.body()
    with engine.lock:
        session = engine.store.uploads.get(upload_id)
        if session is None:
            raise ErrorReply(
                404,
                {
                    "error": {
                        "code": 404,
                        "message": "Upload session not found.",
                        "status": "NOT_FOUND",
                    }
                },
            )
        if "upload" in command:
            if int(headers.get("x-goog-upload-offset", "-1")) != len(session.data):
                raise invalid_argument("X-Goog-Upload-Offset does not match the bytes received.")
            session.data.extend(data)
        if "finalize" not in command:
            return Response(b"", headers={"x-goog-upload-status": "active"})
        del engine.store.uploads[upload_id]
        if len(session.data) != session.size:
            raise invalid_argument(
                "Upload size does not match X-Goog-Upload-Header-Content-Length."
            )
        now = engine.clock()
        name = session.meta.get("name") or f"files/{engine.store.new_id('file')}"
        if name in engine.store.files:
            raise ErrorReply(
                409,
                {
                    "error": {
                        "code": 409,
                        "message": f"File {name} already exists.",
                        "status": "ALREADY_EXISTS",
                    }
                },
            )
        record = FileRecord(
            project=session.project,
            name=name,
            display_name=session.meta.get("displayName"),
            mime_type=session.mime_type,
            data=bytes(session.data),
            create_time=now,
            expire_time=now + engine.config.file_ttl_seconds,
        )
        engine.store.files[name] = record
    return json_response(
        {"file": record.to_json(ctx.base_url, ctx.version)},
        headers={"x-goog-upload-status": "final"},
    )


def _live_files(engine: EmulatorState, project: str) -> list[FileRecord]:
    now = engine.clock()
    for name in [n for n, f in engine.store.files.items() if f.expire_time <= now]:
        del engine.store.files[name]
    return engine.store.owned(engine.store.files, project)


def _file(ctx: Ctx) -> FileRecord:
    name = f"files/{ctx.ident}"
    record = next((f for f in _live_files(ctx.engine, ctx.project) if f.name == name), None)
    if record is None:
        raise permission_denied(
            f"You do not have permission to access the File {ctx.ident} or it may not exist."
        )
    return record


async def list_files(ctx: Ctx) -> Response:
    """GET /{v}/files."""
    with ctx.engine.lock:
        page, token = _page(ctx, _live_files(ctx.engine, ctx.project), 10, 100)
    out: JSON = {"files": [f.to_json(ctx.base_url, ctx.version) for f in page]}
    if token:
        out["nextPageToken"] = token
    return json_response(out)


async def get_file(ctx: Ctx) -> Response:
    """GET /{v}/files/{id}."""
    with ctx.engine.lock:
        return json_response(_file(ctx).to_json(ctx.base_url, ctx.version))


async def delete_file(ctx: Ctx) -> Response:
    """DELETE /{v}/files/{id}."""
    with ctx.engine.lock:
        del ctx.engine.store.files[_file(ctx).name]
    return json_response({})


# --- cached contents ---------------------------------------------------------------------------


def _expiry(body: JSON, now: float) -> float | None:
    try:
        if body.get("expireTime"):
            return parse_timestamp(str(body["expireTime"]))
        if body.get("ttl"):
            return now + parse_duration(str(body["ttl"]))
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    return None


def _live_caches(engine: EmulatorState, project: str) -> list[CacheRecord]:
    now = engine.clock()
    for name in [n for n, c in engine.store.caches.items() if c.expire_time <= now]:
        del engine.store.caches[name]
    return engine.store.owned(engine.store.caches, project)


def _cache(ctx: Ctx) -> CacheRecord:
    name = f"cachedContents/{ctx.ident}"
    record = next((c for c in _live_caches(ctx.engine, ctx.project) if c.name == name), None)
    if record is None:
        raise permission_denied("CachedContent not found (or permission denied)")
    return record


async def create_cache(ctx: Ctx) -> Response:
    """POST /{v}/cachedContents."""
    engine = ctx.engine
    body = await ctx.object()
    model = engine.resolve(str(body.get("model", "")), "createCachedContent", ctx.version)
    try:
        tokens = count_request(body, engine.config.media_part_tokens).total
    except ValueError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    if tokens < engine.config.cache_min_tokens:
        raise invalid_argument(
            f"Cached content is too small. total_token_count={tokens}, "
            f"min_total_token_count={engine.config.cache_min_tokens}"
        )
    with engine.lock:
        now = engine.clock()
        expire = _expiry(body, now) or now + 3600.0
        name = f"cachedContents/{engine.store.new_id('cache')}"
        record = CacheRecord(
            ctx.project, name, model.name, body.get("displayName"), tokens, now, now, expire
        )
        engine.store.caches[name] = record
        return json_response(record.to_json())


async def list_caches(ctx: Ctx) -> Response:
    """GET /{v}/cachedContents."""
    with ctx.engine.lock:
        page, token = _page(ctx, _live_caches(ctx.engine, ctx.project), 10, 1000)
        out: JSON = {"cachedContents": [c.to_json() for c in page]}
    if token:
        out["nextPageToken"] = token
    return json_response(out)


async def get_cache(ctx: Ctx) -> Response:
    """GET /{v}/cachedContents/{id}."""
    with ctx.engine.lock:
        return json_response(_cache(ctx).to_json())


async def patch_cache(ctx: Ctx) -> Response:
    """PATCH /{v}/cachedContents/{id}: only ``ttl`` or ``expireTime`` may change."""
    body = await ctx.object()
    other = sorted(set(body) - {"ttl", "expireTime", "name"})
    if other:
        raise invalid_argument(f"CachedContent field {other[0]!r} cannot be updated.")
    with ctx.engine.lock:
        record = _cache(ctx)
        now = ctx.engine.clock()
        expire = _expiry(body, now)
        if expire is None:
            raise invalid_argument("Either ttl or expire_time must be set.")
        record.expire_time = expire
        record.update_time = now
        return json_response(record.to_json())


async def delete_cache(ctx: Ctx) -> Response:
    """DELETE /{v}/cachedContents/{id}."""
    with ctx.engine.lock:
        del ctx.engine.store.caches[_cache(ctx).name]
    return json_response({})


async def download_file(ctx: Ctx) -> Response:
    """GET /{v}/files/{id}:download: the raw bytes of a file (e.g. batch results)."""
    with ctx.engine.lock:
        record = _file(ctx)
    return Response(record.data, media_type=record.mime_type)
