"""Internal messages between the scheduler and the device-agent: actions out, outcomes back."""

import uuid
from typing import Annotated
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gridloop_common.contracts.upstream import _BatteryInstruction

__all__ = ["DeviceAction", "DeviceAvailability", "DeviceOutcome", "DeviceResyncRequest"]


class DeviceAction(_BatteryInstruction):
    """What the scheduler asks one device to do, from now until ``valid_until``.

    Carries the battery settings of the upstream command it serves (or of the default mode, with
    ``command_id`` None when no command is active). The same rules as ``BatteryCommand`` apply:
    ``power_mode`` only with CHARGE/DISCHARGE, and SETPOINT requires a positive ``setpoint_w``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    command_id: UUID | None = Field(default=None, description="The upstream command served, None for the default mode.")
    device_name: str = Field(min_length=1, description="mg_device_registry.name of the target device.")
    issued_at: AwareDatetime
    action_id: UUID = Field(default_factory=uuid.uuid4, description="Unique per action; outcomes refer to it.")
    valid_until: AwareDatetime | None = Field(
        default=None, description="After this instant the agent reverts the device; None: until replaced."
    )

    @field_validator("valid_until")
    @classmethod
    def _valid_after_issue(cls, valid_until: AwareDatetime | None, info: ValidationInfo) -> AwareDatetime | None:
        issued_at = info.data.get("issued_at")
        if valid_until is not None and issued_at is not None and valid_until <= issued_at:
            raise ValueError("valid_until must be after issued_at")
        return valid_until


class DeviceOutcome(BaseModel):
    """What the device-agent reports back after carrying out (or failing to carry out) a DeviceAction.

    A failed outcome (``applied`` false) always has a ``reason`` a person can act on, because the
    scheduler forwards it upstream as the FAILED acknowledgement's ``device_status_reason``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    action_id: UUID
    command_id: UUID | None = None
    device_name: str = Field(min_length=1)
    applied: bool
    reason: str | None = Field(default=None, validate_default=True)
    applied_setpoint_w: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="The setpoint actually written after clamping to the device's limits, in watts.",
    )
    observed_at: AwareDatetime

    @field_validator("reason")
    @classmethod
    def _reason_for_failure(cls, reason: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("applied") is False and not (reason and reason.strip()):
            raise ValueError("reason is required when applied is false")
        return reason


class DeviceAvailability(BaseModel):
    """The device-agent's word on whether it can reach a device, sent on change and periodically."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_name: str = Field(min_length=1)
    online: bool
    reason: str | None = Field(default=None, description="Why the device is offline, for a person to act on.")
    observed_at: AwareDatetime


class DeviceResyncRequest(BaseModel):
    """The device-agent asks for a device's current action: it has just taken the device under control.

    Sent when the agent starts driving a device, or gets it back after it was unreachable. The agent holds
    no trustworthy action for it then (a new process holds none; one from before the outage may have been
    replaced), so the scheduler, which owns the lifecycle, answers by publishing the device's current
    action at once: the command in force, or the default mode.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_name: str = Field(min_length=1, description="mg_device_registry.name of the device taken under control.")
    request_id: UUID = Field(
        default_factory=uuid.uuid4, description="Unique per request; the answer's action id derives from it."
    )
    reason: str | None = Field(default=None, description="Why the agent asks (started, device reachable again).")
    requested_at: AwareDatetime
