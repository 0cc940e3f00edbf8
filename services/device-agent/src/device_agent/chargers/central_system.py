"""The OCPP-J central system: a WebSocket server that EV chargers dial in to at ``/<charge point id>``.

A connection is accepted only for the identity of an active EV-type device in the registry (read at each
connection), with the password whose SHA-256 the registry holds (OCPP security profile 1, HTTP Basic auth),
speaking the OCPP version registered for it. Anything else is refused before the WebSocket opens: 404 for an
unknown identity, 401 for a missing or wrong password, each logged. Once accepted, the charger has a
``ChargerSession``: what it said last (status, meter values, transaction), and its availability, published as
``DeviceAvailability`` like the batteries'. A closed connection is offline at once; a silent one is found by
WebSocket pings every heartbeat interval, each given ``offline_margin_s`` to be answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from device_agent.chargers.authentication import basic_credentials, password_matches
from device_agent.chargers.charge_points import charge_point_for
from device_agent.chargers.charger_control import ChargerControl
from device_agent.chargers.charger_telemetry import ChargerOutbox, OpenSession
from device_agent.chargers.charging_profile import DEFAULT_V2G_MIN_SOC_PERCENTAGE, CarState
from device_agent.chargers.meter_values import ChargerReading
from device_agent.chargers.profile_confirmation import DEFAULT_SETTLE_S
from device_agent.repository import RegisteredCharger, UnusableDevice
from gridloop_common.clock import Clock
from gridloop_common.contracts import (
    DeviceAction,
    DeviceAvailability,
    DeviceOutcome,
    DeviceResyncRequest,
    EvChargerReading,
    routing,
)
from gridloop_common.messaging import Publisher, PublishError

__all__ = ["CentralSystem", "ChargerLookup", "ChargerSession", "charge_point_id_of"]

logger = logging.getLogger(__name__)

CHARGERS_CONNECTED = Gauge(
    "gridloop_ocpp_chargers_connected", "EV chargers connected to the agent's OCPP central system."
)
CHARGERS_REFUSED = Counter(
    "gridloop_ocpp_connections_refused",
    "OCPP connections refused before the WebSocket opened, by HTTP status (404 unknown id, 401 credentials).",
    ["status"],
)

# Connector states (1.6 and 2.x) in which a car is at the charger.
_CAR_PRESENT = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Occupied"})

ChargerLookup = Callable[[str], Awaitable[RegisteredCharger | UnusableDevice | None]]


def charge_point_id_of(path: str) -> str:
    """The charge point identity in a request path: its last segment (``/ocpp/CP-1?x`` → ``CP-1``)."""
    return unquote(path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


@dataclass
class _Refusal:
    status: http.HTTPStatus
    reason: str


class ChargerSession:
    """One connected charger: what it last said, and a way to await what it says next."""

    def __init__(
        self,
        charger: RegisteredCharger,
        *,
        clock: Clock,
        heartbeat_interval_s: int,
        outbox: ChargerOutbox | None = None,
    ) -> None:
        self.charger = charger
        self._outbox = outbox  # where its meter values, sessions and confirmation outcomes go (None: nowhere)
        self.open_session: OpenSession | None = None
        self.heartbeat_interval_s = heartbeat_interval_s
        self._clock = clock
        self.booted_as: tuple[str, str] | None = None  # (vendor, model) from its BootNotification
        self.connector_status: str | None = None
        self.latest_reading: ChargerReading | None = None
        self.transaction_id: str | None = None
        self.heartbeats = 0
        self.connected = True
        self.charge_point: Any = None  # the library's ChargePoint, through which the agent calls the charger
        self.connection: ServerConnection | None = None
        self.control: ChargerControl | None = None  # how actions reach it, once connected
        self._changed = asyncio.Event()

    def now(self) -> datetime:
        return self._clock.now()

    def car(self) -> CarState:
        """The car as the charger last described it: plugged in while a transaction runs or the connector
        says so; its SoC from the latest meter values."""
        plugged_in = self.transaction_id is not None or self.connector_status in _CAR_PRESENT
        reserve = self.charger.reserve_percentage
        return CarState(
            plugged_in=plugged_in,
            soc_percentage=None if self.latest_reading is None else self.latest_reading.soc_percentage,
            min_soc_percentage=DEFAULT_V2G_MIN_SOC_PERCENTAGE if reserve is None else reserve,
        )

    def booted(self, vendor: str, model: str) -> None:
        self.booted_as = (vendor, model)
        logger.info("charger booted", extra={"device": self.charger.name, "vendor": vendor, "model": model})
        self._notify()

    def heard(self) -> None:
        self.heartbeats += 1
        self._notify()

    def status_changed(self, connector_status: str) -> None:
        self.connector_status = connector_status
        self._notify()

    def metered(self, reading: ChargerReading) -> None:
        self.latest_reading = reading
        now = self._clock.now()
        soc = reading.soc_percentage
        soc = soc if soc is not None and 0.0 <= soc <= 100.0 else None  # a charger's nonsense is not the car's SoC
        if self.open_session is not None:
            self.open_session.note(import_wh=reading.energy_import_wh, export_wh=reading.energy_export_wh, soc_pct=soc)
        if self._outbox is not None:
            try:
                published = EvChargerReading(
                    time=now,
                    device_id=self.charger.device_id,
                    power_kw=_kilo(reading.power_w),
                    energy_import_kwh=_kilo(reading.energy_import_wh),
                    energy_export_kwh=_kilo(reading.energy_export_wh),
                    soc_pct=soc,
                    connector_status=self.connector_status,
                    transaction_id=self.transaction_id,
                )
            except ValidationError as error:  # a value that is no number (NaN): the charger is answered all the same
                logger.warning("meter values not stored", extra={"device": self.charger.name, "error": str(error)})
            else:
                self._outbox.reading(published)
            if self.control is not None:
                failed = self.control.observe(reading.power_w, measured_at=now)
                if failed is not None:
                    self._outbox.outcome(failed)
        self._notify()

    def transaction_started(self, transaction_id: str, meter_start_wh: float | None = None) -> None:
        self.transaction_id = transaction_id
        self.open_session = OpenSession(
            device_id=self.charger.device_id, transaction_id=transaction_id, plugged_in_at=self._clock.now()
        )
        self.open_session.note(import_wh=meter_start_wh, export_wh=None, soc_pct=None)
        if self._outbox is not None:
            self._outbox.session(self.open_session.record())
        logger.info("charging session started", extra={"device": self.charger.name, "transaction": transaction_id})
        self._notify()

    def transaction_ended(self, transaction_id: str, reason: str | None, meter_stop_wh: float | None = None) -> None:
        if self.open_session is not None and self.open_session.transaction_id == transaction_id:
            self.open_session.note(import_wh=meter_stop_wh, export_wh=None, soc_pct=None)
            if self._outbox is not None:
                self._outbox.session(self.open_session.record(plugged_out_at=self._clock.now(), stop_reason=reason))
            self.open_session = None
        if self.transaction_id == transaction_id:
            self.transaction_id = None
        logger.info(
            "charging session ended",
            extra={"device": self.charger.name, "transaction": transaction_id, "reason": reason},
        )
        self._notify()

    def closed(self) -> None:
        self.connected = False
        if self.control is not None:
            self.control.close()
        self._notify()

    def _notify(self) -> None:
        # Wakes everyone waiting on this change; the next change has an event of its own.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[ChargerSession], bool]) -> None:
        """Until ``predicate(self)`` holds, checked at each thing the charger says (the caller bounds the wait)."""
        while not predicate(self):
            await self._changed.wait()


class CentralSystem:
    """The agent's OCPP server: admits registered chargers, keeps a session per connected one."""

    def __init__(
        self,
        *,
        find_charger: ChargerLookup,
        publisher: Publisher,
        clock: Clock,
        heartbeat_interval_s: int,
        offline_margin_s: float,
        profile_hold_s: float = 60.0,
        response_timeout_s: float = 30.0,
        confirm_settle_s: float = DEFAULT_SETTLE_S,
    ) -> None:
        self._find_charger = find_charger
        self._publisher = publisher
        self._clock = clock
        self.heartbeat_interval_s = heartbeat_interval_s
        self.offline_margin_s = offline_margin_s
        self._response_timeout_s = response_timeout_s
        self._profile_hold_s = profile_hold_s
        self._confirm_settle_s = confirm_settle_s
        self.outbox = ChargerOutbox(publisher)
        self.sessions: dict[str, ChargerSession] = {}  # by device name
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, RegisteredCharger] = weakref.WeakKeyDictionary()
        self._session_opened = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[Server]:
        """Listen on ``host:port`` (0: any free port, read it from the server's sockets) until the block ends."""
        async with serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            # A dead link is found by pings: one per heartbeat interval, each answered within the margin.
            ping_interval=self.heartbeat_interval_s,
            ping_timeout=self.offline_margin_s,
            # ...and the closing handshake of a dead link waits no longer than the margin either (10 s by default).
            close_timeout=self.offline_margin_s,
            logger=logging.getLogger("device_agent.chargers.websocket"),
        ) as server:
            logger.info("OCPP central system listening", extra={"host": host, "port": port})
            publishing = asyncio.create_task(self.outbox.run(), name="ocpp-telemetry")
            try:
                yield server
            finally:
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
                await self.outbox.flush()  # what the last connections said before they closed

    async def session_for(self, device_name: str) -> ChargerSession:
        """The connected session of ``device_name``, once it has connected (the caller bounds the wait)."""
        async with self._session_opened:
            await self._session_opened.wait_for(
                lambda: device_name in self.sessions and self.sessions[device_name].connected
            )
            return self.sessions[device_name]

    async def carry_out(self, action: DeviceAction, charger_named: ChargerLookup) -> DeviceOutcome | None:
        """The outcome of ``action`` if its device is an EV charger (``charger_named`` reads the registry by
        name): applied through the charger's connection, or failed when it is not connected; None otherwise."""
        session = self.sessions.get(action.device_name)
        if session is not None and session.connected and session.control is not None:
            return await session.control.apply(action)
        charger = await charger_named(action.device_name)
        if charger is None:
            return None
        reason = (
            charger.reason
            if isinstance(charger, UnusableDevice)
            else f"charger {charger.name} is not connected to the agent's OCPP central system (id {charger.ocpp_id})"
        )
        return DeviceOutcome(
            action_id=action.action_id,
            command_id=action.command_id,
            device_name=action.device_name,
            applied=False,
            reason=reason,
            observed_at=self._clock.now(),
        )

    async def _refusal(self, charge_point_id: str, authorization: str | None) -> RegisteredCharger | _Refusal:
        found = await self._find_charger(charge_point_id)
        if found is None:
            return _Refusal(http.HTTPStatus.NOT_FOUND, "no active EV charger is registered with this OCPP id")
        if isinstance(found, UnusableDevice):
            return _Refusal(http.HTTPStatus.NOT_FOUND, found.reason)
        if found.password_sha256 is None:
            return _Refusal(http.HTTPStatus.UNAUTHORIZED, "no password registered (metadata.ocpp.password_sha256)")
        credentials = basic_credentials(authorization)
        if credentials is None:
            return _Refusal(http.HTTPStatus.UNAUTHORIZED, "no Basic credentials")
        user, password = credentials
        # Both checks always run, so the answer's timing does not tell which one failed.
        user_matches = user == charge_point_id
        if not password_matches(password, found.password_sha256) or not user_matches:
            return _Refusal(http.HTTPStatus.UNAUTHORIZED, "wrong user or password")
        return found

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        charge_point_id = charge_point_id_of(request.path)
        admitted = await self._refusal(charge_point_id, request.headers.get("Authorization"))
        if isinstance(admitted, _Refusal):
            CHARGERS_REFUSED.labels(status=str(int(admitted.status))).inc()
            logger.warning(
                "charger refused",
                extra={
                    "ocpp_id": charge_point_id,
                    "remote": str(connection.remote_address),
                    "status": int(admitted.status),
                    "reason": admitted.reason,
                },
            )
            response = connection.respond(admitted.status, f"{admitted.reason}\n")
            if admitted.status is http.HTTPStatus.UNAUTHORIZED:
                response.headers["WWW-Authenticate"] = 'Basic realm="gridloop OCPP"'
            return response
        self._admitted[connection] = admitted
        return None

    def _select_subprotocol(
        self, connection: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        charger = self._admitted.get(connection)
        if charger is not None and charger.protocol in subprotocols:
            return Subprotocol(charger.protocol)
        return None  # the handler closes it, naming what was offered and what is registered

    async def _handle(self, connection: ServerConnection) -> None:
        charger = self._admitted.pop(connection, None)
        if charger is None:
            return
        if connection.subprotocol != charger.protocol:
            logger.warning(
                "charger refused: OCPP version",
                extra={
                    "device": charger.name,
                    "offered": connection.request.headers.get("Sec-WebSocket-Protocol") if connection.request else None,
                    "registered": charger.protocol,
                },
            )
            await connection.close(1002, f"the registry names {charger.protocol} for this charger")
            return
        session = ChargerSession(
            charger, clock=self._clock, heartbeat_interval_s=self.heartbeat_interval_s, outbox=self.outbox
        )
        session.connection = connection
        session.charge_point = charge_point_for(
            charger.protocol, charger.ocpp_id, connection, session, response_timeout_s=self._response_timeout_s
        )
        session.control = ChargerControl(
            charger,
            session.charge_point,
            car=session.car,
            clock=self._clock,
            hold_s=self._profile_hold_s,
            settle_s=self._confirm_settle_s,
        )
        previous = self.sessions.get(charger.name)
        if previous is not None and previous.open_session is not None:
            # A transaction outlives a connection (OCPP chargers keep it, and end it once they are back): the
            # session goes on in the new connection, so its plug-out still closes the same record.
            session.open_session = previous.open_session
            session.transaction_id = previous.transaction_id
        if previous is not None and previous.connected and previous.connection is not None:
            logger.info("charger reconnected; the older connection is dropped", extra={"device": charger.name})
            await previous.connection.close(1000, "replaced by a newer connection")
        self.sessions[charger.name] = session
        async with self._session_opened:
            self._session_opened.notify_all()
        logger.info("charger connected", extra={"device": charger.name, "protocol": charger.protocol})
        await self._publish_availability(charger.name, online=True, reason=None)
        # As for a battery taken under control: the scheduler answers with the charger's current action.
        await self._request_resync(charger.name)
        CHARGERS_CONNECTED.inc()
        reason = "OCPP connection closed"
        try:
            await session.charge_point.start()
        except ConnectionClosed as closed:
            reason = _disconnect_reason(closed)
        finally:
            CHARGERS_CONNECTED.dec()
            session.closed()
            # A newer connection of the same charger has taken over: it is online, whatever this one did.
            if self.sessions.get(charger.name) is session:
                await self._publish_availability(charger.name, online=False, reason=reason)
        logger.info("charger disconnected", extra={"device": charger.name, "reason": reason})

    async def _request_resync(self, device_name: str) -> None:
        request = DeviceResyncRequest(
            device_name=device_name, reason="charger connected", requested_at=self._clock.now()
        )
        try:
            await self._publisher.publish(
                exchange=routing.DEVICES_EXCHANGE, routing_key=routing.RoutingKeys.DEVICE_RESYNC, body=request
            )
        except PublishError as error:
            logger.warning("resync request not published", extra={"device": device_name, "error": str(error)})

    async def _publish_availability(self, device_name: str, *, online: bool, reason: str | None) -> None:
        report = DeviceAvailability(
            device_name=device_name, online=online, reason=reason, observed_at=self._clock.now()
        )
        try:
            await self._publisher.publish(
                exchange=routing.DEVICES_EXCHANGE, routing_key=routing.RoutingKeys.DEVICE_AVAILABILITY, body=report
            )
        except PublishError as error:
            logger.warning("availability not published", extra={"device": device_name, "error": str(error)})


def _kilo(value: float | None) -> float | None:
    return None if value is None else value / 1000.0


def _disconnect_reason(closed: ConnectionClosed) -> str:
    """Why a charger's connection ended, for the offline report."""
    if isinstance(closed, ConnectionClosedOK):
        return "OCPP connection closed"
    if closed.rcvd is None and closed.sent is not None and closed.sent.code == 1011:
        return "OCPP connection lost (no answer to the keepalive ping)"
    if closed.rcvd is None:
        return "OCPP connection lost (no close frame)"
    return f"OCPP connection lost (code {closed.rcvd.code}{': ' + closed.rcvd.reason if closed.rcvd.reason else ''})"
