"""HTTP routes of the gateway: the signed upstream webhook, the operator endpoints, health and metrics.

``POST /v1/webhooks`` is served by a plain ASGI callable in front of the Starlette application: it is
the hot path, and Starlette's routing, middleware, Request and Response layers cost about as much CPU
as the webhook's own work. Everything else (health, metrics, 404s, 405 for other methods on
/v1/webhooks, the operator endpoints of ``operator_endpoints`` and their ``GET /openapi.json``) goes to
Starlette. The webhook answers as it did when Starlette served it: same status codes, same JSON
bodies, same headers (Content-Type, Content-Length, Retry-After on 503, X-Correlation-Id). The envelope is
validated by ``fast_path`` first; both are listed in docs/architecture.md, "Fast paths".
"""

from __future__ import annotations

import logging
import time
from random import getrandbits

from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts.documents import RefusedDocument, load_document
from gridloop_common.messaging import Publisher, PublishError, RpcClient
from gridloop_common.observability import Health, correlation_id, health_routes
from webhook_gateway import fast_path, forwarding, openapi, signatures
from webhook_gateway.access import OperatorAccess
from webhook_gateway.operator_endpoints import OperatorApi
from webhook_gateway.settings import GatewaySettings

__all__ = ["WEBHOOK_PATH", "GatewayApp", "build_app"]

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/v1/webhooks"
WEBHOOKS = Counter("gridloop_webhooks_total", "Webhook deliveries, by outcome.", ["outcome"])
WEBHOOK_SECONDS = Histogram(
    "gridloop_webhook_seconds",
    "Time to answer a webhook delivery (verification and publisher confirm included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACCEPTED = WEBHOOKS.labels("accepted")
IGNORED = WEBHOOKS.labels("ignored")
RETRY_AFTER_S = 5

_ACCEPTED_PREFIX = b'{"status":"accepted","webhook_id":"'
_ACCEPTED_SUFFIX = b'"}'
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_ID_HEADER = signatures.ID_HEADER.encode("ascii")
_TIMESTAMP_HEADER = signatures.TIMESTAMP_HEADER.encode("ascii")
_SIGNATURE_HEADER = signatures.SIGNATURE_HEADER.encode("ascii")


def _error(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    WEBHOOKS.labels(code).inc()
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


class _Accepted:
    """The 202 for a confirmed webhook, rendered as JSONResponse renders it (the id's charset needs no escaping)."""

    __slots__ = ("webhook_id",)

    def __init__(self, webhook_id: str) -> None:
        self.webhook_id = webhook_id


class _Disconnected(Exception):
    """The client went away before the whole body arrived: there is nobody to answer."""


class WebhookEndpoint:
    """``POST /v1/webhooks`` as an ASGI callable: verify, validate, publish with a confirm, then 202."""

    def __init__(self, *, settings: GatewaySettings, publisher: Publisher, clock: Clock) -> None:
        self._clock = clock
        self._verifier = signatures.Verifier(settings.webhook_secrets(), tolerance_s=settings.webhook_tolerance_s)
        self._limit = settings.webhook_max_body_bytes
        self._publisher = publisher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        # A fresh id per delivery, as correlation_id(None) makes, without a getrandom syscall per request.
        with correlation_id(f"{getrandbits(128):032x}") as trace:
            try:
                outcome = await self._receive(scope, receive)
            except _Disconnected:
                return
            WEBHOOK_SECONDS.observe(time.perf_counter() - started)
            if isinstance(outcome, _Accepted):
                body = _ACCEPTED_PREFIX + outcome.webhook_id.encode("ascii") + _ACCEPTED_SUFFIX
                await send(
                    {
                        "type": "http.response.start",
                        "status": 202,
                        "headers": [
                            (b"content-length", str(len(body)).encode("ascii")),
                            _JSON_CONTENT_TYPE,
                            (b"x-correlation-id", trace.encode("latin-1")),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            outcome.headers["X-Correlation-Id"] = trace
            await outcome(scope, receive, send)

    async def _body(self, receive: Receive, *, declared: bool) -> bytes | None:
        """The whole body, or None once more than the limit arrived (only counted when no length was declared)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if not declared and size > self._limit:
                    return None
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _receive(self, scope: Scope, receive: Receive) -> Response | _Accepted:
        limit = self._limit
        content_type: str | None = None
        declared: str | None = None
        webhook_id = timestamp_text = signature_text = ""
        # First content-type and content-length, as Starlette's Headers.get; last of each webhook header, as
        # signatures.verify reads a header mapping.
        for raw_name, raw_value in scope["headers"]:  # ASGI gives the names lower-case already
            name = raw_name.lower()
            if name == b"content-type":
                if content_type is None:
                    content_type = raw_value.decode("latin-1")
            elif name == b"content-length":
                if declared is None:
                    declared = raw_value.decode("latin-1")
            elif name == _ID_HEADER:
                webhook_id = raw_value.decode("latin-1")
            elif name == _TIMESTAMP_HEADER:
                timestamp_text = raw_value.decode("latin-1")
            elif name == _SIGNATURE_HEADER:
                signature_text = raw_value.decode("latin-1")
        if (content_type or "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "unsupported_media_type", "Content-Type must be application/json")
        # isdigit() alone also takes "²", which int() refuses: ASCII digits only.
        if declared is not None and (not (declared.isascii() and declared.isdigit()) or int(declared) > limit):
            return _error(413, "payload_too_large", f"body must be at most {limit} bytes")
        raw = await self._body(receive, declared=declared is not None)
        if raw is None or len(raw) > limit:
            return _error(413, "payload_too_large", f"body must be at most {limit} bytes")
        try:
            webhook_id = self._verifier.verify(
                webhook_id=webhook_id,
                timestamp_text=timestamp_text,
                signature_text=signature_text,
                body=raw,
                now_s=int(self._clock.now().timestamp()),
            )
        except signatures.SignatureError as error:
            return _error(error.http_status, error.code, str(error))
        event = fast_path.parse_envelope(raw)
        if event is None:
            # Invalid or unusual: the reference path gives the precise answer (400, 422, or ignored).
            try:
                payload = load_document(raw)
            except RefusedDocument as refused:
                # JSON the scheduler could never store (NaN, \u0000, a lone surrogate, ...) or that breaks a
                # parser (nesting, giant numbers): refused here, before anything is published.
                return _error(
                    400,
                    "invalid_json",
                    f"body is not acceptable JSON: {refused}",
                    errors=[{"field": refused.location or "body", "message": refused.problem}],
                )
            try:
                event = forwarding.parse_event(payload)
            except forwarding.UnknownEventType as unknown:
                IGNORED.inc()
                logger.warning(
                    "unknown event type ignored", extra={"event_type": str(unknown), "webhook_id": webhook_id}
                )
                return JSONResponse({"status": "ignored", "reason": f"unknown event type {unknown}"}, status_code=202)
            except forwarding.InvalidEvent as invalid:
                return _error(422, "invalid_event", str(invalid), errors=invalid.errors)
        try:
            await forwarding.forward(self._publisher, event, body=raw, webhook_id=webhook_id)
        except PublishError as error:
            logger.error("webhook not accepted: broker did not confirm", extra={"error": str(error)})
            return _error(503, "broker_unavailable", "could not store the event durably; retry later")
        ACCEPTED.inc()
        if logger.isEnabledFor(logging.INFO):
            logger.info("webhook accepted", extra={"webhook_id": webhook_id, "event_type": event.event_type})
        return _Accepted(webhook_id)


class GatewayApp:
    """The gateway's ASGI application: the webhook endpoint directly, anything else through Starlette."""

    def __init__(self, *, webhook: WebhookEndpoint, fallback: Starlette) -> None:
        self.webhook = webhook
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == WEBHOOK_PATH
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self.webhook(scope, receive, send)
            return
        await self.fallback(scope, receive, send)


def build_app(
    *, settings: GatewaySettings, publisher: Publisher, rpc: RpcClient, health: Health, clock: Clock | None = None
) -> ASGIApp:
    """The gateway's ASGI application; ``clock`` is what signature timestamps, key expiries and MPC defaults read.

    ``rpc`` makes the operator endpoints' calls to the services behind them.
    """
    clock = clock or SystemClock()
    webhook = WebhookEndpoint(settings=settings, publisher=publisher, clock=clock)
    operator = OperatorApi(
        access=OperatorAccess(settings.jwt_secret.get_secret_value(), clock=clock),
        rpc=rpc,
        timeout_s=settings.gateway_rpc_timeout_s,
        max_body_bytes=settings.webhook_max_body_bytes,
        clock=clock,
    )
    description = openapi.document()

    async def serve_openapi(request: Request) -> Response:
        return JSONResponse(description)

    # Exact paths, no slash redirects: a 307 counts as a failed delivery at the sender. The route is also
    # registered here so that other methods get their 405 (and a root_path deployment still works).
    application = Starlette(
        routes=[
            Route(WEBHOOK_PATH, webhook, methods=["POST"]),
            *operator.routes(),
            Route(openapi.OPENAPI_PATH, serve_openapi, methods=["GET"]),
            *health_routes(health),
        ]
    )
    application.router.redirect_slashes = False
    return GatewayApp(webhook=webhook, fallback=application)
