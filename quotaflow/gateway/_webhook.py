"""The gateway's route for Gemini's batch webhooks: a signed delivery of a batch job's end gives
the job's enqueued tokens back at once (:class:`~quotaflow.transports.webhooks.BatchWebhooks`).
It takes no agent token: the signature is the credential."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from quotaflow.transports.webhooks import BatchWebhooks, WebhookError

__all__ = ["webhook_endpoint"]

log = logging.getLogger("quotaflow.gateway")

_MAX_BODY = 1024 * 1024  # an event is a few hundred bytes


def webhook_endpoint(hooks: BatchWebhooks) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of the webhook route: 204 once handled (a duplicate too), 401 or
    400 naming the problem (never the secret), 413 for a body no event needs."""

    async def endpoint(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > _MAX_BODY:
            return Response("too large", 413, media_type="text/plain")
        try:
            event = await hooks.handle(dict(request.headers), await request.body())
        except WebhookError as exc:
            log.warning("a webhook delivery was refused: %s", exc.problem)
            status = 400 if exc.problem in ("not JSON", "no type") else 401
            return Response(exc.problem, status, media_type="text/plain")
        if event.tokens:
            log.info("%s: %s, %d enqueued tokens given back", event.batch, event.type, event.tokens)
        return Response(status_code=204)

    return endpoint
