"""The grid operator's endpoints (docs/design.md §8): checked here, then one RPC to the service that owns the work.

Each request goes through, in this order: the API key (``access``: 401, 403), the body (Content-Type 415,
size 413, JSON 400, the endpoint's contract model 422 naming every bad field), then one call on
``gridloop.rpc`` with the model's JSON (routing keys in ``routing.OperatorRpc``). The service answers an
``OperatorReply``, whose status and body become the answer. No reply within GRIDLOOP_GATEWAY_RPC_TIMEOUT_S
is a 504, a broker that cannot take the request a 503, a failed or malformed reply a 502; never a 500 and
never a hang. The other endpoints of §8 answer 501 naming the issue that builds them.

An empty body means ``{}`` (every field at its default), except on ``POST /calculate_mpc``, where it stops
the MPC (the Grid Services API's meaning). Only then may the scope come as query parameters (``?site=a``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gridloop_common.clock import Clock
from gridloop_common.contracts import (
    DayAheadCoordinationRequest,
    FlatTariffRequest,
    MpcRequest,
    MpcStopRequest,
    OperatorReply,
    OptimizationStatusRequest,
    ShiftConsumptionTariffRequest,
    TimeOfUseTariffRequest,
)
from gridloop_common.contracts.documents import RefusedDocument, load_document
from gridloop_common.contracts.routing import OperatorRpc
from gridloop_common.messaging import PublishError, RpcClient, RpcError, RpcTimeout, UnroutableError
from gridloop_common.observability import correlation_id
from webhook_gateway.access import AccessDenied, OperatorAccess
from webhook_gateway.forwarding import field_errors

__all__ = ["ENDPOINTS", "NOT_BUILT", "NotBuilt", "OperatorApi", "OperatorEndpoint"]

logger = logging.getLogger(__name__)

OPERATOR_ANSWERS = Counter(
    "gridloop_operator_requests_total",
    "Requests to the operator endpoints, by path and answer status.",
    ["path", "status"],
)
OPERATOR_SECONDS = Histogram(
    "gridloop_operator_request_seconds",
    "Time to answer an operator request, its RPC included.",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRY_AFTER_S = 5
# Enough to name every field of the largest body; a body with more wrong than that gets the first ones.
MOST_FIELD_ERRORS = 50


@dataclass(frozen=True)
class OperatorEndpoint:
    """``POST path``: a body of ``request``, sent on ``routing_key``."""

    path: str
    routing_key: str
    request: type[BaseModel]
    summary: str
    # Where a request without a body goes instead (POST /calculate_mpc: stop the MPC); None: as ``{}``.
    without_body: tuple[str, type[BaseModel], str] | None = None


ENDPOINTS: Final = (
    OperatorEndpoint(
        "/calculate_mpc",
        OperatorRpc.CALCULATE_MPC,
        MpcRequest,
        "Start, or replace, the receding-horizon MPC for the scope; answers its first plan.",
        without_body=(OperatorRpc.STOP_MPC, MpcStopRequest, "Without a body: stop the MPC for the scope."),
    ),
    OperatorEndpoint(
        "/coordinatedac",
        OperatorRpc.COORDINATE_DAY_AHEAD,
        DayAheadCoordinationRequest,
        "Day-ahead coordination: plan the next local day (144 x 10 min) for every site in scope.",
    ),
    OperatorEndpoint(
        "/request_optimization_status",
        OperatorRpc.OPTIMIZATION_STATUS,
        OptimizationStatusRequest,
        "The last optimization runs, or the one named by run_id.",
    ),
    OperatorEndpoint(
        "/flattariff", OperatorRpc.FLAT_TARIFF, FlatTariffRequest, "A flat tariff for a day; runs the day's plan."
    ),
    OperatorEndpoint(
        "/toutariff",
        OperatorRpc.TIME_OF_USE_TARIFF,
        TimeOfUseTariffRequest,
        "A time-of-use tariff (one on-peak window) for a day; runs the day's plan.",
    ),
    OperatorEndpoint(
        "/shift-consumption-tariff",
        OperatorRpc.SHIFT_CONSUMPTION_TARIFF,
        ShiftConsumptionTariffRequest,
        "A flat price scaled in an increase and a reduction window for a day; runs the day's plan.",
    ),
)


@dataclass(frozen=True)
class NotBuilt:
    """An endpoint of docs/design.md §8 that a later issue builds: 501 until then."""

    method: str
    path: str
    issue: int
    what: str


NOT_BUILT: Final = (
    NotBuilt("POST", "/write_device_type_setpoint", 20, "direct load control"),
    NotBuilt("POST", "/power_limit", 20, "the site import cap"),
    NotBuilt("GET", "/getflexibility", 20, "flexibility estimates"),
    NotBuilt("POST", "/paidcontrolrequest", 20, "paid control"),
    NotBuilt("POST", "/request_paid_device_control", 20, "paid control"),
)


def _error(status: int, error: str, message: str, **extra: object) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)


def _invalid(errors: list[dict[str, str]]) -> JSONResponse:
    message = "; ".join(f"{each['field']}: {each['message']}" for each in errors)
    return _error(422, "invalid_request", message, errors=errors)


class _TooLarge(Exception):
    """The body is over the limit."""


class OperatorApi:
    """The operator endpoints, as Starlette routes; one instance per gateway."""

    def __init__(
        self, *, access: OperatorAccess, rpc: RpcClient, timeout_s: float, max_body_bytes: int, clock: Clock
    ) -> None:
        self._access = access
        self._rpc = rpc
        self._timeout_s = timeout_s
        self._limit = max_body_bytes
        self._clock = clock

    def routes(self) -> list[Route]:
        routes = [Route(endpoint.path, self._endpoint(endpoint), methods=["POST"]) for endpoint in ENDPOINTS]
        routes += [Route(each.path, self._not_built(each), methods=[each.method]) for each in NOT_BUILT]
        return routes

    def _endpoint(self, endpoint: OperatorEndpoint) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            return await self._answer(endpoint.path, request, lambda: self._serve(endpoint, request))

        return serve

    def _not_built(self, not_built: NotBuilt) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            async def answer() -> Response:
                return _error(
                    501,
                    "not_implemented",
                    f"{not_built.method} {not_built.path} ({not_built.what}) is not built yet: gridloop issue "
                    f"{not_built.issue} builds it",
                )

            return await self._answer(not_built.path, request, answer)

        return serve

    async def _answer(self, path: str, request: Request, serve: Callable[[], Awaitable[Response]]) -> Response:
        """Correlation id, key check, metrics and the log line around one request."""
        started = time.perf_counter()
        with correlation_id(None) as trace:
            try:
                self._access.check(request.headers)
            except AccessDenied as denied:
                response: Response = _error(denied.status, denied.error, denied.message)
                if denied.challenge:
                    response.headers["WWW-Authenticate"] = denied.challenge
            else:
                response = await serve()
            response.headers["X-Correlation-Id"] = trace
            OPERATOR_ANSWERS.labels(path, str(response.status_code)).inc()
            OPERATOR_SECONDS.labels(path).observe(time.perf_counter() - started)
            logger.info("operator request answered", extra={"path": path, "status": response.status_code})
        return response

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not (declared.isascii() and declared.isdigit()) or int(declared) > self._limit):
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def _serve(self, endpoint: OperatorEndpoint, request: Request) -> Response:
        try:
            raw = await self._body(request)
        except _TooLarge:
            return _error(413, "payload_too_large", f"body must be at most {self._limit} bytes")
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        routing_key, model = endpoint.routing_key, endpoint.request
        sites = request.query_params.getlist("site")
        if not raw.strip():
            if endpoint.without_body is not None:
                routing_key, model, _ = endpoint.without_body
            payload: Any = {"site": sites} if sites else {}
        else:
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != "application/json":
                return _error(415, "unsupported_media_type", "Content-Type must be application/json")
            if sites:
                return _invalid(
                    [{"field": "query.site", "message": "with a body, give the scope as the body's site field"}]
                )
            try:
                payload = load_document(raw)
            except RefusedDocument as refused:
                return _error(
                    400,
                    "invalid_json",
                    f"body is not acceptable JSON: {refused}",
                    errors=[{"field": refused.location or "body", "message": refused.problem}],
                )
            if not isinstance(payload, dict):
                return _invalid([{"field": "body", "message": "must be a JSON object"}])
        try:
            parsed = model.model_validate(payload)
            if isinstance(parsed, MpcRequest):
                parsed = parsed.resolved(self._clock.now())
        except ValidationError as error:
            return _invalid(field_errors(error, limit=MOST_FIELD_ERRORS))
        return await self._call(routing_key, parsed.model_dump_json().encode())

    async def _call(self, routing_key: str, body: bytes) -> Response:
        """One RPC and its reply as the answer."""
        try:
            raw = await self._rpc.call(routing_key, body, timeout_s=self._timeout_s)
        except RpcTimeout as timeout:
            logger.warning("operator request unanswered", extra={"routing_key": routing_key, "error": str(timeout)})
            return _error(504, "gateway_timeout", str(timeout))
        except RpcError as failed:
            logger.warning("operator request failed", extra={"routing_key": routing_key, "error": str(failed)})
            return _error(502, "bad_gateway", f"{routing_key} failed: {failed}")
        except UnroutableError as unroutable:
            logger.warning("operator request unroutable", extra={"routing_key": routing_key})
            return _error(503, "service_unavailable", f"nothing serves {routing_key}: {unroutable}")
        except PublishError as unavailable:
            logger.warning("operator request not sent", extra={"routing_key": routing_key, "error": str(unavailable)})
            return _error(503, "broker_unavailable", f"could not send the request to {routing_key}; retry later")
        try:
            reply = OperatorReply.model_validate(load_document(raw))
        except (RefusedDocument, ValidationError) as error:
            logger.warning("operator reply malformed", extra={"routing_key": routing_key, "error": str(error)})
            return _error(502, "bad_gateway", f"{routing_key} sent a reply that is not an OperatorReply")
        return JSONResponse(reply.body, status_code=reply.status)
