"""Starlette glue shared by every route: the request context and response helpers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ._engine import EmulatorState, Ticket
from ._errors import invalid_argument

__all__ = ["Ctx", "json_response", "settle", "stream_response"]


@dataclass
class Ctx:
    """One authenticated API request.

    Attributes:
        engine: Emulator state.
        request: The Starlette request.
        project: Caller's project.
        version: ``v1`` or ``v1beta``.
        ident: Resource id from the path (model id, file id, ...), if any.
    """

    engine: EmulatorState
    request: Request
    project: str
    version: str
    ident: str | None = None

    async def json(self) -> Any:
        """The parsed JSON body; 400 INVALID_ARGUMENT if it is not JSON."""
        raw = await self.request.body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise invalid_argument(
                f"Invalid JSON payload received. Unexpected token.\n{raw[:40]!r}"
            ) from exc

    async def object(self) -> dict[str, Any]:
        """The parsed JSON body, which must be an object."""
        body = await self.json()
        if not isinstance(body, dict):
            raise invalid_argument("Invalid JSON payload received. Expected an object.")
        return body

    def query(self, name: str) -> str | None:
        """A query parameter."""
        return self.request.query_params.get(name)

    @property
    def base_url(self) -> str:
        """``scheme://host:port`` the client used."""
        return str(self.request.base_url).rstrip("/")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response."""
    return Response(
        json.dumps(data, separators=(",", ":")),
        status_code=status,
        headers=headers,
        media_type="application/json; charset=UTF-8",
    )


async def settle(ticket: Ticket) -> None:
    """Wait the ticket's latency, then raise its injected error, if any."""
    if ticket.latency > 0:
        await anyio.sleep(ticket.latency)
    if ticket.error is not None:
        raise ticket.error


def stream_response(
    pieces: Iterable[str], media_type: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """Stream ``pieces`` one body chunk each."""

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece.encode("utf-8")
            await anyio.lowlevel.checkpoint()

    return StreamingResponse(body(), media_type=media_type, headers=headers)
