"""Device plans: the optimizer's setpoint timelines for one device, carried out by the scheduler.

A plan is a source of control below upstream commands and direct control (docs/design.md §8): the scheduler
stores each step as a control that expires at the step's end, so a plan whose optimizer has stopped leaves no
setpoint in force past its last step. A newer plan for a device (a later ``issued_at``) replaces the steps of
the older one that have not ended; an older plan arriving late changes nothing.
"""

from __future__ import annotations

import enum
from typing import Annotated
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = ["MAX_PLAN_STEPS", "DevicePlan", "PlanKind", "PlanStep"]

# A week at 5-minute steps: the longest horizon any planning endpoint offers, with room to spare.
MAX_PLAN_STEPS = 2016


class PlanKind(enum.StrEnum):
    MPC = "mpc"
    DAY_AHEAD = "day_ahead"
    TARIFF = "tariff"


class PlanStep(BaseModel):
    """One step: the device's AC power from ``starts_at`` to ``ends_at``. Positive takes power from the site
    (a battery charging), negative gives power to it (a battery discharging), zero holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    starts_at: AwareDatetime
    ends_at: AwareDatetime
    power_w: Annotated[int, Field(ge=-1_000_000, le=1_000_000)]

    @model_validator(mode="after")
    def _ends_after_start(self) -> PlanStep:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class DevicePlan(BaseModel):
    """One version of one device's plan, published on ``gridloop.devices`` as ``device.plan.<device>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan_id: UUID
    run_id: UUID
    kind: PlanKind
    device_name: str = Field(min_length=1, max_length=200)
    issued_at: AwareDatetime
    steps: list[PlanStep] = Field(max_length=MAX_PLAN_STEPS)

    @model_validator(mode="after")
    def _steps_in_order(self) -> DevicePlan:
        for earlier, later in zip(self.steps, self.steps[1:], strict=False):
            if later.starts_at < earlier.ends_at:
                raise ValueError(f"steps must be in time order without overlap: a step starts at {later.starts_at}")
        return self
