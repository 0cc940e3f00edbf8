"""Grid Services API request bodies (docs/design.md §8), with that API's field names, units and limits."""

import enum
from typing import Annotated, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "DayAheadCoordinationRequest",
    "DirectControlDevice",
    "FlatTariffRequest",
    "FlexibilityRequest",
    "MpcRequest",
    "OptimizationStatusRequest",
    "PaidControlRequest",
    "PowerLimitRequest",
    "SetpointRequest",
    "ShiftConsumptionTariffRequest",
    "TimeOfUseTariffRequest",
]

# Day-ahead prices are one value per 10-minute step over 24 hours.
_DAY_AHEAD_STEPS: Final = 144

_STRICT_CONFIG: Final = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


class DayAheadCoordinationRequest(BaseModel):
    """``POST /coordinatedac``: start day-ahead coordination (RPC ``mpc_day_ahead_coordination``).

    The Grid Services API takes no body and sends a flat 0.07 placeholder; here the caller may send
    the 144 ten-minute prices of the day and its start. ``{}`` keeps that API's behaviour.
    """

    model_config = _STRICT_CONFIG

    iteration: int = Field(default=0, ge=0, description="Coordination round, starting at 0.")
    prices: list[float] | None = Field(
        default=None,
        min_length=_DAY_AHEAD_STEPS,
        max_length=_DAY_AHEAD_STEPS,
        description="One price (currency/kWh) per 10-minute step over 24 hours; None: the gateway's default.",
    )
    date: AwareDatetime | None = Field(default=None, description="Start of the day; None: now.")


class OptimizationStatusRequest(BaseModel):
    """``POST /request_optimization_status``: ask the MPC for its optimization status.

    RPC ``mpc_retrieve_optimization_status``. The body is empty.
    """

    model_config = _STRICT_CONFIG


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
    """``POST /calculate_mpc``: plan the enabled device types over ``start``..``stop`` (RPC ``mpc``).

    ``prices`` and ``power_limit`` are keyed by the start of each step. The Grid Services API reads an
    empty body as "stop real-time control"; that case has no body and so no model.
    """

    model_config = _STRICT_CONFIG

    space_heating: bool = Field(default=True, description="Include space-heating devices.")
    electric_storage: bool = Field(default=True, description="Include batteries.")
    electric_vehicle: bool = Field(default=True, description="Include electric vehicles.")
    water_heater: bool = Field(default=True, description="Include water heaters.")
    prices: dict[AwareDatetime, float] = Field(min_length=1, description="Price (currency/kWh) from each instant.")
    power_limit: dict[AwareDatetime, Annotated[float, Field(gt=0)]] = Field(
        min_length=1, description="Site power limit (kW) from each instant."
    )
    # The Grid Services API allows 0, which would make the horizon infinite.
    interval: int = Field(default=10, ge=1, le=100, description="Step length in minutes.")
    start: AwareDatetime
    stop: AwareDatetime

    @field_validator("stop")
    @classmethod
    def _stop_after_start(cls, stop: AwareDatetime, info: ValidationInfo) -> AwareDatetime:
        return _check_window("start", stop, info)


class PaidControlRequest(BaseModel):
    """``POST /paidcontrolrequest``: a paid setpoint for a duration (RPC ``paid_setpoint_control``).

    Values must be integers, not merely integral numbers. The Grid Services API does not forward ``device``.
    """

    model_config = _STRICT_CONFIG

    device: DirectControlDevice = Field(default=DirectControlDevice.SPACE_HEATING)
    setpoint: int = Field(default=20, ge=0, le=30, strict=True)
    duration: int = Field(default=5, ge=0, le=100, strict=True, description="Minutes.")


class FlatTariffRequest(BaseModel):
    """``POST /flattariff``: optimise a day at one flat price (RPC ``mpc_dynamic_tariff_optimizer``)."""

    model_config = _STRICT_CONFIG

    flat_price: float = Field(default=0.08, ge=0, description="Price in currency/kWh.")
    date: AwareDatetime = Field(description="The day the tariff applies to.")


class TimeOfUseTariffRequest(BaseModel):
    """``POST /toutariff``: optimise a day with an on-peak window (RPC ``mpc_dynamic_tariff_optimizer``).

    Only the time of day of ``start_peak`` and ``stop_peak`` is used, at 10-minute resolution.
    """

    model_config = _STRICT_CONFIG

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

    RPC ``mpc_dynamic_tariff_optimizer``.
    The price is ``flat_price * increase_multiplier`` from ``start_increase`` to ``stop_increase``
    and ``flat_price * reduction_multiplier`` from ``start_reduction`` to ``stop_reduction``.
    """

    model_config = _STRICT_CONFIG

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
