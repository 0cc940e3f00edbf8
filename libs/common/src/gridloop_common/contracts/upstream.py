"""Upstream aggregator contracts (docs/design.md §2, §3): the Command, its webhook envelope and the acknowledgement."""

import enum
from typing import Annotated, Any, Final
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "UNKNOWN_EVENT_TYPE",
    "BatteryCommand",
    "BatteryMode",
    "Command",
    "CommandAcknowledgement",
    "CommandStatus",
    "DeviceStatus",
    "EventType",
    "PowerMode",
    "UpstreamEvent",
]


class BatteryMode(enum.StrEnum):
    """What the battery should do while a command is active."""

    BACKUP = "BACKUP"
    CHARGE = "CHARGE"
    DISCHARGE = "DISCHARGE"
    SAVINGS = "SAVINGS"
    SELF_CONSUMPTION = "SELF_CONSUMPTION"
    STANDBY = "STANDBY"


class PowerMode(enum.StrEnum):
    """How the power of a CHARGE or DISCHARGE command is chosen."""

    FOLLOW_LOAD = "FOLLOW_LOAD"
    SETPOINT = "SETPOINT"


class CommandStatus(enum.StrEnum):
    """The upstream's view of a command: ``OK`` means it is happening."""

    CANCELED = "CANCELED"
    OK = "OK"
    OPT_OUT = "OPT_OUT"


class DeviceStatus(enum.StrEnum):
    """The device side's view of a command: ``OK`` means the device is ready to perform it."""

    FAILED = "FAILED"
    OK = "OK"
    PENDING = "PENDING"


class EventType(enum.StrEnum):
    """Envelope event types that carry a Command as their ``event_object``."""

    COMMAND_CREATED = "command.created"
    COMMAND_UPDATED = "command.updated"
    COMMAND_STARTED = "command.started"
    COMMAND_ENDED = "command.ended"
    COMMAND_CANCELED = "command.canceled"


_COMMAND_EVENT_TYPES: Final = frozenset(EventType)
_OTHER_EVENT_TYPE_PREFIXES: Final = ("event.", "enrollment.")
_SETTINGS_APPLY: Final = "settings.apply"
# The event type is the AMQP routing key, a short string of at most 255 bytes (not characters).
_ROUTING_KEY_MAX_BYTES: Final = 255
# The pydantic error type of an event type that is well formed but not one this version knows: senders
# are told "ignored" rather than "invalid" for it, so they do not retry.
UNKNOWN_EVENT_TYPE: Final = "unknown_event_type"
_POWER_MODE_MODES: Final = frozenset({BatteryMode.CHARGE, BatteryMode.DISCHARGE})

_Percentage = Annotated[int, Field(ge=0, le=100)]
_IGNORED_SETTINGS: Final = ("enable_grid_export", "maximum_charge_percentage")


class _BatteryInstruction(BaseModel):
    """The battery settings shared by an upstream BatteryCommand and an internal DeviceAction."""

    model_config = ConfigDict(frozen=True)

    mode: BatteryMode
    power_mode: PowerMode | None = Field(default=None, description="Only with mode CHARGE or DISCHARGE.")
    setpoint_w: Annotated[int, Field(gt=0)] | None = Field(
        default=None,
        validate_default=True,
        description="Watts, always positive (direction from mode); required when power_mode is SETPOINT.",
    )
    enable_grid_import: bool | None = Field(default=None, description="Whether the battery may charge from the grid.")
    enable_grid_export: bool | None = Field(default=None, description="Whether the battery may export to the grid.")
    backup_reserve_percentage: _Percentage | None = Field(
        default=None, description="Minimum state of charge the battery keeps, in percent."
    )
    maximum_charge_percentage: _Percentage | None = Field(
        default=None, description="State of charge the battery stops charging at, in percent."
    )

    def caveats(self) -> list[str]:
        """Where gridloop carries these settings out differently from what they say, in words for a person.

        The scheduler's acknowledgement and the device-agent's outcome both give them as their reason, so
        neither a SAVINGS command nor a deprecated setting is silently treated otherwise than asked.
        """
        notes = []
        if self.mode == BatteryMode.SAVINGS:
            notes.append(
                "SAVINGS follows the optimizer's plan for the device, and self-consumption while there is none"
            )
        # Both are deprecated upstream; no device control path reads them.
        ignored = [name for name in _IGNORED_SETTINGS if getattr(self, name) is not None]
        if ignored:
            notes.append(f"{' and '.join(ignored)} ignored (deprecated upstream)")
        return notes

    @field_validator("power_mode")
    @classmethod
    def _power_mode_needs_charge_or_discharge(
        cls, power_mode: PowerMode | None, info: ValidationInfo
    ) -> PowerMode | None:
        mode = info.data.get("mode")
        if power_mode is not None and mode is not None and mode not in _POWER_MODE_MODES:
            raise ValueError(f"power_mode is only allowed with mode CHARGE or DISCHARGE, not {mode}")
        return power_mode

    @field_validator("setpoint_w")
    @classmethod
    def _setpoint_required_for_setpoint_mode(cls, setpoint_w: int | None, info: ValidationInfo) -> int | None:
        if setpoint_w is None and info.data.get("power_mode") is PowerMode.SETPOINT:
            raise ValueError("setpoint_w is required when power_mode is SETPOINT")
        return setpoint_w


class BatteryCommand(_BatteryInstruction):
    """The single battery action a Command holds (``battery_commands`` in the upstream schema).

    ``power_mode`` is only allowed with CHARGE and DISCHARGE, and SETPOINT requires a positive
    ``setpoint_w`` in watts. Unknown fields are ignored because the upstream may add some.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)


class Command(BaseModel):
    """A command from the upstream aggregator: one device, one event, one battery action.

    ``event_id``, ``ends_at`` and ``duration_s`` are required but may be null; a null ``ends_at``
    means the command runs until it is replaced. Unknown fields are ignored.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: UUID
    event_id: UUID | None
    device_id: str = Field(min_length=1, description="Matched against mg_device_registry.name.")
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = Field(description="Null: the command runs until it is replaced.")
    duration_s: Annotated[float, Field(ge=0)] | None
    is_preparatory_action: bool
    battery_commands: BatteryCommand
    status: CommandStatus
    device_status: DeviceStatus
    device_status_reason: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime

    @field_validator("ends_at")
    @classmethod
    def _ends_after_start(cls, ends_at: AwareDatetime | None, info: ValidationInfo) -> AwareDatetime | None:
        starts_at = info.data.get("starts_at")
        if ends_at is not None and starts_at is not None and ends_at <= starts_at:
            raise ValueError("ends_at must be after starts_at")
        return ends_at


class UpstreamEvent(BaseModel):
    """The envelope every upstream delivery mode (webhook, message queue, poller) carries.

    ``event_type`` is one of the ``command.*`` types of ``EventType``, an ``event.*`` or
    ``enrollment.*`` type, or ``settings.apply``. ``event_object`` is kept as received when it is
    not a valid Command, so that non-command events are routed unchanged; ``command()`` parses it.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_type: str = Field(
        max_length=255,
        description="command.created|updated|started|ended|canceled, event.*, enrollment.* or "
        "settings.apply; also the AMQP routing key.",
    )
    # Left to right so that a valid Command is parsed as one and anything else stays a plain object.
    event_object: Command | dict[str, Any] = Field(union_mode="left_to_right")
    timestamp: AwareDatetime

    @field_validator("event_type")
    @classmethod
    def _known_event_type(cls, event_type: str) -> str:
        size = len(event_type.encode("utf-8", "surrogatepass"))
        if size > _ROUTING_KEY_MAX_BYTES:
            raise ValueError(
                f"event_type is {size} bytes in UTF-8; it is the AMQP routing key, "
                f"at most {_ROUTING_KEY_MAX_BYTES} bytes"
            )
        if event_type in _COMMAND_EVENT_TYPES or event_type == _SETTINGS_APPLY:
            return event_type
        for prefix in _OTHER_EVENT_TYPE_PREFIXES:
            if event_type.startswith(prefix) and len(event_type) > len(prefix):
                return event_type
        # Without a context pydantic leaves the message as it is, braces in the event type included.
        raise PydanticCustomError(
            UNKNOWN_EVENT_TYPE,
            f"unknown event type {event_type!r}: expected command.created|updated|started|ended|canceled, "
            "event.*, enrollment.* or settings.apply",
        )

    def command(self) -> Command | None:
        """The Command this event carries.

        Returns:
            The parsed Command for a ``command.*`` event, None for any other event type.

        Raises:
            pydantic.ValidationError: A ``command.*`` event whose object is not a valid Command.
        """
        if self.event_type not in _COMMAND_EVENT_TYPES:
            return None
        if isinstance(self.event_object, Command):
            return self.event_object
        return Command.model_validate(self.event_object)


class CommandAcknowledgement(BaseModel):
    """The body of ``PATCH {upstream}/v1/commands/{id}`` that acknowledges a command.

    ``device_status`` is OK once the command is scheduled (or its cancellation carried out), or
    FAILED with a ``device_status_reason`` a person can act on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_status: DeviceStatus
    device_status_reason: str | None = Field(default=None, validate_default=True)

    @field_validator("device_status")
    @classmethod
    def _not_pending(cls, device_status: DeviceStatus) -> DeviceStatus:
        if device_status is DeviceStatus.PENDING:
            raise ValueError("an acknowledgement is OK or FAILED, never PENDING")
        return device_status

    @field_validator("device_status_reason")
    @classmethod
    def _reason_for_failure(cls, reason: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("device_status") is DeviceStatus.FAILED and not (reason and reason.strip()):
            raise ValueError("device_status_reason is required when device_status is FAILED")
        return reason
