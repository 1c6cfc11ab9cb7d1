"""The Live API's WebSocket (``BidiGenerateContent``) through the gateway.

A session is judged when its first message (``setup``, naming the model) arrives: the agent
needs ``write`` in the ``live`` area with the model matching its globs, and a free slot under
the concurrent-session limits (per agent and per model, across the replicas on one
backend). The session then
takes one request of the model's quota (the agent's share and budget included; a model the
limiter has no limits for is only counted), is relayed both ways with the real key upstream,
is settled at its end with the sum of ``promptTokenCount`` over the server's ``usageMetadata``
messages, and writes one audit record.

Refusals close the socket before anything reaches upstream: 1008 (policy violation) for a
token or a grant, 1013 (try again later) for the session limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from quotaflow.agents.audit import AuditRecord
from quotaflow.agents.grants import _match, body_references, decide_references, may_reference
from quotaflow.errors import QuotaflowError
from quotaflow.gemini import Call
from quotaflow.limiter import Limiter
from quotaflow.limits import Concurrent, Limit

if TYPE_CHECKING:
    from quotaflow.gateway._app import Gateway

__all__ = ["LiveProxy"]

log = logging.getLogger("quotaflow.gateway")
# the upstream client's own logger: websockets logs a handshake's headers (the real key) at
# DEBUG, so this one never logs
_quiet = logging.getLogger("quotaflow.gateway._live_upstream")
_quiet.disabled = True
_quiet.propagate = False


def _model_of(setup: Any) -> str | None:
    if not isinstance(setup, dict):
        return None
    inner = setup.get("setup")
    model = inner.get("model") if isinstance(inner, dict) else None
    return model.removeprefix("models/") if isinstance(model, str) and model else None


def _input_tokens(message: bytes | str) -> int | None:
    try:
        data = json.loads(message)
    except ValueError:
        return None
    usage = data.get("usageMetadata") if isinstance(data, dict) else None
    value = usage.get("promptTokenCount") if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_LIVE_CALL = Call("GET", "/ws/BidiGenerateContent", "gemini", None, "BidiGenerateContent",
                  "other", "write")  # fmt: skip


def _refused_reference(gateway: Gateway, agent: str, message: bytes | str) -> str | None:
    """Why a message of the session may not go upstream: it names a resource (a file in a
    part, a cache, a tuned model) the agent may not use, as a request body may not."""
    raw = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message
    if not may_reference(raw):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None  # not JSON: the upstream refuses it
    agents = gateway.agents
    refused = decide_references(
        agents.policy, agent, _LIVE_CALL, body_references(data), agents.ownership.owner
    )
    return refused.reason if refused is not None else None


# a replica that dies without closing its sessions gives their slots back within this
SESSION_HOLD = 3600.0


def _scope(kind: str, name: str) -> str:
    # agent and model names hold characters a scope name may not: a digest names the scope
    return f"live-{kind}-{hashlib.sha256(name.encode()).hexdigest()[:20]}"


class LiveSessions:
    """The concurrent-session limits, held in the limiter's backend (so on a Redis backend
    they hold across replicas): a ``Concurrent`` limit per agent and per model, each in a scope
    of its own (namespace ``live:``, which no model name reaches)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._limiters: dict[str, Limiter] = {}

    def _limiter(self, scope: str, amount: int) -> Limiter:
        lim = self._limiters.get(scope)
        if lim is None:
            base = self.gateway.limiter
            limit = Limit("sessions", amount, SESSION_HOLD, "requests", Concurrent())
            lim = Limiter(
                tier=None,
                quotas={scope: [limit]},
                backend=base.backend,
                clock=base.clock,
                project=base._core.project,
                spend=False,
            )
            lim._core.namespace = "live:"
            self._limiters[scope] = lim
        return lim

    async def take(self, agent: str, model: str) -> list[Any] | None:
        """A slot under both limits (``None``: one of them is full, or the backend failed)."""
        cfg = self.gateway.config
        held: list[Any] = []
        for scope, amount in (
            (_scope("agent", agent), cfg.live_max_per_agent),
            (_scope("model", model), cfg.live_max_per_model),
        ):
            try:
                held.append(await self._limiter(scope, amount).acquire_nowait(scope))
            except QuotaflowError:
                await self.give_back(held)
                return None
        return held

    @staticmethod
    async def give_back(held: list[Any]) -> None:
        for permit in held:
            with contextlib.suppress(Exception):
                await permit.release()


class LiveProxy:
    """The WebSocket endpoint (mounted by :class:`~quotaflow.gateway.Gateway`)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.sessions = LiveSessions(gateway)
        # this replica's open sessions, per agent (the limits are the backend's)
        self.per_agent: Counter[str] = Counter()

    def _token(self, ws: WebSocket) -> str | None:
        h = ws.headers.get("x-goog-api-key")
        if h:
            return str(h).strip()
        query: bytes = ws.scope.get("query_string", b"")
        for k, v in parse_qsl(query.decode("latin-1")):
            if k.casefold().lstrip("$") == "key" and v:
                return v.strip()
        return None

    async def serve(self, ws: WebSocket) -> None:
        """Judge, relay, settle and audit one Live session."""
        gw = self.gateway
        start = time.time()
        token = self._token(ws)
        entry = gw.tokens.lookup(token) if token else None
        path = ws.scope.get("path", "")
        if entry is None:
            gw._access_ws(ws, None, 403, "no_token" if token is None else "bad_token")
            await ws.close(code=1008, reason="no valid agent token")
            return
        await ws.accept()
        try:
            first = await ws.receive_text()
        except WebSocketDisconnect:
            return
        try:
            setup = json.loads(first)
        except ValueError:
            setup = None
        model = _model_of(setup)
        spec = gw.config.policy.for_agent(entry.agent)
        grant = spec.grant("live") if spec is not None else None
        reason = ""
        if model is None:
            reason = "malformed"
        elif (refused := _refused_reference(gw, entry.agent, first)) is not None:
            reason = refused
        elif grant is None or grant.access != "write":
            reason = "no_grant"
        elif grant.models and not any(_match(model, p) for p in grant.models):
            reason = "model_denied"
        elif "BidiGenerateContent" in grant.deny or (
            grant.allow and "BidiGenerateContent" not in grant.allow
        ):
            reason = "method_denied"
        record = dict(
            time=start, agent=entry.agent, method="BidiGenerateContent", http_method="GET",
            path=path, area="live", access="write", model=model,
        )  # fmt: skip
        if reason:
            self._audit(record, "denied", reason, "denied", 403)
            gw._access_ws(ws, entry, 403, reason)
            await ws.close(code=1008, reason=f"quotaflow policy: {reason}")
            return
        assert model is not None
        slots = await self.sessions.take(entry.agent, model)
        if slots is None:
            self._audit(record, "denied", "live_sessions", "denied", 429)
            gw._access_ws(ws, entry, 429, "live_sessions")
            await ws.close(code=1013, reason="too many concurrent Live sessions; retry later")
            return
        self.per_agent[entry.agent] += 1
        try:
            await self._session(ws, entry.agent, model, first, record)
        finally:
            with anyio.CancelScope(shield=True):
                await self.sessions.give_back(slots)
            self.per_agent[entry.agent] -= 1

    async def _session(
        self, ws: WebSocket, agent: str, model: str, first: str, record: dict[str, Any]
    ) -> None:
        from websockets.asyncio.client import connect

        gw = self.gateway
        permit: Any = None
        try:
            permit = await gw.agents.agent(agent).acquire(model)
        except QuotaflowError as exc:
            if type(exc).__name__ != "UnknownModelError":  # a Live-only model: count sessions
                self._audit(record, "denied", "budget", "denied", 429)
                await ws.close(code=1013, reason="quota: " + type(exc).__name__)
                return
        base = gw.config.upstream.replace("http://", "ws://").replace("https://", "wss://")
        url = base + ws.scope.get("path", "")
        tokens = 0
        outcome, error = "ok", None
        try:
            headers = await gw._auth.live_headers()
            async with connect(url, additional_headers=headers, logger=_quiet) as up:
                if permit is not None:
                    permit.mark_sent()
                await up.send(first)

                async def down() -> None:
                    nonlocal tokens
                    async for message in up:
                        seen = _input_tokens(message)
                        if seen is not None:  # each turn's usage comes once
                            tokens += seen
                        if isinstance(message, bytes):
                            await ws.send_bytes(message)
                        else:
                            await ws.send_text(message)
                    tg.cancel_scope.cancel()

                async def upward() -> None:
                    while True:
                        msg = await ws.receive()
                        if msg["type"] == "websocket.disconnect":
                            break
                        data = msg.get("text")
                        out = data if data is not None else msg.get("bytes") or b""
                        refused = _refused_reference(gw, agent, out)
                        if refused is not None:  # never sent: the session ends here
                            nonlocal outcome, error
                            outcome, error = "denied", f"quotaflow policy: {refused}"
                            await ws.close(code=1008, reason=f"quotaflow policy: {refused}")
                            break
                        await up.send(out)
                    tg.cancel_scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(down)
                    tg.start_soon(upward)
        except Exception as exc:  # the upstream refused or broke off
            outcome, error = "error", type(exc).__name__
        finally:
            with anyio.CancelScope(shield=True):
                if permit is not None:
                    with contextlib.suppress(Exception):
                        await permit.settle(input_tokens=tokens)
                with contextlib.suppress(Exception):
                    await ws.close()
            record["tokens_actual"] = tokens
            self._audit(record, "allowed", "granted", outcome, 101, error)
            gw._access_ws(ws, None, 101, outcome, agent=agent)

    def _audit(
        self,
        record: dict[str, Any],
        decision: str,
        reason: str,
        outcome: str,
        status: int,
        error: str | None = None,
    ) -> None:
        runtime = self.gateway.agents.audit
        fields = {**record, "decision": decision, "reason": reason, "outcome": outcome}
        fields["status"] = status
        fields["duration"] = time.time() - record["time"]
        if error is not None:
            fields["error"] = error
        try:
            runtime.emit(AuditRecord(**fields))
        except TypeError:  # pragma: no cover - an older AuditRecord
            log.warning("quotaflow gateway: Live audit record not written")
