"""Flux telemetry rows (docs/design.md §5): schema ``flux`` tables and the 5m/30m meter aggregate RPC rows.

Units and signs: power in kW, energy in kWh, ``soe`` in percent (0-100). Positive power flows into
the device or site from the grid (battery charging, site importing); negative is discharging or
exporting. Market data keeps the units of its type (``MARKET_DATA_TYPES``).
"""

import enum
from typing import Annotated, Any, Final
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gridloop_common.contracts.device_metadata import DeviceMetadata

__all__ = [
    "MARKET_DATA_TYPES",
    "BessReading",
    "CommandSource",
    "DeviceRegistryEntry",
    "DeviceType",
    "EvChargerReading",
    "EvSession",
    "MarketData",
    "MarketDataType",
    "MarketDataTypeId",
    "MeterAggregateRequest",
    "MeterReading",
    "MeterReading5m",
    "MeterReading30m",
]

_SMALLINT_MAX: Final = 32767

_SmallInt = Annotated[int, Field(ge=0, le=_SMALLINT_MAX)]
# Bounds on the float, not on the optional: ingest's row decoder translates a bounded float, not a bounded union.
_Percent = Annotated[float, Field(ge=0, le=100)]


class _FluxRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CommandSource(enum.IntEnum):
    """Known values of ``mg_bess_readings.command_source``: what is controlling the battery."""

    MANUAL = 0
    NIV_CHASE = 1
    DYNAMIC_PEAK = 2
    IMPORT_AVOIDANCE = 3
    EXPORT_AVOIDANCE = 4
    AXLE_DISPATCH = 5


class MarketDataTypeId(enum.IntEnum):
    """Ids of the seeded ``market_data_types`` rows, the values of ``market_data.type``."""

    NIV_ESTIMATE = 1
    WHOLESALE_PRICE = 2
    IMBALANCE_PRICE = 3
    AXLE_DISPATCH = 4


class DeviceType(enum.StrEnum):
    """The values of ``mg_device_registry.type`` (docs/design.md §4), the one list every service reads.

    telemetry-ingest's migration 0016 holds the same list in a CHECK constraint, so a registration with
    any other spelling (``battery``, ``storage``, ``BESS``) is refused instead of being driven by one
    service and ignored by another.
    """

    BESS = "bess"  # a battery; the Grid Services API calls it electric_storage
    METER = "meter"
    SPACE_HEATING = "space_heating"
    WATER_HEATER = "water_heater"
    ON_OFF_EV_CHARGER = "on_off_ev_charger"
    ELECTRIC_VEHICLE_V1G = "electric_vehicle_v1g"
    ELECTRIC_VEHICLE_V2G = "electric_vehicle_v2g"


class DeviceRegistryEntry(_FluxRow):
    """A row of ``flux.mg_device_registry``; ``name`` is unique and is what upstream ``device_id`` names.

    ``metadata`` holds the device's limits and address, e.g. ``{"capacity_kwh": 13.5,
    "max_power_kw": 5, "modbus": {"host": "10.0.0.5", "port": 502, "unit_id": 1, "profile": "sunspec"}}``.
    It must satisfy ``DeviceMetadata``; it is kept as written (extra keys and all), not re-serialised.
    ``id`` and ``created_at`` are assigned by the database, so they are absent on insert.
    """

    id: UUID | None = None
    name: str = Field(min_length=1)
    type: DeviceType = Field(description="Device type, one of DeviceType.")
    site: str = Field(min_length=1, description="Site code, e.g. WLCE.")
    metadata: dict[str, Any] | None = None
    active: bool = True
    created_at: AwareDatetime | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_contract(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        DeviceMetadata.from_registry(metadata)  # InvalidDeviceMetadata is a ValueError: pydantic reports it
        return metadata


class BessReading(_FluxRow):
    """A row of ``flux.mg_bess_readings``, unique on ``(device_id, time)``.

    ``id`` and ``created_at`` are assigned by the database, so they are absent on insert.
    """

    id: UUID | None = None
    time: AwareDatetime
    device_id: UUID
    soe: float = Field(ge=0, le=100, description="State of energy, percent.")
    target_power: float = Field(description="Commanded power in kW; positive charges, negative discharges.")
    available_inverter_blocks: _SmallInt | None = Field(default=None, description="Available capacity units.")
    command_source: _SmallInt | None = Field(default=None, description="What controls the battery (CommandSource).")
    created_at: AwareDatetime | None = None


class MeterReading(_FluxRow):
    """A row of ``flux.mg_meter_readings``, unique on ``(device_id, time)``; every measurement may be null.

    Power is positive when the site imports. Energy columns are cumulative counters.
    ``id`` and ``created_at`` are assigned by the database, so they are absent on insert.
    """

    id: UUID | None = None
    time: AwareDatetime
    device_id: UUID
    created_at: AwareDatetime | None = None
    frequency: float | None = Field(default=None, description="Hz.")
    voltage_line_average: float | None = Field(default=None, description="V.")
    current_phase_a: float | None = Field(default=None, description="A.")
    current_phase_b: float | None = Field(default=None, description="A.")
    current_phase_c: float | None = Field(default=None, description="A.")
    current_phase_average: float | None = Field(default=None, description="A.")
    power_phase_a_active: float | None = Field(default=None, description="kW.")
    power_phase_b_active: float | None = Field(default=None, description="kW.")
    power_phase_c_active: float | None = Field(default=None, description="kW.")
    power_total_active: float | None = Field(default=None, description="kW, positive when importing.")
    power_total_reactive: float | None = Field(default=None, description="kVAR.")
    power_total_apparent: float | None = Field(default=None, description="kVA.")
    power_factor_total: float | None = None
    energy_imported_active: float | None = Field(default=None, description="kWh counter.")
    energy_exported_active: float | None = Field(default=None, description="kWh counter.")
    energy_imported_phase_a_active: float | None = Field(default=None, description="kWh counter.")
    energy_exported_phase_a_active: float | None = Field(default=None, description="kWh counter.")
    energy_imported_phase_b_active: float | None = Field(default=None, description="kWh counter.")
    energy_exported_phase_b_active: float | None = Field(default=None, description="kWh counter.")
    energy_imported_phase_c_active: float | None = Field(default=None, description="kWh counter.")
    energy_exported_phase_c_active: float | None = Field(default=None, description="kWh counter.")
    energy_imported_reactive: float | None = Field(default=None, description="kVARh counter.")
    energy_exported_reactive: float | None = Field(default=None, description="kVARh counter.")
    energy_imported_apparent: float | None = Field(default=None, description="kVAh counter.")
    energy_exported_apparent: float | None = Field(default=None, description="kVAh counter.")


class EvChargerReading(_FluxRow):
    """A row of ``flux.mg_ev_charger_readings``, unique on ``(device_id, time)``: one OCPP MeterValues (or the
    meter values of a TransactionEvent) of an EV charger, as the device-agent received it.

    Power is positive into the car, negative out of it (V2G); energy columns are the charger's registers.
    ``id`` and ``created_at`` are assigned by the database, so they are absent on insert.
    """

    id: UUID | None = None
    time: AwareDatetime
    device_id: UUID
    created_at: AwareDatetime | None = None
    power_kw: float | None = Field(default=None, description="kW, positive into the car.")
    energy_import_kwh: float | None = Field(default=None, description="kWh register, into the car.")
    energy_export_kwh: float | None = Field(default=None, description="kWh register, out of the car (V2G).")
    soc_pct: _Percent | None = Field(default=None, description="The car's state of charge, percent.")
    connector_status: str | None = Field(default=None, description="OCPP connector status, e.g. Charging.")
    transaction_id: str | None = Field(default=None, description="The charger's transaction, while one runs.")


class EvSession(_FluxRow):
    """A row of ``flux.mg_ev_sessions``: one charging session (an OCPP transaction), from plug-in to plug-out.

    The device-agent publishes it at the transaction's start (plug-in time, initial SoC when known) and again at
    its end (everything); telemetry-ingest upserts on ``session_id``, so the two may arrive in either order.
    ``session_id`` is the agent's uuid5 of device, transaction id and plug-in time (an OCPP 1.6 transaction id
    is an integer the central system hands out, which repeats across restarts).
    """

    session_id: UUID
    device_id: UUID
    transaction_id: str = Field(min_length=1)
    plugged_in_at: AwareDatetime
    plugged_out_at: AwareDatetime | None = None
    energy_kwh: float | None = Field(default=None, description="Energy delivered to the car, kWh (net of V2G).")
    initial_soc_pct: _Percent | None = Field(default=None, description="SoC at plug-in, percent.")
    final_soc_pct: _Percent | None = Field(default=None, description="SoC at plug-out, percent.")
    stop_reason: str | None = Field(default=None, description="The charger's reason for ending the transaction.")


class MarketDataType(_FluxRow):
    """A row of ``flux.market_data_types``: what a ``market_data.type`` id means and its unit."""

    id: int = Field(ge=1)
    name: str = Field(min_length=1)
    description: str | None = None
    unit: str | None = None


MARKET_DATA_TYPES: Final[tuple[MarketDataType, ...]] = (
    MarketDataType(id=MarketDataTypeId.NIV_ESTIMATE, name="niv_estimate", description="NIV Estimate", unit="MW"),
    MarketDataType(
        id=MarketDataTypeId.WHOLESALE_PRICE,
        name="wholesale_price",
        description="Wholesale Price",
        unit="£/MWh",
    ),
    MarketDataType(
        id=MarketDataTypeId.IMBALANCE_PRICE,
        name="imbalance_price",
        description="Imbalance Price",
        unit="£/MWh",
    ),
    MarketDataType(id=MarketDataTypeId.AXLE_DISPATCH, name="axle_dispatch", description="Axle Dispatch", unit="kW"),
)
"""The seeded ``market_data_types`` rows, in id order."""


class MarketData(_FluxRow):
    """A row of ``flux.market_data``: one value of one market signal at one time.

    A ``(type, time)`` may have several revisions; the latest ``created_at`` is current.
    ``id`` and ``created_at`` are assigned by the database, so they are absent on insert.
    """

    id: UUID | None = None
    time: AwareDatetime
    type: int = Field(ge=1, description="A market_data_types id (MarketDataTypeId).")
    value: float = Field(description="In the unit of the type.")
    metadata: dict[str, Any] | None = None
    created_at: AwareDatetime | None = None


class MeterAggregateRequest(_FluxRow):
    """The body of ``POST /rpc/get_meter_readings_5m`` and ``_30m``.

    Buckets with ``start_time <= time_b <= end_time`` are returned; null ``device_ids`` means all
    devices. The defaults are the last 24 hours.
    """

    start_time: AwareDatetime | None = Field(default=None, description="Default: 24 hours before now.")
    end_time: AwareDatetime | None = Field(default=None, description="Default: now.")
    device_ids: list[UUID] | None = Field(default=None, description="Null: all devices.")

    @field_validator("end_time")
    @classmethod
    def _end_not_before_start(cls, end_time: AwareDatetime | None, info: ValidationInfo) -> AwareDatetime | None:
        start_time = info.data.get("start_time")
        if end_time is not None and start_time is not None and end_time < start_time:
            raise ValueError("end_time must not be before start_time")
        return end_time


class _MeterReadingAggregate(_FluxRow):
    """One device's meter readings over one bucket starting at ``time_b``.

    ``*_avg`` are averages of the measurements, ``*_min`` the lowest counter readings in the bucket,
    ``*_delta`` the interpolated counter increase over the bucket (null without counter data).
    """

    time_b: AwareDatetime
    device_id: UUID
    frequency_avg: float | None = None
    voltage_line_average_avg: float | None = None
    current_phase_a_avg: float | None = None
    current_phase_b_avg: float | None = None
    current_phase_c_avg: float | None = None
    current_phase_average_avg: float | None = None
    power_phase_a_active_avg: float | None = None
    power_phase_b_active_avg: float | None = None
    power_phase_c_active_avg: float | None = None
    power_total_active_avg: float | None = None
    power_total_reactive_avg: float | None = None
    power_total_apparent_avg: float | None = None
    power_factor_total_avg: float | None = None
    energy_imported_active_min: float | None = None
    energy_exported_active_min: float | None = None
    energy_imported_phase_a_active_min: float | None = None
    energy_exported_phase_a_active_min: float | None = None
    energy_imported_phase_b_active_min: float | None = None
    energy_exported_phase_b_active_min: float | None = None
    energy_imported_phase_c_active_min: float | None = None
    energy_exported_phase_c_active_min: float | None = None
    energy_imported_active_delta: float | None = None
    energy_exported_active_delta: float | None = None
    energy_imported_phase_a_active_delta: float | None = None
    energy_exported_phase_a_active_delta: float | None = None
    energy_imported_phase_b_active_delta: float | None = None
    energy_exported_phase_b_active_delta: float | None = None
    energy_imported_phase_c_active_delta: float | None = None
    energy_exported_phase_c_active_delta: float | None = None
    energy_imported_reactive_delta: float | None = None
    energy_exported_reactive_delta: float | None = None
    energy_imported_apparent_delta: float | None = None
    energy_exported_apparent_delta: float | None = None


class MeterReading5m(_MeterReadingAggregate):
    """A row returned by ``POST /rpc/get_meter_readings_5m``: one device over a 5-minute bucket.

    ``*_avg`` are averages of the measurements, ``*_min`` the lowest counter readings in the bucket,
    ``*_delta`` the interpolated counter increase over the bucket (null without counter data).
    """


class MeterReading30m(_MeterReadingAggregate):
    """A row returned by ``POST /rpc/get_meter_readings_30m``: one device over a 30-minute settlement period.

    ``*_avg`` are averages of the measurements, ``*_min`` the lowest counter readings in the bucket,
    ``*_delta`` the interpolated counter increase over the bucket (null without counter data).
    """
