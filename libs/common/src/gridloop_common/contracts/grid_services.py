"""Grid Services API request bodies (docs/design.md §8), with that API's field names, units and limits.

Also the RPC contract behind the gateway's operator endpoints: each endpoint's request model is sent
as JSON on its routing key (``routing.OperatorRpc``, ``OPERATOR_REQUESTS``), and the serving service
answers with an ``OperatorReply``.
"""

import enum
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Annotated, Any, Final

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gridloop_common.contracts.routing import OperatorRpc

__all__ = [
    "MPC_DEFAULT_HORIZON",
    "OPERATOR_REQUESTS",
    "DayAheadCoordinationRequest",
    "DirectControlDevice",
    "FlatTariffRequest",
    "FlexibilityRequest",
    "MpcRequest",
    "MpcStopRequest",
    "OperatorReply",
    "OptimizationStatusRequest",
    "PaidControlRequest",
    "PowerLimitRequest",
    "SetpointRequest",
    "ShiftConsumptionTariffRequest",
    "SiteScope",
    "TimeOfUseTariffRequest",
    "next_step_boundary",
]

# Day-ahead prices are one value per 10-minute step over 24 hours.
_DAY_AHEAD_STEPS: Final = 144

_STRICT_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

# Without ``stop``, an MPC runs this long from its start (docs/design.md §8).
MPC_DEFAULT_HORIZON: Final = timedelta(hours=2)

_SITE_NAME_SCHEMA: Final = {"type": "string", "minLength": 1, "maxLength": 255}


def _site_list(value: Any) -> Any:
    # One name is the list of that name: the service behind the endpoint always gets a list (or null).
    if isinstance(value, str):
        return [value]
    if value is not None and not isinstance(value, list | tuple):
        raise ValueError("must be a site name, a list of site names, or null")
    return value


# The sites a request applies to (docs/design.md §8, "Scope"): a name or a list of names; null (or left
# out) means every site. Parsed to a list, so the JSON sent on is always a list or null.
SiteScope = Annotated[
    Annotated[list[Annotated[str, Field(min_length=1, max_length=255)]], Field(min_length=1)] | None,
    BeforeValidator(_site_list),
    WithJsonSchema(
        {
            "anyOf": [
                _SITE_NAME_SCHEMA,
                {"type": "array", "items": _SITE_NAME_SCHEMA, "minItems": 1},
                {"type": "null"},
            ],
            "description": "A site's name or a list of names; null or left out: every site.",
        }
    ),
]


class DirectControlDevice(enum.StrEnum):
    """Device types a setpoint can be sent to, with the setpoint each one takes."""

    SPACE_HEATING = "space_heating"
    ELECTRIC_STORAGE = "electric_storage"
    ON_OFF_EV_CHARGER = "on_off_ev_charger"
    ELECTRIC_VEHICLE_V1G = "electric_vehicle_v1g"
    ELECTRIC_VEHICLE_V2G = "electric_vehicle_v2g"
    WATER_HEATER = "water_heater"


# Inclusive setpoint range and unit per device type, as the Grid Services API validates them.
_SETPOINT_RANGES: Final[dict[DirectControlDevice, tuple[int, int, str]]] = {
    DirectControlDevice.SPACE_HEATING: (10, 30, "°C"),
    DirectControlDevice.ELECTRIC_STORAGE: (-100, 100, "percent"),
    DirectControlDevice.ON_OFF_EV_CHARGER: (0, 1, "(off/on)"),
    DirectControlDevice.ELECTRIC_VEHICLE_V1G: (-100, 100, "percent"),
    DirectControlDevice.ELECTRIC_VEHICLE_V2G: (-100, 100, "percent"),
    DirectControlDevice.WATER_HEATER: (30, 70, "°C"),
}


def _check_window(start_field: str, stop: AwareDatetime, info: ValidationInfo) -> AwareDatetime:
    start = info.data.get(start_field)
    if start is not None and stop <= start:
        raise ValueError(f"{info.field_name} must be after {start_field}")
    return stop


def next_step_boundary(now: datetime, interval_minutes: int) -> datetime:
    """The first instant after ``now`` on the grid of ``interval_minutes`` steps counted from 00:00 UTC.

    For the step lengths that divide a day (10 min: :00, :10, ...) that is the grid of every UTC day.
    """
    step_s = interval_minutes * 60
    elapsed = now.timestamp()
    return datetime.fromtimestamp((elapsed // step_s + 1) * step_s, tz=UTC)


class DayAheadCoordinationRequest(BaseModel):
    """``POST /coordinatedac``: start day-ahead coordination (RPC ``optimizer.coordinatedac``).

    The Grid Services API takes no body and sends a flat 0.07 placeholder; here the caller may send
    the 144 ten-minute prices of the day and its start. ``{}`` keeps that API's behaviour.
    """

    model_config = _STRICT_CONFIG

    site: SiteScope = None
    iteration: int = Field(default=0, ge=0, description="Coordination round, starting at 0.")
    prices: list[float] | None = Field(
        default=None,
        min_length=_DAY_AHEAD_STEPS,
        max_length=_DAY_AHEAD_STEPS,
        description="One price (currency/kWh) per 10-minute step over 24 hours; None: the tariff in force.",
    )
    date: AwareDatetime | None = Field(default=None, description="Start of the day; None: now.")


class OptimizationStatusRequest(BaseModel):
    """``POST /request_optimization_status``: the last optimization runs, or the one named.

    RPC ``optimizer.optimization_status``. The body may be empty (the Grid Services API sends none).
    """

    model_config = _STRICT_CONFIG

    site: SiteScope = None
    run_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="One run's id; None: the last runs."
    )


class SetpointRequest(BaseModel):
    """``POST /write_device_type_setpoint``: one setpoint for all subscribed devices of a type.

    Also the body of ``POST /request_paid_device_control``.
    The setpoint's range depends on the device: space_heating 10-30 °C, electric_storage and both
    electric vehicles -100..100 %, on_off_ev_charger 0 or 1, water_heater 30-70 °C.
    """

    model_config = _STRICT_CONFIG

    device: DirectControlDevice = Field(
        default=DirectControlDevice.SPACE_HEATING, description="The device type to send the setpoint to."
    )
    # Validated even when defaulted: 20 suits space heating but not, say, a water heater.
    setpoint: int = Field(default=20, validate_default=True, description="The setpoint, in the device type's unit.")
    duration: int = Field(default=5, ge=5, le=240, description="Minutes for which the setpoint is applied.")

    @field_validator("setpoint")
    @classmethod
    def _setpoint_in_device_range(cls, setpoint: int, info: ValidationInfo) -> int:
        device = info.data.get("device")
        if device is None:
            return setpoint
        low, high, unit = _SETPOINT_RANGES[device]
        if not low <= setpoint <= high:
            raise ValueError(f"setpoint for {device} must be between {low} and {high} {unit}")
        return setpoint


class PowerLimitRequest(BaseModel):
    """``POST /power_limit``: a power limit for each building (RPC ``power_limit_control``)."""

    model_config = _STRICT_CONFIG

    limit: float = Field(gt=0, le=30, description="Power limit for each building, in kW.")


class FlexibilityRequest(BaseModel):
    """``GET /getflexibility``: estimate the flexibility of subscribed devices.

    RPC ``dlc_estimate_flexibility``; sent as the query string.
    """

    model_config = _STRICT_CONFIG

    duration: int = Field(ge=60, le=600, description="Seconds over which to compute the consumption.")


class MpcRequest(BaseModel):
    """``POST /calculate_mpc``: plan the enabled devices over start..stop (RPC ``optimizer.calculate_mpc``).

    ``prices`` and ``power_limit`` are keyed by the start of each step. Without ``start`` the MPC starts at
    the next step boundary, without ``stop`` it runs two hours; ``resolved`` fills them in per request, so
    the request sent on always has both. The Grid Services API reads an empty body as "stop real-time
    control"; that is ``MpcStopRequest``.
    """

    model_config = _STRICT_CONFIG

    site: SiteScope = None
    space_heating: bool = Field(default=True, description="Include space-heating devices.")
    electric_storage: bool = Field(default=True, description="Include batteries.")
    electric_vehicle: bool = Field(default=True, description="Include electric vehicles.")
    water_heater: bool = Field(default=True, description="Include water heaters.")
    prices: dict[AwareDatetime, float] = Field(min_length=1, description="Price (currency/kWh) from each instant.")
    power_limit: dict[AwareDatetime, Annotated[float, Field(gt=0)]] = Field(
        min_length=1, description="Site power limit (kW) from each instant."
    )
    # The Grid Services API allows 0 to 100; 0 would make the horizon infinite, and docs/design.md §8
    # re-plans at least hourly.
    interval: int = Field(default=10, ge=1, le=60, description="Step length in minutes, and how often it re-plans.")
    start: AwareDatetime | None = Field(default=None, description="Start of the first step; None: the next boundary.")
    stop: AwareDatetime | None = Field(default=None, description="When the MPC stops; None: two hours after start.")

    @field_validator("stop")
    @classmethod
    def _stop_after_start(cls, stop: AwareDatetime | None, info: ValidationInfo) -> AwareDatetime | None:
        return None if stop is None else _check_window("start", stop, info)

    def resolved(self, now: datetime) -> "MpcRequest":
        """This request with ``start`` and ``stop`` filled in as of ``now`` (ValidationError if stop <= start)."""
        if self.start is not None and self.stop is not None:
            return self
        start = self.start or next_step_boundary(now, self.interval)
        try:
            stop = self.stop or start + MPC_DEFAULT_HORIZON
        except OverflowError:
            # A start in the last two hours of year 9999: its default stop is not a date.
            error = PydanticCustomError("stop_out_of_range", "two hours after start is past the last date")
            raise ValidationError.from_exception_data(
                type(self).__name__, [InitErrorDetails(type=error, loc=("stop",), input=None)]
            ) from None
        return MpcRequest.model_validate({**self.model_dump(), "start": start, "stop": stop})


class MpcStopRequest(BaseModel):
    """``POST /calculate_mpc`` without a body: stop the MPC for the scope (RPC ``optimizer.stop_mpc``)."""

    model_config = _STRICT_CONFIG

    site: SiteScope = None


class PaidControlRequest(BaseModel):
    """``POST /paidcontrolrequest``: a paid setpoint for a duration (RPC ``paid_setpoint_control``).

    Values must be integers, not merely integral numbers. The Grid Services API does not forward ``device``.
    """

    model_config = _STRICT_CONFIG

    device: DirectControlDevice = Field(default=DirectControlDevice.SPACE_HEATING)
    setpoint: int = Field(default=20, ge=0, le=30, strict=True)
    duration: int = Field(default=5, ge=0, le=100, strict=True, description="Minutes.")


class FlatTariffRequest(BaseModel):
    """``POST /flattariff``: optimise a day at one flat price (RPC ``optimizer.flattariff``)."""

    model_config = _STRICT_CONFIG

    site: SiteScope = None
    flat_price: float = Field(default=0.08, ge=0, description="Price in currency/kWh.")
    date: AwareDatetime = Field(description="The day the tariff applies to.")


class TimeOfUseTariffRequest(BaseModel):
    """``POST /toutariff``: optimise a day with an on-peak window (RPC ``optimizer.toutariff``).

    Only the time of day of ``start_peak`` and ``stop_peak`` is used, at 10-minute resolution.
    """

    model_config = _STRICT_CONFIG

    site: SiteScope = None
    date: AwareDatetime = Field(description="The day the tariff applies to.")
    start_peak: AwareDatetime
    stop_peak: AwareDatetime
    off_peak_value: float = Field(default=0.05, description="Off-peak price in currency/kWh.")
    on_peak_value: float = Field(default=0.25, description="On-peak price in currency/kWh.")

    @field_validator("stop_peak")
    @classmethod
    def _stop_after_start(cls, stop_peak: AwareDatetime, info: ValidationInfo) -> AwareDatetime:
        return _check_window("start_peak", stop_peak, info)


class ShiftConsumptionTariffRequest(BaseModel):
    """``POST /shift-consumption-tariff``: a flat price scaled in two windows.

    RPC ``optimizer.shift_consumption_tariff``.
    The price is ``flat_price * increase_multiplier`` from ``start_increase`` to ``stop_increase``
    and ``flat_price * reduction_multiplier`` from ``start_reduction`` to ``stop_reduction``.
    """

    model_config = _STRICT_CONFIG

    site: SiteScope = None
    date: AwareDatetime = Field(description="The day the tariff applies to.")
    flat_price: float = Field(default=0.08, ge=0, description="Price in currency/kWh.")
    reduction_multiplier: float = Field(default=0.5, ge=0)
    increase_multiplier: float = Field(default=2.0, ge=0)
    start_increase: AwareDatetime
    stop_increase: AwareDatetime
    start_reduction: AwareDatetime
    stop_reduction: AwareDatetime

    @field_validator("stop_increase")
    @classmethod
    def _increase_window(cls, stop_increase: AwareDatetime, info: ValidationInfo) -> AwareDatetime:
        return _check_window("start_increase", stop_increase, info)

    @field_validator("stop_reduction")
    @classmethod
    def _reduction_window(cls, stop_reduction: AwareDatetime, info: ValidationInfo) -> AwareDatetime:
        return _check_window("start_reduction", stop_reduction, info)


class OperatorReply(BaseModel):
    """The reply to an operator RPC: the HTTP status and JSON body the gateway answers the operator with.

    ``status`` is 2xx for a result and 4xx for a request the service refuses on its merits (409 nothing to
    plan with, 422 a field only the service can check, 404 an unknown run); a refusal's body follows the
    gateway's error style, ``{"error": code, "message": text, "errors": [{"field", "message"}]}``
    (``refused``). A service that fails raises instead (an RPC error reply), which the gateway answers 502.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    status: int = Field(default=200, ge=200, le=499, description="HTTP status the gateway answers with.")
    body: dict[str, JsonValue] = Field(description="JSON object the gateway answers with.")

    @classmethod
    def refused(
        cls, status: int, error: str, message: str, *, errors: list[dict[str, str]] | None = None
    ) -> "OperatorReply":
        """A 4xx reply in the gateway's error style."""
        body: dict[str, JsonValue] = {"error": error, "message": message}
        if errors is not None:
            body["errors"] = [dict(each) for each in errors]
        return cls(status=status, body=body)


# The request model of each operator routing key: what the gateway sends and the serving service parses.
OPERATOR_REQUESTS: Final[Mapping[str, type[BaseModel]]] = MappingProxyType(
    {
        OperatorRpc.CALCULATE_MPC: MpcRequest,
        OperatorRpc.STOP_MPC: MpcStopRequest,
        OperatorRpc.COORDINATE_DAY_AHEAD: DayAheadCoordinationRequest,
        OperatorRpc.OPTIMIZATION_STATUS: OptimizationStatusRequest,
        OperatorRpc.FLAT_TARIFF: FlatTariffRequest,
        OperatorRpc.TIME_OF_USE_TARIFF: TimeOfUseTariffRequest,
        OperatorRpc.SHIFT_CONSUMPTION_TARIFF: ShiftConsumptionTariffRequest,
    }
)
