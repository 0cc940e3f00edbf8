"""The typed contract of ``flux.mg_device_registry.metadata``: one set of rules for every service.

The scheduler, the device-agent, the optimizer and telemetry-ingest's upload read a device's limits and
address through ``DeviceMetadata.from_registry``; a row it refuses is reported with the field it names,
never guessed at (a ``max_power_kw`` of ``0`` or ``true`` is an error, not "unlimited" or "1 kW").

Numbers are strict: JSON booleans and numeric strings are refused, integers are accepted where a float is
expected. Keys this model does not name are kept (``extra="allow"``), so metadata written for a later
feature passes through until the feature types it here.

telemetry-ingest's migration 0019 holds the same rules in SQL (``flux.device_metadata_problem``), so a
bad value written through the REST API is refused with the field named; its agreement test runs one table
of examples through both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "OCPP_VERSIONS",
    "DeviceMetadata",
    "ElectricVehicleDefaults",
    "InvalidDeviceMetadata",
    "ModbusAddress",
    "OcppEndpoint",
]

_Positive = Annotated[float, Field(gt=0)]
_Percentage = Annotated[float, Field(ge=0, le=100)]

# The OCPP-J versions the device-agent's central system speaks (metadata.ocpp.version); the WebSocket
# subprotocol is "ocpp" + the version.
OCPP_VERSIONS = ("1.6", "2.0.1", "2.1")


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)


class ModbusAddress(_Metadata):
    """Where the device answers Modbus TCP: ``metadata.modbus``."""

    host: str = Field(min_length=1, description="Host name or IP address.")
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit identifier.")
    profile: str | None = Field(default=None, min_length=1, description="Register map, e.g. sunspec.")


class OcppEndpoint(_Metadata):
    """How an EV charger dials in to the device-agent's OCPP central system: ``metadata.ocpp``."""

    id: str = Field(min_length=1, max_length=48, description="Charge point identity, the last segment of its URL.")
    version: Literal["1.6", "2.0.1", "2.1"] | None = Field(
        default=None,
        description="OCPP-J version (subprotocol ocpp<version>). Absent: 2.1 for V2G, 1.6 for the others.",
    )
    password_sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="SHA-256 (64 lowercase hex digits) of the charger's Basic-auth password (security profile 1). "
        "Absent: the charger is refused.",
    )


class ElectricVehicleDefaults(_Metadata):
    """What the optimizer plans an EV charger's car with until the charger reports it: ``metadata.ev``.

    Times are wall-clock times at the site (``HH:MM``, the site's time zone). Without ``arrival`` the car is
    taken as plugged in from the start of each plan until ``departure``.
    """

    capacity_kwh: _Positive = Field(description="The car's usable battery, kWh.")
    departure: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Local time the car leaves.")
    target_soc_pct: _Percentage = Field(description="SoC the car should have at departure, percent (soft).")
    arrival: str | None = Field(
        default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="Local time the car arrives."
    )
    initial_soc_pct: _Percentage | None = Field(
        default=None,
        description="The car's SoC to plan from when the charger has reported none. Absent: the car is not "
        "planned without a reading.",
    )


class DeviceMetadata(_Metadata):
    """``flux.mg_device_registry.metadata``; every field may be absent (or null), none may be wrong."""

    modbus: ModbusAddress | None = Field(default=None, description="Absent: the device is not driven over Modbus.")
    ocpp: OcppEndpoint | None = Field(default=None, description="Absent: the device is not an OCPP charger.")
    max_power_kw: _Positive | None = Field(default=None, description="Power limit, kW; > 0. Absent: no limit.")
    capacity_kwh: _Positive | None = Field(default=None, description="Usable energy, kWh; > 0.")
    backup_reserve_percentage: _Percentage | None = Field(
        default=None, description="The device's own reserve, put back when a command that changed it ends."
    )
    state_of_health_percentage: Annotated[float, Field(gt=0, le=100)] | None = Field(
        default=None, description="Battery state of health, percent of capacity_kwh."
    )
    site_meter: str | None = Field(default=None, min_length=1, description="Name of the site meter in the registry.")
    ac_power_sign: int = Field(default=1, description="-1 when the AC model reports charging as negative power.")
    phases: int | None = Field(default=None, description="An EV charger's phases, 1 or 3. Absent: 3.")
    min_current_a: _Positive | None = Field(
        default=None, description="An EV charger's minimum current per phase, A (below it, it pauses). Absent: 6."
    )
    ev: ElectricVehicleDefaults | None = Field(
        default=None, description="An EV charger's car, for planning. Absent: the charger is not planned."
    )

    @field_validator("phases")
    @classmethod
    def _phases(cls, value: int | None) -> int | None:
        if value is not None and value not in (1, 3):
            raise ValueError("must be 1 or 3")
        return value

    @field_validator("ac_power_sign")
    @classmethod
    def _sign(cls, value: int) -> int:
        if value not in (1, -1):
            raise ValueError("must be 1 or -1")
        return value

    @property
    def max_power_w(self) -> float | None:
        return None if self.max_power_kw is None else self.max_power_kw * 1000

    @property
    def capacity_wh(self) -> float | None:
        return None if self.capacity_kwh is None else self.capacity_kwh * 1000

    @classmethod
    def from_registry(cls, metadata: object) -> DeviceMetadata:
        """Parse a registry row's ``metadata`` (None: no metadata); raise InvalidDeviceMetadata naming the field."""
        if metadata is None:
            return cls()
        if not isinstance(metadata, dict):
            raise InvalidDeviceMetadata("metadata", f"must be a JSON object, not {type(metadata).__name__}")
        try:
            return cls.model_validate(metadata)
        except ValidationError as error:
            first = error.errors()[0]
            raise InvalidDeviceMetadata(_field_name(first["loc"]), first["msg"]) from error


def _field_name(location: tuple[int | str, ...]) -> str:
    return ".".join(["metadata", *(str(part) for part in location)])


class InvalidDeviceMetadata(ValueError):
    """A registry row's metadata that the contract refuses; ``field`` is its dotted path, e.g. metadata.modbus.port."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    @property
    def reason(self) -> str:
        """What a person needs to fix it, for logs, outcomes and upstream acknowledgements."""
        return f"invalid registry metadata: {self}"
