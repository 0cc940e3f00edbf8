"""External forecasts of a site's non-controllable load and PV power, as the optimizer receives them.

RPC ``optimizer.forecasts.put`` (``routing.RoutingKeys.OPTIMIZER_FORECASTS_PUT``) carries one
``ExternalForecastRequest``: ``values[i]`` is the average power in kW over the step starting at
``start + i * step`` minutes. Units and signs as everywhere (docs/design.md §5): kW; load is what the site
consumes (positive), PV what it generates (positive, never negative).
"""

import enum
from typing import Annotated, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["MAX_FORECAST_STEPS", "ExternalForecastRequest", "ForecastQuantity"]

# Two weeks at the shortest step: longer than any planning horizon, short enough to bound a message.
MAX_FORECAST_STEPS: Final = 14 * 24 * 12
# No building connection is larger than this; a bigger figure is a unit mistake (W sent as kW).
_MAX_ABS_KW: Final = 1_000_000.0


class ForecastQuantity(enum.StrEnum):
    """What a forecast predicts at a site."""

    LOAD = "load"  # non-controllable consumption, kW
    PV = "pv"  # photovoltaic generation, kW, never negative


_Kilowatts = Annotated[float, Field(ge=-_MAX_ABS_KW, le=_MAX_ABS_KW)]


class ExternalForecastRequest(BaseModel):
    """``optimizer.forecasts.put``: a forecast from outside (a weather service, the site's EMS) that wins over
    the one the optimizer derives from telemetry wherever it covers a step and has not expired."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    site: str = Field(min_length=1, max_length=200, description="Site code, as in flux.mg_device_registry.site.")
    quantity: ForecastQuantity = Field(description="load or pv.")
    start: AwareDatetime = Field(description="Start of the first step.")
    step: int = Field(ge=5, le=60, strict=True, description="Step length in minutes, 5 to 60.")
    values: list[_Kilowatts] = Field(
        min_length=1, max_length=MAX_FORECAST_STEPS, description="Average power of each step, kW."
    )
    expires_at: AwareDatetime | None = Field(
        default=None, description="Ignored from this instant on; None: at the end of its last step."
    )
    source: str | None = Field(default=None, max_length=200, description="Who made it, for the record.")

    @field_validator("values")
    @classmethod
    def _pv_not_negative(cls, values: list[float], info: ValidationInfo) -> list[float]:
        if info.data.get("quantity") == ForecastQuantity.PV:
            for index, value in enumerate(values):
                if value < 0:
                    raise ValueError(f"PV power must not be negative (values[{index}] = {value})")
        return values

    @field_validator("expires_at")
    @classmethod
    def _expires_after_start(cls, expires_at: AwareDatetime | None, info: ValidationInfo) -> AwareDatetime | None:
        start = info.data.get("start")
        if expires_at is not None and start is not None and expires_at <= start:
            raise ValueError("expires_at must be after start")
        return expires_at
