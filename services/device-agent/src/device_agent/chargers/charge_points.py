"""The central system's side of one OCPP-J connection, per version: the ``ocpp`` library's ChargePoint with a
handler per action the charger sends (boot, heartbeat, status, meter values, transactions).

Handlers only record what the charger said (through ``ChargerEvents``) and answer; they never call the
charger back, because the library runs them inside its receive loop (a call from there would wait forever).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v16.enums import AuthorizationStatus, RegistrationStatus
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201

from device_agent.chargers.meter_values import ChargerReading, reading_from_meter_values

__all__ = ["ChargerEvents", "charge_point_for"]


class _MessageLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The ocpp library logs every message it sends and receives at INFO: with a thousand chargers that is
    most of the agent's log. They go to DEBUG (logger ``device_agent.chargers.messages``)."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_MESSAGES = _MessageLog(logging.getLogger("device_agent.chargers.messages"), {})


class ChargerEvents(Protocol):
    """What a connection reports to its session; ``now`` and ``heartbeat_interval_s`` answer the charger."""

    heartbeat_interval_s: int

    def now(self) -> datetime: ...

    def booted(self, vendor: str, model: str) -> None: ...

    def heard(self) -> None: ...

    def status_changed(self, connector_status: str) -> None: ...

    def metered(self, reading: ChargerReading) -> None: ...

    def transaction_started(self, transaction_id: str, meter_start_wh: float | None) -> None: ...

    def transaction_ended(self, transaction_id: str, reason: str | None, meter_stop_wh: float | None) -> None: ...


def _timestamp(events: ChargerEvents) -> str:
    return events.now().isoformat().replace("+00:00", "Z")


class CentralSystem16(ChargePoint16):
    """OCPP 1.6J: on/off and V1G chargers."""

    def __init__(self, charge_point_id: str, connection: Any, events: ChargerEvents, *, response_timeout_s: float):
        super().__init__(charge_point_id, connection, response_timeout=response_timeout_s, logger=_MESSAGES)
        self.events = events
        self._next_transaction_id = 1

    @on(Action16.boot_notification)
    def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str, **_: Any) -> Any:
        self.events.booted(charge_point_vendor, charge_point_model)
        return result16.BootNotification(
            current_time=_timestamp(self.events),
            interval=self.events.heartbeat_interval_s,
            status=RegistrationStatus.accepted,
        )

    @on(Action16.heartbeat)
    def on_heartbeat(self) -> Any:
        self.events.heard()
        return result16.Heartbeat(current_time=_timestamp(self.events))

    @on(Action16.status_notification)
    def on_status_notification(self, connector_id: int, status: str, **_: Any) -> Any:
        if connector_id != 0:  # connector 0 is the charge point as a whole
            self.events.status_changed(str(status))
        return result16.StatusNotification()

    @on(Action16.meter_values)
    def on_meter_values(self, meter_value: list[dict[str, Any]], **_: Any) -> Any:
        self.events.metered(reading_from_meter_values(meter_value))
        return result16.MeterValues()

    @on(Action16.authorize)
    def on_authorize(self, **_: Any) -> Any:
        # Who may charge is the site's business, not the energy manager's: every tag is accepted.
        return result16.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action16.start_transaction)
    def on_start_transaction(self, meter_start: int | None = None, **_: Any) -> Any:
        transaction_id, self._next_transaction_id = self._next_transaction_id, self._next_transaction_id + 1
        self.events.transaction_started(str(transaction_id), None if meter_start is None else float(meter_start))
        return result16.StartTransaction(
            transaction_id=transaction_id, id_tag_info={"status": AuthorizationStatus.accepted}
        )

    @on(Action16.stop_transaction)
    def on_stop_transaction(
        self, transaction_id: int, reason: str | None = None, meter_stop: int | None = None, **_: Any
    ) -> Any:
        self.events.transaction_ended(str(transaction_id), reason, None if meter_stop is None else float(meter_stop))
        return result16.StopTransaction()


def _charge_point_2x(version_result: Any, base: Any) -> Any:
    """The 2.0.1 and 2.1 handlers: the same actions and fields, each version's own message classes."""

    class CentralSystem2x(base):
        def __init__(
            self, charge_point_id: str, connection: Any, events: ChargerEvents, *, response_timeout_s: float
        ) -> None:
            super().__init__(charge_point_id, connection, response_timeout=response_timeout_s, logger=_MESSAGES)
            self.events = events

        @on("BootNotification")
        def on_boot_notification(self, charging_station: dict[str, Any], **_: Any) -> Any:
            self.events.booted(str(charging_station.get("vendor_name")), str(charging_station.get("model")))
            return version_result.BootNotification(
                current_time=_timestamp(self.events), interval=self.events.heartbeat_interval_s, status="Accepted"
            )

        @on("Heartbeat")
        def on_heartbeat(self, **_: Any) -> Any:
            self.events.heard()
            return version_result.Heartbeat(current_time=_timestamp(self.events))

        @on("StatusNotification")
        def on_status_notification(self, connector_status: str, **_: Any) -> Any:
            self.events.status_changed(str(connector_status))
            return version_result.StatusNotification()

        @on("MeterValues")
        def on_meter_values(self, meter_value: list[dict[str, Any]], **_: Any) -> Any:
            self.events.metered(reading_from_meter_values(meter_value))
            return version_result.MeterValues()

        @on("Authorize")
        def on_authorize(self, **_: Any) -> Any:
            return version_result.Authorize(id_token_info={"status": "Accepted"})

        @on("TransactionEvent")
        def on_transaction_event(
            self,
            event_type: str,
            transaction_info: dict[str, Any],
            meter_value: list[dict[str, Any]] | None = None,
            **_: Any,
        ) -> Any:
            transaction_id = str(transaction_info.get("transaction_id"))
            if event_type == "Started":
                self.events.transaction_started(transaction_id, None)
            if meter_value:
                self.events.metered(reading_from_meter_values(meter_value))
            if event_type == "Ended":
                self.events.transaction_ended(transaction_id, transaction_info.get("stopped_reason"), None)
            return version_result.TransactionEvent()

    return CentralSystem2x


CentralSystem201 = _charge_point_2x(result201, ChargePoint201)
CentralSystem21 = _charge_point_2x(result21, ChargePoint21)

_BY_PROTOCOL: dict[str, Any] = {"ocpp1.6": CentralSystem16, "ocpp2.0.1": CentralSystem201, "ocpp2.1": CentralSystem21}


def charge_point_for(
    protocol: str, charge_point_id: str, connection: Any, events: ChargerEvents, *, response_timeout_s: float
) -> Any:
    """The library ChargePoint that speaks ``protocol`` (ocpp1.6, ocpp2.0.1 or ocpp2.1) on ``connection``."""
    return _BY_PROTOCOL[protocol](charge_point_id, connection, events, response_timeout_s=response_timeout_s)
