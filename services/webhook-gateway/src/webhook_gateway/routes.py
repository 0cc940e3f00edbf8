"""HTTP routes of the gateway: the signed upstream webhook, health and metrics."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gridloop_common.messaging import Publisher, PublishError
from gridloop_common.observability import Health, correlation_id, health_routes
from webhook_gateway import forwarding, signatures
from webhook_gateway.settings import GatewaySettings

__all__ = ["build_app"]

logger = logging.getLogger(__name__)

WEBHOOKS = Counter("gridloop_webhooks_total", "Webhook deliveries, by outcome.", ["outcome"])
WEBHOOK_SECONDS = Histogram(
    "gridloop_webhook_seconds",
    "Time to answer a webhook delivery (verification and publisher confirm included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACCEPTED = WEBHOOKS.labels("accepted")
RETRY_AFTER_S = 5


def _error(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    WEBHOOKS.labels(code).inc()
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


def build_app(*, settings: GatewaySettings, publisher: Publisher, health: Health) -> Starlette:
    """The gateway's ASGI application."""
    secrets = settings.webhook_secrets()
    limit = settings.webhook_max_body_bytes

    async def receive_webhook(request: Request) -> Response:
        with WEBHOOK_SECONDS.time(), correlation_id(None) as trace:
            response = await _receive(request)
            response.headers["X-Correlation-Id"] = trace
            return response

    async def _receive(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(415, "unsupported_media_type", "Content-Type must be application/json")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _error(413, "payload_too_large", f"body must be at most {limit} bytes")
        if declared is not None:
            raw = await request.body()  # bounded: the declared length was checked above
        else:
            chunks = bytearray()  # chunked upload: count as it arrives
            async for chunk in request.stream():
                chunks.extend(chunk)
                if len(chunks) > limit:
                    return _error(413, "payload_too_large", f"body must be at most {limit} bytes")
            raw = bytes(chunks)
        if len(raw) > limit:
            return _error(413, "payload_too_large", f"body must be at most {limit} bytes")
        try:
            webhook_id = signatures.verify(
                headers=request.headers,
                body=raw,
                secrets=secrets,
                now=datetime.now(tz=UTC),
                tolerance_s=settings.webhook_tolerance_s,
            )
        except signatures.SignatureError as error:
            return _error(error.http_status, error.code, str(error))
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return _error(400, "invalid_json", f"body is not JSON: {error}")
        try:
            event = forwarding.parse_event(payload)
        except forwarding.UnknownEventType as unknown:
            WEBHOOKS.labels("ignored").inc()
            logger.warning("unknown event type ignored", extra={"event_type": str(unknown), "webhook_id": webhook_id})
            return JSONResponse({"status": "ignored", "reason": f"unknown event type {unknown}"}, status_code=202)
        except forwarding.InvalidEvent as invalid:
            return _error(422, "invalid_event", str(invalid), errors=invalid.errors)
        try:
            await forwarding.forward(publisher, event, body=raw, webhook_id=webhook_id)
        except PublishError as error:
            logger.error("webhook not accepted: broker did not confirm", extra={"error": str(error)})
            return _error(503, "broker_unavailable", "could not store the event durably; retry later")
        ACCEPTED.inc()
        logger.info(
            "webhook accepted",
            extra={"webhook_id": webhook_id, "event_type": event.event_type},
        )
        return JSONResponse({"status": "accepted", "webhook_id": webhook_id}, status_code=202)

    # Exact paths, no slash redirects: a 307 counts as a failed delivery at the sender.
    application = Starlette(routes=[Route("/v1/webhooks", receive_webhook, methods=["POST"]), *health_routes(health)])
    application.router.redirect_slashes = False
    return application
