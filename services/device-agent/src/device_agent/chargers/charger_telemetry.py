"""What the central system publishes about its chargers besides availability: their meter values
(``EvChargerReading`` lists on ``telemetry.ev_charger``), their charging sessions (``EvSession`` on
``telemetry.ev_session``, at plug-in and again at plug-out) and the outcomes of profile confirmations.

The OCPP handlers run inside the library's receive loop and must answer at once, so they only hand what they
saw to ``ChargerOutbox``; one task publishes it, a batch per wake-up (a thousand chargers' meter values of a
minute make a few messages, not a thousand). A message the broker does not confirm is dropped and counted, as
the battery poller drops a cycle's readings: the next meter values follow within a minute.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from prometheus_client import Counter
from pydantic import TypeAdapter

from gridloop_common.contracts import DeviceOutcome, EvChargerReading, EvSession, routing
from gridloop_common.messaging import Publisher, PublishError

__all__ = ["ChargerOutbox", "OpenSession", "session_id_of"]

logger = logging.getLogger(__name__)

EV_MESSAGES_DROPPED = Counter(
    "gridloop_ocpp_telemetry_dropped_total",
    "EV charger readings, sessions and confirmation outcomes lost because the broker did not confirm them.",
    ["kind"],
)

_READINGS: Final = TypeAdapter(list[EvChargerReading])
_SESSIONS: Final = TypeAdapter(list[EvSession])
# A fixed namespace: the same transaction of the same charger started at the same time is the same session.
_SESSION_NAMESPACE: Final = uuid.UUID("5b0c3f0e-1c4e-4f55-9a57-6b8f3c1d2e77")
_BATCH_LIMIT: Final = 2000


def session_id_of(device_id: uuid.UUID, transaction_id: str, plugged_in_at: datetime) -> uuid.UUID:
    """A session's id: an OCPP 1.6 transaction id is the central system's counter and repeats across restarts."""
    return uuid.uuid5(_SESSION_NAMESPACE, f"{device_id}|{transaction_id}|{plugged_in_at.isoformat()}")


@dataclass
class OpenSession:
    """A transaction in progress, and what its record will need at the end.

    The energy register at plug-in is OCPP 1.6's ``meterStart`` or, failing that (2.x sends none), the first
    register read during the session; the initial SoC is the first SoC read during it (chargers report SoC only
    with a car, and the plug-in message itself seldom carries it).
    """

    device_id: uuid.UUID
    transaction_id: str
    plugged_in_at: datetime
    start_import_wh: float | None = None
    start_export_wh: float | None = None
    last_import_wh: float | None = None
    last_export_wh: float | None = None
    initial_soc_pct: float | None = None
    final_soc_pct: float | None = None
    session_id: uuid.UUID = field(init=False)

    def __post_init__(self) -> None:
        self.session_id = session_id_of(self.device_id, self.transaction_id, self.plugged_in_at)

    def note(self, *, import_wh: float | None, export_wh: float | None, soc_pct: float | None) -> None:
        if import_wh is not None:
            if self.start_import_wh is None:
                self.start_import_wh = import_wh
            self.last_import_wh = import_wh
        if export_wh is not None:
            if self.start_export_wh is None:
                self.start_export_wh = export_wh
            self.last_export_wh = export_wh
        if soc_pct is not None:
            if self.initial_soc_pct is None:
                self.initial_soc_pct = soc_pct
            self.final_soc_pct = soc_pct

    def record(self, *, plugged_out_at: datetime | None = None, stop_reason: str | None = None) -> EvSession:
        """The session as it stands (``plugged_out_at`` set: as it ended)."""
        energy_kwh = None
        if plugged_out_at is not None and self.start_import_wh is not None and self.last_import_wh is not None:
            delivered_wh = self.last_import_wh - self.start_import_wh
            if self.start_export_wh is not None and self.last_export_wh is not None:
                delivered_wh -= self.last_export_wh - self.start_export_wh  # V2G: net of what the car gave back
            energy_kwh = delivered_wh / 1000.0
        return EvSession(
            session_id=self.session_id,
            device_id=self.device_id,
            transaction_id=self.transaction_id,
            plugged_in_at=self.plugged_in_at,
            plugged_out_at=plugged_out_at,
            energy_kwh=energy_kwh,
            initial_soc_pct=self.initial_soc_pct,
            final_soc_pct=self.final_soc_pct if plugged_out_at is not None else None,
            stop_reason=stop_reason,
        )


class ChargerOutbox:
    """Collects readings, sessions and outcomes from the OCPP handlers; ``run`` publishes them."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._readings: list[EvChargerReading] = []
        self._sessions: list[EvSession] = []
        self._outcomes: list[DeviceOutcome] = []
        self._wake = asyncio.Event()

    def reading(self, reading: EvChargerReading) -> None:
        self._readings.append(reading)
        self._wake.set()

    def session(self, session: EvSession) -> None:
        self._sessions.append(session)
        self._wake.set()

    def outcome(self, outcome: DeviceOutcome) -> None:
        self._outcomes.append(outcome)
        self._wake.set()

    async def run(self) -> None:
        """Publish whatever is waiting, each time something arrives, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Publish everything waiting now (sessions before readings: a session is rarer and matters more)."""
        sessions, self._sessions = self._sessions, []
        readings, self._readings = self._readings, []
        outcomes, self._outcomes = self._outcomes, []
        if sessions:
            await self._publish(
                "sessions",
                routing.RoutingKeys.TELEMETRY_EV_SESSION,
                _SESSIONS.dump_json(sessions, exclude_none=True),
            )
        for start in range(0, len(readings), _BATCH_LIMIT):
            batch = readings[start : start + _BATCH_LIMIT]
            await self._publish(
                "readings",
                routing.RoutingKeys.TELEMETRY_EV_CHARGER,
                # exclude_none: id and created_at are the database's, and ingest's fast decoder takes columns only.
                _READINGS.dump_json(batch, exclude_none=True),
            )
        for outcome in outcomes:
            try:
                await self._publisher.publish(
                    exchange=routing.DEVICES_EXCHANGE, routing_key=routing.RoutingKeys.DEVICE_OUTCOME, body=outcome
                )
            except PublishError as error:
                EV_MESSAGES_DROPPED.labels(kind="outcome").inc()
                logger.warning(
                    "confirmation outcome not published", extra={"device": outcome.device_name, "error": str(error)}
                )

    async def _publish(self, kind: str, routing_key: str, body: bytes) -> None:
        try:
            await self._publisher.publish(exchange=routing.TELEMETRY_EXCHANGE, routing_key=routing_key, body=body)
        except PublishError as error:
            EV_MESSAGES_DROPPED.labels(kind=kind).inc()
            logger.warning("EV charger telemetry not published", extra={"kind": kind, "error": str(error)})
