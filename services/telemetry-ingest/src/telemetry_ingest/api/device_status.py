"""``GET /status/devices``: how fresh each device's telemetry is, for the service_role key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import DeviceType
from telemetry_ingest.api.auth import AuthenticationError, Authenticator
from telemetry_ingest.api.postgrest import PostgrestError
from telemetry_ingest.ingest.repository import DEVICE_LAST_READING, ReadingsRepository

__all__ = ["DeviceFreshness", "DeviceStatus", "device_status_route"]


_CHARGER_TYPES = frozenset(
    {DeviceType.ON_OFF_EV_CHARGER, DeviceType.ELECTRIC_VEHICLE_V1G, DeviceType.ELECTRIC_VEHICLE_V2G}
)


@dataclass(frozen=True)
class DeviceStatus:
    """How fresh one device's telemetry is."""

    device: str  # the device id (uuid), also the gauge's label
    name: str | None  # registry name, None for a device that is not registered
    last_reading_at: datetime | None
    age_s: float | None
    stale: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "name": self.name,
            "last_reading_at": self.last_reading_at.isoformat() if self.last_reading_at else None,
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "stale": self.stale,
        }


class DeviceFreshness:
    """When each device last reported: the registry's active devices, the readings stored by any replica,
    and the newest reading this replica wrote (``readings``), which the database may not show yet.

    ``stale_after_s`` defaults to three of the agent's poll intervals: one lost cycle is noise, three
    in a row mean the device (or its agent) is gone. EV chargers are not polled: they send meter values at
    their own interval (the agent asks for one a minute), so they are stale after three of those.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        readings: ReadingsRepository,
        *,
        poll_interval_s: float = 5.0,
        stale_after_intervals: float = 3.0,
        charger_report_interval_s: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        if poll_interval_s <= 0 or stale_after_intervals <= 0 or charger_report_interval_s <= 0:
            raise ValueError("poll_interval_s, stale_after_intervals and charger_report_interval_s must be positive")
        self._pool = pool
        self._readings = readings
        self.stale_after_s = poll_interval_s * stale_after_intervals
        self.charger_stale_after_s = charger_report_interval_s * stale_after_intervals
        self._clock: Clock = clock or SystemClock()

    async def device_status(self) -> list[DeviceStatus]:
        """Freshness of every active registered device and of every device this replica has seen."""
        rows = await self._pool.fetch(
            """
            SELECT registry.id, registry.name, registry.type, greatest(
                (SELECT max(bess.time) FROM flux.mg_bess_readings AS bess WHERE bess.device_id = registry.id),
                (SELECT max(meter.time) FROM flux.mg_meter_readings AS meter WHERE meter.device_id = registry.id),
                (
                    SELECT max(charger.time) FROM flux.mg_ev_charger_readings AS charger
                    WHERE charger.device_id = registry.id
                )
            ) AS last_reading_at
            FROM flux.mg_device_registry AS registry
            WHERE registry.active
            """
        )
        now = self._clock.now().timestamp()
        last_readings = self._readings.last_readings()
        names: dict[UUID, str | None] = {UUID(key): None for key in last_readings}
        types: dict[UUID, str] = {}
        latest: dict[UUID, float] = {UUID(key): moment for key, moment in last_readings.items()}
        for row in rows:
            names[row["id"]] = row["name"]
            types[row["id"]] = row["type"]
            stored: datetime | None = row["last_reading_at"]
            if stored is not None:
                moment = stored.timestamp()
                if moment > latest.get(row["id"], float("-inf")):
                    latest[row["id"]] = moment
                    # Readings stored by another replica (or before a restart) count for the gauge too.
                    DEVICE_LAST_READING.labels(str(row["id"])).set(moment)
        statuses = []
        for device_id, name in names.items():
            moment_or_none = latest.get(device_id)
            age_s = None if moment_or_none is None else now - moment_or_none
            statuses.append(
                DeviceStatus(
                    device=str(device_id),
                    name=name,
                    last_reading_at=None if moment_or_none is None else datetime.fromtimestamp(moment_or_none, tz=UTC),
                    age_s=age_s,
                    stale=age_s is None or age_s > self.stale_after_for(types.get(device_id)),
                )
            )
        statuses.sort(key=lambda status: (status.name is None, status.name or "", status.device))
        return statuses

    def stale_after_for(self, device_type: str | None) -> float:
        """Seconds without a reading after which a device of ``device_type`` counts as stale."""
        return self.charger_stale_after_s if device_type in _CHARGER_TYPES else self.stale_after_s

    async def stale_devices(self) -> list[DeviceStatus]:
        """Devices with no reading for more than ``stale_after_s`` (or none at all)."""
        return [status for status in await self.device_status() if status.stale]


def device_status_route(
    freshness: DeviceFreshness, *, authenticator: Authenticator, path: str = "/status/devices"
) -> Route:
    """``GET /status/devices``: a JSON list of {device, name, last_reading_at, age_s, stale}.

    It names every device and when it last reported, so it takes the service_role key (`apikey` or
    `Authorization: Bearer`, as the Flux API): no key or a bad one is 401, another role's key is 401 (anon)
    or 403, as PostgREST answers a permission error.
    """

    async def device_status(request: Request) -> Response:
        try:
            identity = authenticator.authenticate(request.headers, request.query_params.get("apikey"))
        except AuthenticationError as error:
            return JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": error.challenge})
        if identity.role != "service_role":
            refused = PostgrestError(
                401 if identity.anonymous else 403,
                "42501",
                "permission denied for the device status",
                hint="Send the service_role key.",
            )
            headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else None
            return JSONResponse(refused.body(), status_code=refused.status, headers=headers)
        statuses = await freshness.device_status()
        return JSONResponse([status.as_json() for status in statuses])

    return Route(path, device_status, methods=["GET"])
