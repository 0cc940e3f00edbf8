"""An EV charger on OCPP-J (the ``ocpp`` library's charge-point side) with a car that comes and goes.

It dials in to a central system (gridloop's device-agent) at ``<url>/<id>`` with Basic auth (OCPP security
profile 1), boots, sends heartbeats at the interval the central system answers, its connector status, meter
values (power, energy registers, the car's SoC) and the transaction's start and end. The car arrives and
leaves on a schedule; its battery's SoC follows the power actually delivered. The charger keeps the 6 A
minimum of IEC 61851 (below it, it does not charge: 1.38 kW on one phase, about 4.1 kW on three), discharges
only when built for V2G and above the car's minimum SoC, and applies the charging profile it accepts until
the profile's ``validTo``, then falls back by itself to its own limit (rated power unless told otherwise).

OCPP 1.6J (``ocpp1.6``) speaks StartTransaction/StopTransaction; 2.0.1 and 2.1 speak TransactionEvent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake
from websockets.typing import Subprotocol

__all__ = [
    "CarVisit",
    "ChargerSimulator",
    "ChargerSpec",
    "ChargingLimit",
    "UnacceptedProtocol",
    "delivered_power_w",
    "main",
]

logger = logging.getLogger(__name__)

RECONNECT_S = 5.0


class UnacceptedProtocol(ConnectionError):
    """The central system opened the WebSocket without the OCPP version the charger speaks."""


@dataclass(frozen=True)
class ChargerSpec:
    """The charger's hardware: phases, voltage, current range, whether it can discharge (V2G)."""

    phases: int = 3
    voltage_v: float = 230.0
    max_current_a: float = 16.0
    min_current_a: float = 6.0  # IEC 61851: the pilot signal cannot ask for less
    v2g: bool = False

    @property
    def watts_per_amp(self) -> float:
        return self.phases * self.voltage_v

    @property
    def rated_power_w(self) -> float:
        return self.max_current_a * self.watts_per_amp

    @property
    def minimum_power_w(self) -> float:
        return self.min_current_a * self.watts_per_amp


@dataclass(frozen=True)
class CarVisit:
    """A car plugged in ``arrive_after_s`` after start, unplugged at ``leave_after_s`` (None: it stays)."""

    arrive_after_s: float = 0.0
    leave_after_s: float | None = None
    capacity_kwh: float = 60.0
    initial_soc_percentage: float = 30.0
    min_soc_percentage: float = 20.0  # V2G never discharges it below this


@dataclass(frozen=True)
class ChargingLimit:
    """The limit of the profile in force: W (negative: discharge) until ``valid_to`` (None: until replaced)."""

    limit_w: float
    valid_to: datetime | None
    profile_id: int


def delivered_power_w(limit_w: float | None, spec: ChargerSpec, soc_percentage: float, car: CarVisit) -> float:
    """Pure: the power the charger delivers to the car (negative: from it) under ``limit_w`` (None: rated)."""
    wanted_w = spec.rated_power_w if limit_w is None else limit_w
    if wanted_w >= 0:
        if soc_percentage >= 100.0:
            return 0.0
        current_a = min(wanted_w / spec.watts_per_amp, spec.max_current_a)
    else:
        if not spec.v2g or soc_percentage <= car.min_soc_percentage:
            return 0.0
        current_a = max(wanted_w / spec.watts_per_amp, -spec.max_current_a)
    if abs(current_a) < spec.min_current_a:
        return 0.0  # below the minimum current a charger cannot regulate: it pauses
    return current_a * spec.watts_per_amp


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class _State:
    soc_percentage: float = 0.0
    plugged: bool = False
    power_w: float = 0.0
    energy_import_wh: float = 0.0
    energy_export_wh: float = 0.0
    transaction_id: str | None = None
    limit: ChargingLimit | None = None
    profiles_received: list[dict[str, Any]] = field(default_factory=list)


def _schedule_limit_w(schedule: dict[str, Any], spec: ChargerSpec) -> float:
    """The first period's limit of a charging schedule, in W (a limit in A is per phase; a 2.1 setpoint wins)."""
    period = schedule["charging_schedule_period"][0]
    limit = float(period["setpoint"] if period.get("setpoint") is not None else period["limit"])
    return limit * spec.watts_per_amp if schedule.get("charging_rate_unit") == "A" else limit


class ChargerSimulator:
    """One simulated charger; ``async with`` connects and runs it, leaving the block disconnects it."""

    def __init__(
        self,
        *,
        url: str,
        charge_point_id: str,
        password: str | None,
        protocol: str = "ocpp1.6",
        spec: ChargerSpec | None = None,
        car: CarVisit | None = None,
        meter_interval_s: float = 10.0,
        tick_s: float = 1.0,
        fallback_limit_w: float | None = None,
        reject_profiles: str | None = None,
        ignore_profiles: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.charge_point_id = charge_point_id
        self.password = password
        self.protocol = protocol
        self.spec = spec or ChargerSpec()
        self.car = car
        self.meter_interval_s = meter_interval_s
        self.tick_s = tick_s
        self.fallback_limit_w = fallback_limit_w
        self.reject_profiles = reject_profiles  # a reason: every profile is rejected with it
        # A faulty charger: it accepts every profile and goes on at its own limit (the agent's meter check finds it).
        self.ignore_profiles = ignore_profiles
        self.state = _State(soc_percentage=car.initial_soc_percentage if car else 0.0)
        self.boot_status: str | None = None
        self.heartbeat_interval_s: int | None = None
        self.heartbeats_answered = 0
        self._connection: ClientConnection | None = None
        self._charge_point: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sequence = 0

    # --- connection -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> ChargerSimulator:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.disconnect()

    async def connect(self) -> None:
        """Open the WebSocket, start answering the central system, boot; raises what the handshake met."""
        headers = {}
        if self.password is not None:
            token = base64.b64encode(f"{self.charge_point_id}:{self.password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        self._connection = await connect(
            f"{self.url}/{self.charge_point_id}",
            subprotocols=[Subprotocol(self.protocol)],
            additional_headers=headers,
            open_timeout=10,
            close_timeout=2,
        )
        if self._connection.subprotocol != self.protocol:
            await self._connection.close()
            raise UnacceptedProtocol(f"the central system did not accept {self.protocol}")
        self._charge_point = _charge_point_class(self.protocol)(self.charge_point_id, self._connection, self)
        self._tasks.append(asyncio.create_task(self._receive(), name=f"{self.charge_point_id}-receive"))
        answer = await self._charge_point.call(self._boot_notification())
        self.boot_status = str(answer.status)
        self.heartbeat_interval_s = int(answer.interval)
        await self._send_status()
        self._tasks.append(asyncio.create_task(self._heartbeats(), name=f"{self.charge_point_id}-heartbeat"))
        self._tasks.append(asyncio.create_task(self._physics(), name=f"{self.charge_point_id}-physics"))

    async def disconnect(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._connection is not None:
            await self._connection.close()

    async def closed(self) -> None:
        """Until the connection to the central system is closed, from either side."""
        if self._connection is not None:
            await self._connection.wait_closed()

    def stop_reading(self) -> None:
        """Stop reading from the socket without closing it: a dead link, as the central system sees it."""
        for task in self._tasks:
            task.cancel()
        if self._connection is not None:
            self._connection.transport.pause_reading()

    async def _receive(self) -> None:
        with contextlib.suppress(Exception):  # the connection closing ends it, however it closes
            await self._charge_point.start()

    # --- messages to the central system ---------------------------------------------------------------------

    @property
    def _v16(self) -> bool:
        return self.protocol == "ocpp1.6"

    @property
    def _calls(self) -> Any:
        return {"ocpp1.6": call16, "ocpp2.0.1": call201, "ocpp2.1": call21}[self.protocol]

    def _boot_notification(self) -> Any:
        if self._v16:
            return call16.BootNotification(charge_point_model="gridloop-sim", charge_point_vendor="gridloop")
        return self._calls.BootNotification(
            charging_station={"model": "gridloop-sim", "vendor_name": "gridloop"}, reason="PowerUp"
        )

    async def _send_status(self) -> None:
        if self._v16:
            status = "Available"
            if self.state.plugged:
                status = "Charging" if self.state.power_w != 0 else "SuspendedEVSE"
            await self._charge_point.call(
                call16.StatusNotification(connector_id=1, error_code="NoError", status=status)
            )
            return
        await self._charge_point.call(
            self._calls.StatusNotification(
                timestamp=_timestamp(_now()),
                connector_status="Occupied" if self.state.plugged else "Available",
                evse_id=1,
                connector_id=1,
            )
        )

    def _sampled_values(self) -> list[dict[str, Any]]:
        state = self.state
        figures: list[tuple[str, float, str]] = [
            ("Power.Active.Import", max(state.power_w, 0.0), "W"),
            ("Energy.Active.Import.Register", state.energy_import_wh, "Wh"),
        ]
        if self.spec.v2g:
            figures += [
                ("Power.Active.Export", max(-state.power_w, 0.0), "W"),
                ("Energy.Active.Export.Register", state.energy_export_wh, "Wh"),
            ]
        if state.plugged:
            figures.append(("SoC", state.soc_percentage, "Percent"))
        if self._v16:
            return [
                {"value": f"{value:.1f}", "measurand": measurand, "unit": unit, "context": "Sample.Periodic"}
                for measurand, value, unit in figures
            ]
        return [
            {
                "value": round(value, 1),
                "measurand": measurand,
                "unit_of_measure": {"unit": unit},
                "context": "Sample.Periodic",
            }
            for measurand, value, unit in figures
        ]

    async def send_meter_values(self) -> None:
        meter_value = [{"timestamp": _timestamp(_now()), "sampled_value": self._sampled_values()}]
        if self._v16:
            extra = {} if self.state.transaction_id is None else {"transaction_id": int(self.state.transaction_id)}
            await self._charge_point.call(call16.MeterValues(connector_id=1, meter_value=meter_value, **extra))
        elif self.state.transaction_id is not None:
            await self._transaction_event("Updated", "MeterValuePeriodic", meter_value=meter_value)
        else:
            await self._charge_point.call(self._calls.MeterValues(evse_id=1, meter_value=meter_value))

    async def _transaction_event(
        self, event_type: str, trigger_reason: str, *, meter_value: list[dict[str, Any]] | None = None, **info: Any
    ) -> None:
        self._sequence += 1
        await self._charge_point.call(
            self._calls.TransactionEvent(
                event_type=event_type,
                timestamp=_timestamp(_now()),
                trigger_reason=trigger_reason,
                seq_no=self._sequence,
                transaction_info={"transaction_id": self.state.transaction_id, **info},
                evse={"id": 1, "connector_id": 1},
                meter_value=meter_value,
            )
        )

    async def _car_arrives(self) -> None:
        self.state.plugged = True
        if self.car is not None:
            self.state.soc_percentage = self.car.initial_soc_percentage
        logger.info("car plugged in", extra={"charger": self.charge_point_id, "soc": self.state.soc_percentage})
        if self._v16:
            answer = await self._charge_point.call(
                call16.StartTransaction(
                    connector_id=1,
                    id_tag="gridloop-car",
                    meter_start=int(self.state.energy_import_wh),
                    timestamp=_timestamp(_now()),
                )
            )
            self.state.transaction_id = str(answer.transaction_id)
        else:
            self.state.transaction_id = f"{self.charge_point_id}-{self._sequence + 1}"
            await self._transaction_event("Started", "CablePluggedIn")
        await self._send_status()

    async def _car_leaves(self) -> None:
        logger.info("car unplugged", extra={"charger": self.charge_point_id, "soc": self.state.soc_percentage})
        self.state.plugged = False
        self.state.power_w = 0.0
        if self._v16:
            await self._charge_point.call(
                call16.StopTransaction(
                    meter_stop=int(self.state.energy_import_wh),
                    timestamp=_timestamp(_now()),
                    transaction_id=int(self.state.transaction_id or 0),
                    reason="EVDisconnected",
                )
            )
        else:
            await self._transaction_event("Ended", "EVCommunicationLost", stopped_reason="EVDisconnected")
        self.state.transaction_id = None
        await self._send_status()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s or 60)
            await self._charge_point.call(self._calls.Heartbeat())
            self.heartbeats_answered += 1

    # --- the car and the charger's own control --------------------------------------------------------------

    def limit_in_force_w(self, now: datetime) -> float | None:
        """The profile's limit while valid; after its ``validTo`` the charger's own fallback (None: rated)."""
        limit = self.state.limit
        if limit is not None and limit.valid_to is not None and now >= limit.valid_to:
            logger.info("charging profile expired; falling back", extra={"charger": self.charge_point_id})
            self.state.limit = limit = None
        return self.fallback_limit_w if limit is None else limit.limit_w

    async def _physics(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        last_meter = started
        previous = started
        while True:
            await asyncio.sleep(self.tick_s)
            moment = loop.time()
            elapsed, step_s, previous = moment - started, moment - previous, moment
            car = self.car
            arrived = car is not None and car.arrive_after_s <= elapsed
            gone = car is not None and car.leave_after_s is not None and elapsed >= car.leave_after_s
            if arrived and not gone and not self.state.plugged:
                await self._car_arrives()
            if (
                car is not None
                and self.state.plugged
                and car.leave_after_s is not None
                and elapsed >= car.leave_after_s
            ):
                await self._car_leaves()
                self.car = None  # one visit per schedule
            if self.state.plugged and car is not None:
                before = self.state.power_w
                self.state.power_w = delivered_power_w(
                    self.limit_in_force_w(_now()), self.spec, self.state.soc_percentage, car
                )
                energy_wh = self.state.power_w * step_s / 3600.0
                if energy_wh >= 0:
                    self.state.energy_import_wh += energy_wh
                else:
                    self.state.energy_export_wh -= energy_wh
                soc = self.state.soc_percentage + energy_wh / (car.capacity_kwh * 10.0)
                self.state.soc_percentage = min(max(soc, 0.0), 100.0)
                if (before == 0) != (self.state.power_w == 0):
                    await self._send_status()
            if moment - last_meter >= self.meter_interval_s:
                last_meter = moment
                await self.send_meter_values()

    # --- what the central system asks -----------------------------------------------------------------------

    def profile_answer(self, profile: dict[str, Any], schedule: dict[str, Any]) -> tuple[bool, str | None]:
        """Apply a charging profile unless told to reject them: (accepted, the reason of a rejection)."""
        self.state.profiles_received.append(profile)
        if self.reject_profiles is not None:
            return False, self.reject_profiles
        if self.ignore_profiles:
            return True, None
        self.state.limit = ChargingLimit(
            limit_w=_schedule_limit_w(schedule, self.spec),
            valid_to=_parse_time(profile.get("valid_to")),
            profile_id=int(profile.get("charging_profile_id", profile.get("id", 0))),
        )
        logger.info(
            "charging profile applied", extra={"charger": self.charge_point_id, "limit_w": self.state.limit.limit_w}
        )
        return True, None


class _Client16(ChargePoint16):
    def __init__(self, charge_point_id: str, connection: Any, simulator: ChargerSimulator) -> None:
        super().__init__(charge_point_id, connection)
        self.simulator = simulator

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any) -> Any:
        accepted, _reason = self.simulator.profile_answer(
            cs_charging_profiles, cs_charging_profiles["charging_schedule"]
        )
        return result16.SetChargingProfile(status="Accepted" if accepted else "Rejected")


def _client_2x(results: Any, base: Any) -> Any:
    class Client2x(base):
        def __init__(self, charge_point_id: str, connection: Any, simulator: ChargerSimulator) -> None:
            super().__init__(charge_point_id, connection)
            self.simulator = simulator

        @on("SetChargingProfile")
        def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
            accepted, reason = self.simulator.profile_answer(charging_profile, charging_profile["charging_schedule"][0])
            if accepted:
                return results.SetChargingProfile(status="Accepted")
            return results.SetChargingProfile(
                status="Rejected", status_info={"reason_code": "Rejected", "additional_info": reason}
            )

    return Client2x


_CLIENTS: dict[str, Any] = {
    "ocpp1.6": _Client16,
    "ocpp2.0.1": _client_2x(result201, ChargePoint201),
    "ocpp2.1": _client_2x(result21, ChargePoint21),
}


def _charge_point_class(protocol: str) -> Any:
    return _CLIENTS[protocol]


async def main(argv: list[str]) -> None:
    """Run a simulated charger until cancelled."""
    parser = argparse.ArgumentParser(prog="gridloop sim charger", description="Simulated OCPP-J EV charger")
    parser.add_argument("--url", default="ws://127.0.0.1:9000/ocpp", help="the central system; /<id> is appended")
    parser.add_argument("--id", required=True, help="charge point identity (the registry's metadata.ocpp.id)")
    parser.add_argument("--password", help="Basic-auth password (its SHA-256 is metadata.ocpp.password_sha256)")
    parser.add_argument("--protocol", choices=["ocpp1.6", "ocpp2.0.1", "ocpp2.1"], default="ocpp1.6")
    parser.add_argument("--phases", type=int, choices=[1, 3], default=3)
    parser.add_argument("--max-current", type=float, default=16.0, help="A per phase")
    parser.add_argument("--min-current", type=float, default=6.0, help="A per phase; below it the charger pauses")
    parser.add_argument("--v2g", action="store_true", help="the charger can discharge the car")
    parser.add_argument("--arrive-after", type=float, default=5.0, help="seconds until the car plugs in")
    parser.add_argument("--leave-after", type=float, help="seconds until it unplugs (default: it stays)")
    parser.add_argument("--capacity-kwh", type=float, default=60.0)
    parser.add_argument("--soc", type=float, default=30.0, help="the car's SoC on arrival, percent")
    parser.add_argument("--min-soc", type=float, default=20.0, help="V2G never discharges below it, percent")
    parser.add_argument("--meter-interval", type=float, default=10.0, help="seconds between meter values")
    parser.add_argument("--fallback-w", type=float, help="limit without a valid profile (default: rated power)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    simulator = ChargerSimulator(
        url=arguments.url,
        charge_point_id=arguments.id,
        password=arguments.password,
        protocol=arguments.protocol,
        spec=ChargerSpec(
            phases=arguments.phases,
            max_current_a=arguments.max_current,
            min_current_a=arguments.min_current,
            v2g=arguments.v2g,
        ),
        car=CarVisit(
            arrive_after_s=arguments.arrive_after,
            leave_after_s=arguments.leave_after,
            capacity_kwh=arguments.capacity_kwh,
            initial_soc_percentage=arguments.soc,
            min_soc_percentage=arguments.min_soc,
        ),
        meter_interval_s=arguments.meter_interval,
        fallback_limit_w=arguments.fallback_w,
    )
    # Like a real charger, it dials in again whenever it cannot reach the central system or loses it.
    while True:
        try:
            async with simulator:
                logger.info(
                    "charger simulator connected", extra={"charger": arguments.id, "boot": simulator.boot_status}
                )
                await simulator.closed()
            logger.warning("central system connection lost; dialling in again", extra={"charger": arguments.id})
        except (OSError, InvalidHandshake, TimeoutError) as error:
            logger.warning(
                "central system not reachable; retrying", extra={"charger": arguments.id, "error": repr(error)}
            )
        await asyncio.sleep(RECONNECT_S)
