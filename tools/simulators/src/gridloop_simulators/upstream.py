"""Upstream aggregator simulator (docs/design.md §2-3): holds commands, serves the API, records acks, sends webhooks."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "Delivery",
    "DeliveryAttempt",
    "UpstreamSimulator",
    "build_app",
    "demo_command",
    "main",
    "sign",
]

logger = logging.getLogger(__name__)

Command = dict[str, Any]

COMMAND_FIELDS = frozenset(
    {
        "id",
        "event_id",
        "device_id",
        "starts_at",
        "ends_at",
        "duration_s",
        "is_preparatory_action",
        "battery_commands",
        "status",
        "device_status",
        "device_status_reason",
        "created_at",
        "updated_at",
    }
)
BATTERY_COMMAND_FIELDS = (  # in the upstream's documented order, which is also the order they are served in
    "mode",
    "power_mode",
    "setpoint_w",
    "enable_grid_import",
    "enable_grid_export",
    "backup_reserve_percentage",
    "maximum_charge_percentage",
)
MODES = frozenset({"BACKUP", "CHARGE", "DISCHARGE", "SAVINGS", "SELF_CONSUMPTION", "STANDBY"})
POWER_MODES = frozenset({"FOLLOW_LOAD", "SETPOINT"})
STATUSES = frozenset({"OK", "CANCELED", "OPT_OUT"})
DEVICE_STATUSES = frozenset({"PENDING", "OK", "FAILED"})
# What an integrator may set: PENDING is the upstream's own value, never an acknowledgement.
ACK_DEVICE_STATUSES = frozenset({"OK", "FAILED"})
CANCEL_REASONS = {
    "CANCELED": "Canceled by the utility; acknowledge the cancelation",
    "OPT_OUT": "The site opted out; acknowledge the cancelation",
}

# POST /v1/telemetry/BATTERY, as the upstream documents it (docs/design.md §5).
TELEMETRY_MAX_POINTS = 1000
TELEMETRY_NON_NEGATIVE_FIELDS = (  # W and Wh, each >= 0
    "battery_last_power_charge_w",
    "battery_last_power_discharge_w",
    "battery_total_energy_charge_wh",
    "battery_total_energy_discharge_wh",
    "battery_last_stored_energy_wh",
    "battery_last_capacity_energy_wh",
    "home_total_energy_wh",
    "home_last_power_w",
    "solar_total_energy_wh",
    "solar_last_power_w",
)
TELEMETRY_PERCENT_FIELDS = ("battery_last_state_of_charge_percentage", "battery_last_state_of_health_percentage")
# Deprecated upstream: accepted when sent, null or not, and ignored.
TELEMETRY_DEPRECATED_FIELDS = ("battery_last_backup_reserve_percentage",)
# Null when the point is offline, never null when it is online.
TELEMETRY_NULLABLE_FIELDS = (
    "last_mode",
    *TELEMETRY_NON_NEGATIVE_FIELDS,
    *TELEMETRY_PERCENT_FIELDS,
    "last_is_grid_online",
)
TELEMETRY_FIELDS = frozenset(
    {
        "start_time",
        "duration_s",
        "device_id",
        "last_is_online",
        "oem_raw_data",
        *TELEMETRY_NULLABLE_FIELDS,
        *TELEMETRY_DEPRECATED_FIELDS,
    }
)
# "All the attributes must be sent": everything but the optional oem_raw_data and the deprecated field.
TELEMETRY_REQUIRED_FIELDS = TELEMETRY_FIELDS - {"oem_raw_data", *TELEMETRY_DEPRECATED_FIELDS}

SECRET_PREFIX = "whsec_"
DEFAULT_RETRY_DELAYS_S = (1.0, 5.0, 30.0, 120.0)  # four re-deliveries, as the upstream's older webhook page
DEFAULT_DELIVERY_TIMEOUT_S = 5.0  # the upstream's documented webhook timeout
MAX_RETRY_AFTER_S = 300.0  # a receiver's Retry-After is honoured, but not beyond this


def sign(*, secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` under a ``whsec_`` secret.

    The simulator carries its own signer (it may not import the gateway); tests check both agree.
    """
    key = _decode_secret(secret)
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _decode_secret(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"webhook secret is not {SECRET_PREFIX}<base64>: {error}") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _iso(moment: datetime) -> str:
    """The upstream's timestamp style: UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(field: str, value: object) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{field} is not an ISO 8601 date-time: {value!r}") from None
    else:
        raise ValueError(f"{field} must be an ISO 8601 date-time string")
    if moment.tzinfo is None:
        raise ValueError(f"{field} must carry a time zone")
    return moment


def demo_command(*, now: datetime, device_id: str = "battery-1") -> Command:
    """A DISCHARGE 3000 W SETPOINT command starting one minute after ``now`` and lasting five minutes."""
    starts_at = now + timedelta(minutes=1)
    return {
        "event_id": str(uuid.uuid4()),
        "device_id": device_id,
        "starts_at": _iso(starts_at),
        "ends_at": _iso(starts_at + timedelta(minutes=5)),
        "duration_s": 300,
        "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000},
    }


@dataclasses.dataclass
class DeliveryAttempt:
    """One POST of a webhook: when, and the receiver's status code or the transport error."""

    at: datetime
    status_code: int | None
    error: str | None = None


@dataclasses.dataclass
class Delivery:
    """One webhook event and its attempts; ``webhook_id`` stays the same across retries."""

    webhook_id: str
    event_type: str
    body: bytes
    attempts: list[DeliveryAttempt] = dataclasses.field(default_factory=list)
    state: Literal["pending", "delivered", "failed"] = "pending"
    finished: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, repr=False)

    async def wait(self, timeout_s: float = 10.0) -> None:
        """Until delivered or given up; TimeoutError after ``timeout_s``."""
        await asyncio.wait_for(self.finished.wait(), timeout_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "event_type": self.event_type,
            "state": self.state,
            "attempts": [
                {"at": _iso(attempt.at), "status_code": attempt.status_code, "error": attempt.error}
                for attempt in self.attempts
            ],
        }


class _Failures:
    """Injected API failures: the next ``count`` calls, or every call until a monotonic deadline."""

    def __init__(self) -> None:
        self.remaining = 0
        self.until: float | None = None
        self.status = 503
        self.retry_after_s: int | None = None

    def take(self) -> Response | None:
        active = self.remaining > 0 or (self.until is not None and time.monotonic() < self.until)
        if not active:
            return None
        if self.remaining > 0:
            self.remaining -= 1
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        return JSONResponse(
            {"error": "injected failure", "message": f"simulated upstream failure ({self.status})"},
            status_code=self.status,
            headers=headers,
        )


class _EmbeddedServer(uvicorn.Server):
    # The process (or the test runner) owns SIGINT/SIGTERM; uvicorn must not replace their handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class UpstreamSimulator:
    """The upstream aggregator, in process: ``async with UpstreamSimulator(...) as upstream: upstream.url``.

    - ``GET /v1/commands`` lists the held commands (``?device_id=`` filters); bearer token checked if set.
    - ``PATCH /v1/commands/{id}`` and ``PATCH /v1/command/{id}`` take ``{device_status: OK|FAILED,
      device_status_reason}`` (a reason is required with FAILED), apply it and answer 200 with the
      command. Every PATCH, refused or not, is recorded in ``acks`` with its status code. An ack does not
      change ``updated_at``: that stamps the upstream's version of the instructions.
    - Commands added, replaced or canceled are pushed to ``webhook_url`` as ``command.created|updated|
      canceled`` envelopes, signed per Standard Webhooks, retried after ``retry_delays_s`` (a receiver's
      Retry-After is honoured); 2xx ends the retries, 410 disables the endpoint, deliveries run
      concurrently and so may arrive out of order.
    - ``POST /v1/telemetry/BATTERY`` takes ``{"telemetry": [point, ...]}`` (1 to 1,000 points; the
      deprecated top-level ``start_time``/``duration_s`` are ignored) and answers 200 with one
      ``{"status": "OK"|"FAILED", "message"}`` per point, at the point's index; a malformed body gets 400
      or 422 and nothing is kept. Every request that passes auth is recorded in ``telemetry``.
      ``reject_telemetry`` makes chosen points come back FAILED.
    - ``/_sim/...`` lets a test or operator add, cancel and inject failures over HTTP, and read acks and
      telemetry.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        token: str | None = None,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
        delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if webhook_url is not None and webhook_secret is None:
            raise ValueError("a webhook URL needs a whsec_ signing secret")
        if webhook_secret is not None:
            _decode_secret(webhook_secret)  # fail at construction, not at the first delivery
        self.host = host
        self.port = port
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.token = token
        self.retry_delays_s = tuple(retry_delays_s)
        self.delivery_timeout_s = delivery_timeout_s
        self.clock = clock
        self.webhooks_disabled = False
        self.deliveries: list[Delivery] = []
        self.app = build_app(self)
        self._commands: dict[str, Command] = {}
        self._acks: list[dict[str, Any]] = []
        self._telemetry: list[dict[str, Any]] = []
        self._telemetry_rejections: dict[str, int] = {}
        self.telemetry_received = asyncio.Condition()
        self._failures = _Failures()
        self._client: httpx.AsyncClient | None = None
        self._server: _EmbeddedServer | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._delivery_tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """Base URL of the running simulator, e.g. ``http://127.0.0.1:41234``."""
        if self._socket is None:
            raise RuntimeError("the simulator is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._socket.getsockname()[1]}"

    @property
    def commands(self) -> list[Command]:
        """Copies of the held commands, oldest first."""
        return [copy.deepcopy(command) for command in self._commands.values()]

    @property
    def acks(self) -> list[dict[str, Any]]:
        """Every PATCH received: command_id, path, device_status, device_status_reason, received_at,
        status_code (200 when applied) and error (why it was refused, else None)."""
        return [dict(ack) for ack in self._acks]

    @property
    def telemetry(self) -> list[dict[str, Any]]:
        """Every telemetry POST that passed auth and injected failures, oldest first: received_at,
        status_code, error (why the whole body was refused, else None), points (as sent) and results
        (the per-point answers, empty when refused)."""
        return copy.deepcopy(self._telemetry)

    @property
    def accepted_telemetry(self) -> list[dict[str, Any]]:
        """The points answered OK, in the order received (a point resent after a FAILED appears once)."""
        return [
            copy.deepcopy(point)
            for upload in self._telemetry
            for point, result in zip(upload["points"], upload["results"], strict=False)
            if result["status"] == "OK"
        ]

    def reject_telemetry(self, device_id: str, count: int = 1) -> None:
        """Answer FAILED for the next ``count`` otherwise valid points of ``device_id``; 0 clears."""
        if count < 0:
            raise ValueError("count must not be negative")
        self._telemetry_rejections[device_id] = count

    async def wait_for_telemetry(self, requests: int, timeout_s: float = 10.0) -> None:
        """Until at least ``requests`` telemetry POSTs have been recorded; TimeoutError after ``timeout_s``."""
        async with self.telemetry_received:
            await asyncio.wait_for(
                self.telemetry_received.wait_for(lambda: len(self._telemetry) >= requests), timeout_s
            )

    def command(self, command_id: str) -> Command:
        """A copy of one held command; KeyError if unknown."""
        return copy.deepcopy(self._commands[command_id])

    def add_command(self, command: Command, *, notify: bool = True) -> Command:
        """Add a command, or replace the one with the same ``id``; returns the stored command.

        Missing fields get the upstream's defaults (a new id, status OK, device_status PENDING,
        created_at/updated_at now, duration_s from the window). A replacement keeps created_at and gets
        an updated_at strictly after the previous one unless one is given, so receivers see a newer
        version. With ``notify`` a ``command.created`` or ``command.updated`` webhook is sent. Raises
        ValueError for a field outside the Command (docs/design.md §3) or a value outside its enums; to send
        anything else, use ``send_event``.
        """
        now = self.clock()
        previous = self._commands.get(str(command.get("id", "")))
        stored = _normalise_command(command, now=now, previous=previous)
        self._commands[stored["id"]] = stored
        event_type = "command.created" if previous is None else "command.updated"
        logger.info("%s %s for %s", event_type, stored["id"], stored["device_id"])
        if notify:
            self.send_event(event_type, stored)
        return copy.deepcopy(stored)

    def cancel(
        self, command_id: str, *, status: Literal["CANCELED", "OPT_OUT"] = "CANCELED", notify: bool = True
    ) -> Command:
        """Cancel (utility) or opt out (homeowner): device_status back to PENDING, a new updated_at, and a
        ``command.canceled`` (or, for OPT_OUT, ``command.updated``) webhook. KeyError if unknown."""
        stored = self._commands[command_id]
        stored["status"] = status
        stored["device_status"] = "PENDING"
        stored["device_status_reason"] = CANCEL_REASONS[status]
        stored["updated_at"] = _next_version(stored["updated_at"], self.clock())
        event_type = "command.canceled" if status == "CANCELED" else "command.updated"
        logger.info("%s %s", event_type, command_id)
        if notify:
            self.send_event(event_type, stored)
        return copy.deepcopy(stored)

    def fail_next(self, count: int, status: int = 503, *, retry_after_s: int | None = None) -> None:
        """Make the next ``count`` API calls (``/v1/...``) answer ``status``; 0 clears."""
        self._set_failures(status=status, count=count, duration_s=None, retry_after_s=retry_after_s)

    def fail_for(self, duration_s: float, status: int = 503, *, retry_after_s: int | None = None) -> None:
        """Make every API call answer ``status`` for ``duration_s`` seconds."""
        self._set_failures(status=status, count=0, duration_s=duration_s, retry_after_s=retry_after_s)

    def enable_webhooks(self) -> None:
        """Re-enable deliveries after a receiver answered 410 Gone (as a sender's operator would)."""
        self.webhooks_disabled = False

    def send_event(self, event_type: str, event_object: dict[str, Any]) -> Delivery:
        """Send one envelope ``{event_type, event_object, timestamp}`` to the webhook URL, unvalidated.

        Returns the Delivery (await ``delivery.wait()``); it is marked failed at once when no webhook
        URL is configured or the endpoint is disabled.
        """
        envelope = {"event_type": event_type, "event_object": event_object, "timestamp": _iso(self.clock())}
        delivery = Delivery(
            webhook_id=f"msg_{uuid.uuid4().hex}",
            event_type=event_type,
            body=json.dumps(envelope, separators=(",", ":")).encode(),
        )
        self.deliveries.append(delivery)
        if self.webhook_url is None or self.webhooks_disabled:
            delivery.state = "failed"
            delivery.finished.set()
            return delivery
        if self._client is None:
            raise RuntimeError("the simulator is not running; use it as `async with`")
        task = asyncio.create_task(self._deliver(delivery), name=f"webhook:{delivery.webhook_id}")
        self._delivery_tasks.add(task)
        task.add_done_callback(self._delivery_tasks.discard)
        return delivery

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(timeout=self.delivery_timeout_s, follow_redirects=False)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((self.host, self.port))
            config = uvicorn.Config(
                self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
            )
            self._server = _EmbeddedServer(config)
            self._server_task = asyncio.create_task(
                self._server.serve(sockets=[self._socket]), name="upstream-simulator"
            )
            deadline = time.monotonic() + 10.0
            while not self._server.started:
                if self._server_task.done() or time.monotonic() > deadline:
                    raise OSError(f"upstream simulator could not serve on {self.host}:{self.port}")
                await asyncio.sleep(0.01)
        except BaseException:
            await self._stop()
            raise
        logger.info("upstream simulator serving at %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        for task in list(self._delivery_tasks):
            task.cancel()
        await asyncio.gather(*self._delivery_tasks, return_exceptions=True)
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._server_task), 10.0)
            if not self._server_task.done():
                self._server_task.cancel()
                await asyncio.gather(self._server_task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        if self._socket is not None:
            self._socket.close()
        self._server = self._server_task = self._client = self._socket = None

    def _set_failures(self, *, status: int, count: int, duration_s: float | None, retry_after_s: int | None) -> None:
        if not 400 <= status <= 599:
            raise ValueError("an injected failure status must be 4xx or 5xx")
        if count < 0 or (duration_s is not None and duration_s < 0):
            raise ValueError("count and duration_s must not be negative")
        self._failures.status = status
        self._failures.remaining = count
        self._failures.until = None if duration_s is None else time.monotonic() + duration_s
        self._failures.retry_after_s = retry_after_s

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            await self._attempt_until_done(delivery)
        finally:
            # Also when cancelled by the simulator stopping, so no one waits on an abandoned delivery.
            if delivery.state != "delivered":
                delivery.state = "failed"
                logger.warning("webhook %s (%s) not delivered", delivery.webhook_id, delivery.event_type)
            delivery.finished.set()

    async def _attempt_until_done(self, delivery: Delivery) -> None:
        assert self._client is not None and self.webhook_url is not None and self.webhook_secret is not None
        pending_delays = list(self.retry_delays_s)
        delay = 0.0
        while True:
            if delay > 0:
                await asyncio.sleep(delay)  # the backoff itself, not a wait for an event
            if self.webhooks_disabled:
                break
            attempt_time = self.clock()
            timestamp = int(attempt_time.timestamp())
            # Each attempt is signed with its own time (Standard Webhooks); the id never changes.
            headers = {
                "content-type": "application/json",
                "user-agent": "gridloop-upstream-simulator",
                "webhook-id": delivery.webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(
                    secret=self.webhook_secret,
                    webhook_id=delivery.webhook_id,
                    timestamp=timestamp,
                    body=delivery.body,
                ),
            }
            retry_after_s = 0.0
            try:
                response = await self._client.post(self.webhook_url, content=delivery.body, headers=headers)
            except httpx.HTTPError as error:
                delivery.attempts.append(DeliveryAttempt(at=attempt_time, status_code=None, error=repr(error)))
            else:
                delivery.attempts.append(DeliveryAttempt(at=attempt_time, status_code=response.status_code))
                if response.is_success:
                    delivery.state = "delivered"
                    break
                if response.status_code == 410:
                    logger.warning("webhook endpoint answered 410 Gone; deliveries disabled")
                    self.webhooks_disabled = True
                    break
                retry_after_s = _retry_after_s(response.headers.get("retry-after"))
            if not pending_delays:
                break
            delay = max(pending_delays.pop(0), retry_after_s)
            logger.info(
                "webhook %s attempt %d failed (%s); retrying in %.1f s",
                delivery.webhook_id,
                len(delivery.attempts),
                delivery.attempts[-1].status_code or delivery.attempts[-1].error,
                delay,
            )

    # HTTP handlers

    def _refusal(self, request: Request) -> Response | None:
        """An injected failure, then the bearer token: the checks every ``/v1`` call goes through."""
        injected = self._failures.take()
        if injected is not None:
            return injected
        if self.token is None:
            return None
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return JSONResponse(
                {"error": "unauthorized", "message": "send Authorization: Bearer <client token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.strip().encode(), self.token.encode()):
            return JSONResponse({"error": "forbidden", "message": "the bearer token is not valid"}, 403)
        return None

    async def _list_commands(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        device_id = request.query_params.get("device_id")
        commands = [c for c in self._commands.values() if device_id is None or c["device_id"] == device_id]
        return JSONResponse(commands)

    async def _patch_command(self, request: Request) -> Response:
        command_id = request.path_params["command_id"]
        raw = await request.body()
        record: dict[str, Any] = {
            "command_id": command_id,
            "path": request.url.path,
            "device_status": None,
            "device_status_reason": None,
            "received_at": _iso(self.clock()),
            "status_code": 200,
            "error": None,
        }
        body: object = None
        with contextlib.suppress(ValueError):
            body = json.loads(raw)
        if isinstance(body, dict):
            record["device_status"] = body.get("device_status")
            record["device_status_reason"] = body.get("device_status_reason")
        response = self._refusal(request)
        if response is None:
            problem, status_code = _ack_problem(body, known=command_id in self._commands)
            if problem is None:
                assert isinstance(body, dict)
                stored = self._commands[command_id]
                stored["device_status"] = body["device_status"]
                stored["device_status_reason"] = body.get("device_status_reason")
                response = JSONResponse(stored)
            else:
                response = JSONResponse({"error": "invalid", "message": problem}, status_code=status_code)
                record["error"] = problem
        else:
            record["error"] = "refused before reading the body"
        record["status_code"] = response.status_code
        self._acks.append(record)
        logger.info(
            "PATCH %s device_status=%s reason=%r -> %d",
            record["path"],
            record["device_status"],
            record["device_status_reason"],
            response.status_code,
        )
        return response

    async def _post_telemetry(self, request: Request) -> Response:
        refusal = self._refusal(request)
        if refusal is not None:
            logger.info("POST %s -> %d (refused)", request.url.path, refusal.status_code)
            return refusal
        body = await _json_body(request)
        points = body.get("telemetry") if isinstance(body, dict) else None
        record: dict[str, Any] = {
            "received_at": _iso(self.clock()),
            "status_code": 200,
            "error": None,
            "points": copy.deepcopy(points) if isinstance(points, list) else [],
            "results": [],
        }
        problem, status_code = _telemetry_body_problem(body)
        if problem is not None:
            record["status_code"] = status_code
            record["error"] = problem
            response: Response = JSONResponse({"error": "invalid", "message": problem}, status_code=status_code)
        else:
            assert isinstance(points, list)
            record["results"] = [self._telemetry_result(point) for point in points]
            response = JSONResponse(record["results"])
        async with self.telemetry_received:
            self._telemetry.append(record)
            self.telemetry_received.notify_all()
        failed = sum(1 for result in record["results"] if result["status"] != "OK")
        logger.info("POST %s points=%d failed=%d -> %d", request.url.path, len(record["points"]), failed, status_code)
        return response

    def _telemetry_result(self, point: object) -> dict[str, str]:
        problem = _telemetry_point_problem(point)
        if problem is not None:
            return {"status": "FAILED", "message": problem}
        assert isinstance(point, dict)
        device_id = point["device_id"]
        if self._telemetry_rejections.get(device_id, 0) > 0:
            self._telemetry_rejections[device_id] -= 1
            return {"status": "FAILED", "message": "simulated failure saving this point; resend it"}
        return {"status": "OK", "message": "saved"}

    async def _sim_add_command(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return JSONResponse({"error": "invalid", "message": "send one Command object"}, 400)
        notify = request.query_params.get("notify", "true").lower() not in {"false", "0", "no"}
        existed = str(body.get("id", "")) in self._commands
        try:
            stored = self.add_command(body, notify=notify)
        except ValueError as error:
            return JSONResponse({"error": "invalid", "message": str(error)}, 422)
        return JSONResponse(stored, status_code=200 if existed else 201)

    async def _sim_cancel(self, request: Request) -> Response:
        body = await _json_body(request) if await request.body() else {}
        status = body.get("status", "CANCELED") if isinstance(body, dict) else None
        if status != "CANCELED" and status != "OPT_OUT":
            return JSONResponse({"error": "invalid", "message": "status must be CANCELED or OPT_OUT"}, 422)
        command_id = request.path_params["command_id"]
        if command_id not in self._commands:
            return JSONResponse({"error": "not_found", "message": f"no command {command_id}"}, 404)
        return JSONResponse(self.cancel(command_id, status=status))

    async def _sim_fail(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return JSONResponse({"error": "invalid", "message": 'send {"status": 503, "count": N}'}, 400)
        try:
            status = int(body.get("status", 503))
            retry_after = body.get("retry_after_s")
            retry_after_s = None if retry_after is None else int(retry_after)
            if body.get("duration_s") is not None:
                self.fail_for(float(body["duration_s"]), status, retry_after_s=retry_after_s)
            else:
                self.fail_next(int(body.get("count", 1)), status, retry_after_s=retry_after_s)
        except (TypeError, ValueError) as error:
            return JSONResponse({"error": "invalid", "message": str(error)}, 422)
        return JSONResponse({"status": status, "count": self._failures.remaining})

    async def _sim_acks(self, request: Request) -> Response:
        return JSONResponse(self.acks)

    async def _sim_deliveries(self, request: Request) -> Response:
        return JSONResponse([delivery.as_dict() for delivery in self.deliveries])

    async def _sim_telemetry(self, request: Request) -> Response:
        return JSONResponse(self._telemetry)

    async def _sim_reject_telemetry(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("device_id"), str):
            return JSONResponse({"error": "invalid", "message": 'send {"device_id": "...", "count": N}'}, 400)
        try:
            self.reject_telemetry(body["device_id"], int(body.get("count", 1)))
        except (TypeError, ValueError) as error:
            return JSONResponse({"error": "invalid", "message": str(error)}, 422)
        return JSONResponse({"device_id": body["device_id"], "count": self._telemetry_rejections[body["device_id"]]})


def build_app(simulator: UpstreamSimulator) -> Starlette:
    """The simulator's ASGI application; its state lives on ``simulator``."""
    return Starlette(
        routes=[
            Route("/v1/commands", simulator._list_commands, methods=["GET"]),
            Route("/v1/commands/{command_id}", simulator._patch_command, methods=["PATCH"]),
            Route("/v1/command/{command_id}", simulator._patch_command, methods=["PATCH"]),
            Route("/v1/telemetry/BATTERY", simulator._post_telemetry, methods=["POST"]),
            Route("/_sim/commands", simulator._sim_add_command, methods=["POST"]),
            Route("/_sim/commands/{command_id}/cancel", simulator._sim_cancel, methods=["POST"]),
            Route("/_sim/fail", simulator._sim_fail, methods=["POST"]),
            Route("/_sim/acks", simulator._sim_acks, methods=["GET"]),
            Route("/_sim/deliveries", simulator._sim_deliveries, methods=["GET"]),
            Route("/_sim/telemetry", simulator._sim_telemetry, methods=["GET"]),
            Route("/_sim/telemetry/reject", simulator._sim_reject_telemetry, methods=["POST"]),
        ]
    )


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def _ack_problem(body: object, *, known: bool) -> tuple[str | None, int]:
    """Why an acknowledgement body is refused (and the status), or (None, 200)."""
    if not known:
        return "no such command", 404
    if not isinstance(body, dict):
        return "the body must be a JSON object {device_status, device_status_reason}", 400
    unknown = sorted(set(body) - {"device_status", "device_status_reason"})
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; send device_status and device_status_reason", 422
    if not _one_of(body.get("device_status"), ACK_DEVICE_STATUSES):
        return f"device_status must be one of {', '.join(sorted(ACK_DEVICE_STATUSES))}", 422
    reason = body.get("device_status_reason")
    if reason is not None and not isinstance(reason, str):
        return "device_status_reason must be a string or null", 422
    if body["device_status"] == "FAILED" and not (reason or "").strip():
        return "device_status FAILED needs a device_status_reason saying why", 422
    return None, 200


def _telemetry_body_problem(body: object) -> tuple[str | None, int]:
    """Why a telemetry body is refused as a whole (and the status), or (None, 200)."""
    if not isinstance(body, dict):
        return 'the body must be a JSON object {"telemetry": [...]}', 400
    unknown = sorted(set(body) - {"telemetry", "start_time", "duration_s"})
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; send telemetry", 422
    points = body.get("telemetry")
    if not isinstance(points, list) or not points:
        return "telemetry must be a non-empty list of points", 422
    if len(points) > TELEMETRY_MAX_POINTS:
        return f"at most {TELEMETRY_MAX_POINTS} points per request, got {len(points)}", 422
    return None, 200


def _telemetry_point_problem(point: object) -> str | None:
    """Why one telemetry point is answered FAILED, or None; the upstream's rules, field by field."""
    if not isinstance(point, dict):
        return "a point must be a JSON object"
    unknown = sorted(set(point) - TELEMETRY_FIELDS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    missing = sorted(TELEMETRY_REQUIRED_FIELDS - set(point))
    if missing:
        return f"every attribute must be sent; missing {', '.join(missing)}"
    try:
        _parse_time("start_time", point["start_time"])
    except ValueError as error:
        return str(error)
    if not _is_number(point["duration_s"]) or point["duration_s"] < 0:
        return "duration_s must be a number of seconds >= 0"
    if not isinstance(point["device_id"], str) or not point["device_id"]:
        return "device_id must be a non-empty string"
    online = point["last_is_online"]
    if not isinstance(online, bool):
        return "last_is_online must be true or false"
    if "oem_raw_data" in point and not isinstance(point["oem_raw_data"], dict):
        return "oem_raw_data must be an object"
    if not online:
        not_null = [field for field in TELEMETRY_NULLABLE_FIELDS if point[field] is not None]
        if not_null:
            return f"an offline point must have null {', '.join(not_null)}"
        return None
    null = [field for field in TELEMETRY_NULLABLE_FIELDS if point[field] is None]
    if null:
        return f"an online point must not have null {', '.join(null)}"
    if not _one_of(point["last_mode"], MODES):
        return f"last_mode must be one of {', '.join(sorted(MODES))}"
    if not isinstance(point["last_is_grid_online"], bool):
        return "last_is_grid_online must be true or false"
    for field in TELEMETRY_NON_NEGATIVE_FIELDS:
        if not _is_number(point[field]) or point[field] < 0:
            return f"{field} must be a number >= 0"
    for field in TELEMETRY_PERCENT_FIELDS:
        if not _is_number(point[field]) or not 0 <= point[field] <= 100:
            return f"{field} must be a number from 0 to 100"
    return None


def _is_number(value: object) -> bool:
    # JSON true/false arrive as bool, which Python counts as int.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_of(value: object, allowed: frozenset[str]) -> bool:
    # A membership test alone would raise TypeError for an unhashable value such as a JSON list.
    return isinstance(value, str) and value in allowed


def _normalise_command(command: Command, *, now: datetime, previous: Command | None) -> Command:
    """A complete upstream Command from a partial one; ValueError for anything outside it (docs/design.md §3)."""
    unknown = sorted(set(command) - COMMAND_FIELDS)
    if unknown:
        raise ValueError(f"not Command fields: {', '.join(unknown)}")
    battery = command.get("battery_commands")
    if not isinstance(battery, dict) or "mode" not in battery:
        raise ValueError("battery_commands with a mode is required")
    unknown = sorted(set(battery) - set(BATTERY_COMMAND_FIELDS))
    if unknown:
        raise ValueError(f"not battery_commands fields: {', '.join(unknown)}")
    if not _one_of(battery["mode"], MODES):
        raise ValueError(f"battery_commands.mode must be one of {', '.join(sorted(MODES))}")
    if battery.get("power_mode") is not None and not _one_of(battery["power_mode"], POWER_MODES):
        raise ValueError(f"battery_commands.power_mode must be one of {', '.join(sorted(POWER_MODES))} or null")
    device_id = command.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise ValueError("device_id is required")
    command_id = str(command.get("id") or uuid.uuid4())
    try:
        uuid.UUID(command_id)
    except ValueError:
        raise ValueError(f"id must be a UUID, got {command_id!r}") from None
    if "starts_at" not in command:
        raise ValueError("starts_at is required")
    starts_at = _parse_time("starts_at", command["starts_at"])
    ends_at = None if command.get("ends_at") is None else _parse_time("ends_at", command["ends_at"])
    duration_s = command.get("duration_s")
    if duration_s is None and ends_at is not None:
        duration_s = int((ends_at - starts_at).total_seconds())
    status = command.get("status", "OK")
    if not _one_of(status, STATUSES):
        raise ValueError(f"status must be one of {', '.join(sorted(STATUSES))}")
    device_status = command.get("device_status", "PENDING")
    if not _one_of(device_status, DEVICE_STATUSES):
        raise ValueError(f"device_status must be one of {', '.join(sorted(DEVICE_STATUSES))}")
    if previous is not None:
        created_at = previous["created_at"]
    elif command.get("created_at") is not None:
        created_at = _iso(_parse_time("created_at", command["created_at"]))
    else:
        created_at = _iso(now)
    if command.get("updated_at") is not None:
        updated_at = _iso(_parse_time("updated_at", command["updated_at"]))
    else:
        updated_at = _iso(now) if previous is None else _next_version(previous["updated_at"], now)
    return {
        "id": command_id,
        "event_id": None if command.get("event_id") is None else str(command["event_id"]),
        "device_id": device_id,
        "starts_at": _iso(starts_at),
        "ends_at": None if ends_at is None else _iso(ends_at),
        "duration_s": duration_s,
        "is_preparatory_action": bool(command.get("is_preparatory_action", False)),
        "battery_commands": {field: battery.get(field) for field in BATTERY_COMMAND_FIELDS},
        "status": status,
        "device_status": device_status,
        "device_status_reason": command.get("device_status_reason"),
        "created_at": created_at,
        "updated_at": updated_at,
    }


def _next_version(previous_updated_at: str, now: datetime) -> str:
    """``now``, or 1 ms after the previous version when the clock has not moved past it."""
    previous = _parse_time("updated_at", previous_updated_at)
    return _iso(max(now, previous + timedelta(milliseconds=1)))


def _retry_after_s(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds form only), capped; 0 when absent or unreadable."""
    if value is None:
        return 0.0
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0


async def main(argv: list[str]) -> None:
    """``gridloop sim upstream``: run the simulator until cancelled, logging every PATCH it receives."""
    parser = argparse.ArgumentParser(
        prog="gridloop sim upstream",
        description="Upstream aggregator simulator: GET /v1/commands, PATCH recorder, signed webhooks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to bind, 0 for any free port")
    parser.add_argument("--webhook-url", help="where to POST signed webhooks, e.g. http://127.0.0.1:8080/v1/webhooks")
    parser.add_argument("--webhook-secret", help="Standard Webhooks signing secret, whsec_<base64>")
    parser.add_argument("--token", help="bearer token the API requires (default: none)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="create a DISCHARGE 3000 W command for battery-1, starting in one minute, for five minutes",
    )
    arguments = parser.parse_args(argv)
    if arguments.webhook_url and not arguments.webhook_secret:
        parser.error("--webhook-url needs --webhook-secret")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        simulator = UpstreamSimulator(
            host=arguments.host,
            port=arguments.port,
            webhook_url=arguments.webhook_url,
            webhook_secret=arguments.webhook_secret,
            token=arguments.token,
        )
    except ValueError as error:
        parser.error(str(error))
    async with simulator:
        if arguments.demo:
            command = simulator.add_command(demo_command(now=simulator.clock()))
            destination = arguments.webhook_url or f"nobody (poll {simulator.url}/v1/commands)"
            logger.info("demo command %s sent to %s", command["id"], destination)
        await asyncio.Event().wait()
