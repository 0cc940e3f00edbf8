"""Parsing and rejecting upstream commands, envelopes and acknowledgements (docs/design.md §3)."""

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from gridloop_common.contracts import (
    BatteryMode,
    Command,
    CommandAcknowledgement,
    CommandStatus,
    DeviceStatus,
    EventType,
    PowerMode,
    UpstreamEvent,
)

COMMAND_ID = "497f6eca-6276-4993-bfeb-53cbbbba6f08"


def command_payload(**overrides: Any) -> dict[str, Any]:
    """A command as the upstream sends it: a two-hour DISCHARGE at 5 kW."""
    payload: dict[str, Any] = {
        "id": COMMAND_ID,
        "event_id": "a7a26ff2-e851-45b6-9634-d595f45458b7",
        "device_id": "xyz-123",
        "starts_at": "2025-04-30 12:00:00.000Z",
        "ends_at": "2025-04-30 14:00:00.000Z",
        "duration_s": 7200,
        "is_preparatory_action": False,
        "battery_commands": {
            "mode": "DISCHARGE",
            "power_mode": "SETPOINT",
            "setpoint_w": 5000,
            "backup_reserve_percentage": 10,
            "enable_grid_import": False,
        },
        "status": "OK",
        "device_status": "PENDING",
        "device_status_reason": None,
        "created_at": "2025-04-29T14:15:22Z",
        "updated_at": "2025-04-29T14:15:22Z",
    }
    payload.update(overrides)
    return payload


def battery(**fields: Any) -> dict[str, Any]:
    return {"battery_commands": fields}


def envelope(event_type: str = "command.created", event_object: Any = None) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "event_object": command_payload() if event_object is None else event_object,
        "timestamp": "2025-01-15T12:00:00.000Z",
    }


def error_locations(error: ValidationError) -> list[tuple[int | str, ...]]:
    return [tuple(detail["loc"]) for detail in error.errors()]


# Parsing


def test_discharge_setpoint_command() -> None:
    command = Command.model_validate(command_payload())

    assert command.id == UUID(COMMAND_ID)
    assert command.starts_at == datetime(2025, 4, 30, 12, tzinfo=UTC)
    assert command.ends_at == datetime(2025, 4, 30, 14, tzinfo=UTC)
    assert command.duration_s == 7200
    assert command.battery_commands.mode is BatteryMode.DISCHARGE
    assert command.battery_commands.power_mode is PowerMode.SETPOINT
    assert command.battery_commands.setpoint_w == 5000
    assert command.battery_commands.backup_reserve_percentage == 10
    assert command.battery_commands.enable_grid_import is False
    assert command.battery_commands.enable_grid_export is None
    assert command.status is CommandStatus.OK
    assert command.device_status is DeviceStatus.PENDING


def test_follow_load_command_needs_no_setpoint() -> None:
    command = Command.model_validate(command_payload(**battery(mode="DISCHARGE", power_mode="FOLLOW_LOAD")))

    assert command.battery_commands.power_mode is PowerMode.FOLLOW_LOAD
    assert command.battery_commands.setpoint_w is None


def test_canceled_command() -> None:
    command = Command.model_validate(
        command_payload(status="CANCELED", device_status="PENDING", device_status_reason="Event canceled by utility")
    )

    assert command.status is CommandStatus.CANCELED
    assert command.device_status_reason == "Event canceled by utility"


def test_open_ended_command() -> None:
    command = Command.model_validate(
        command_payload(ends_at=None, duration_s=None, event_id=None, **battery(mode="SELF_CONSUMPTION"))
    )

    assert command.ends_at is None
    assert command.duration_s is None
    assert command.event_id is None
    assert command.battery_commands.power_mode is None


@pytest.mark.parametrize("mode", ["BACKUP", "STANDBY", "SAVINGS", "SELF_CONSUMPTION", "CHARGE"])
def test_modes_without_power_mode(mode: str) -> None:
    command = Command.model_validate(command_payload(**battery(mode=mode, backup_reserve_percentage=20)))

    assert command.battery_commands.mode == mode


def test_fields_the_upstream_adds_are_ignored() -> None:
    payload = command_payload(object_type="command", site_id="site-1")
    payload["battery_commands"]["setpoint_mode"] = "EVEN"

    command = Command.model_validate(payload)

    assert "object_type" not in command.model_dump()


def test_command_round_trips_through_json() -> None:
    command = Command.model_validate(command_payload())

    assert Command.model_validate_json(command.model_dump_json()) == command


def test_command_is_immutable() -> None:
    command = Command.model_validate(command_payload())

    with pytest.raises(ValidationError):
        command.status = CommandStatus.CANCELED  # type: ignore[misc]


# Rejections: each names the offending field.


@pytest.mark.parametrize(
    ("overrides", "location", "error_type"),
    [
        (battery(mode="TURBO"), ("battery_commands", "mode"), "enum"),
        (
            battery(mode="DISCHARGE", power_mode="MAXIMUM", setpoint_w=5000),
            ("battery_commands", "power_mode"),
            "enum",
        ),
        (
            battery(mode="DISCHARGE", power_mode="SETPOINT", setpoint_w=-5000),
            ("battery_commands", "setpoint_w"),
            "greater_than",
        ),
        (
            battery(mode="DISCHARGE", power_mode="SETPOINT", setpoint_w=0),
            ("battery_commands", "setpoint_w"),
            "greater_than",
        ),
        (
            battery(mode="DISCHARGE", backup_reserve_percentage=101),
            ("battery_commands", "backup_reserve_percentage"),
            "less_than_equal",
        ),
        (
            battery(mode="CHARGE", maximum_charge_percentage=-1),
            ("battery_commands", "maximum_charge_percentage"),
            "greater_than_equal",
        ),
        (battery(mode="DISCHARGE", power_mode="SETPOINT"), ("battery_commands", "setpoint_w"), "value_error"),
        (
            battery(mode="DISCHARGE", power_mode="SETPOINT", setpoint_w=None),
            ("battery_commands", "setpoint_w"),
            "value_error",
        ),
        (
            battery(mode="STANDBY", power_mode="FOLLOW_LOAD"),
            ("battery_commands", "power_mode"),
            "value_error",
        ),
        ({"starts_at": "2025-04-30T12:00:00"}, ("starts_at",), "timezone_aware"),
        ({"updated_at": "2025-04-30T12:00:00"}, ("updated_at",), "timezone_aware"),
        ({"ends_at": "2025-04-30T11:00:00Z"}, ("ends_at",), "value_error"),
        ({"ends_at": "2025-04-30T12:00:00Z"}, ("ends_at",), "value_error"),
        ({"status": "DONE"}, ("status",), "enum"),
        ({"device_status": "FAILED_OFFLINE"}, ("device_status",), "enum"),
        ({"id": "not-a-uuid"}, ("id",), "uuid_parsing"),
        ({"duration_s": -1}, ("duration_s",), "greater_than_equal"),
        ({"device_id": ""}, ("device_id",), "string_too_short"),
    ],
)
def test_invalid_command_names_the_field(overrides: dict[str, Any], location: tuple[str, ...], error_type: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Command.model_validate(command_payload(**overrides))

    assert error_locations(raised.value) == [location]
    assert raised.value.errors()[0]["type"] == error_type


@pytest.mark.parametrize("required_but_nullable", ["event_id", "ends_at", "duration_s"])
def test_nullable_fields_are_still_required(required_but_nullable: str) -> None:
    payload = command_payload()
    del payload[required_but_nullable]

    with pytest.raises(ValidationError) as raised:
        Command.model_validate(payload)

    assert error_locations(raised.value) == [(required_but_nullable,)]


def test_setpoint_error_message_explains_the_rule() -> None:
    with pytest.raises(ValidationError, match="setpoint_w is required when power_mode is SETPOINT"):
        Command.model_validate(command_payload(**battery(mode="CHARGE", power_mode="SETPOINT")))


# The envelope


def test_command_event_carries_a_parsed_command() -> None:
    event = UpstreamEvent.model_validate_json(json.dumps(envelope("command.created")))

    command = event.command()

    assert isinstance(event.event_object, Command)
    assert command is not None
    assert command.id == UUID(COMMAND_ID)
    assert event.timestamp == datetime(2025, 1, 15, 12, tzinfo=UTC)


@pytest.mark.parametrize("event_type", [member.value for member in EventType])
def test_every_command_event_type(event_type: str) -> None:
    event = UpstreamEvent.model_validate(envelope(event_type))

    assert event.command() is not None


@pytest.mark.parametrize(
    "event_type", ["event.created", "event.updated", "event.canceled", "enrollment.created", "settings.apply"]
)
def test_other_event_types_are_accepted_without_a_command(event_type: str) -> None:
    event_object = {"object_type": "event", "id": "c0ffee00-0000-4000-8000-000000000000", "name": "Peak"}

    event = UpstreamEvent.model_validate(envelope(event_type, event_object))

    assert event.command() is None
    assert event.event_object == event_object


@pytest.mark.parametrize(
    "event_type",
    ["command.deleted", "device.created", "settings.revert", "event.", "enrollment.", "", "COMMAND.CREATED"],
)
def test_unknown_event_type_is_rejected(event_type: str) -> None:
    with pytest.raises(ValidationError) as raised:
        UpstreamEvent.model_validate(envelope(event_type))

    assert error_locations(raised.value) == [("event_type",)]


def test_command_event_with_an_invalid_command_raises_on_access() -> None:
    broken = command_payload(**battery(mode="DISCHARGE", power_mode="SETPOINT", setpoint_w=-1))
    event = UpstreamEvent.model_validate(envelope("command.updated", broken))

    with pytest.raises(ValidationError) as raised:
        event.command()

    assert error_locations(raised.value) == [("battery_commands", "setpoint_w")]


def test_envelope_timestamp_must_be_aware() -> None:
    payload = envelope()
    payload["timestamp"] = "2025-01-15T12:00:00"

    with pytest.raises(ValidationError) as raised:
        UpstreamEvent.model_validate(payload)

    assert error_locations(raised.value) == [("timestamp",)]


def test_envelope_built_from_a_command_round_trips() -> None:
    command = Command.model_validate(command_payload())
    event = UpstreamEvent(
        event_type=EventType.COMMAND_UPDATED,
        event_object=command,
        timestamp=datetime(2025, 1, 15, 12, tzinfo=UTC),
    )

    again = UpstreamEvent.model_validate_json(event.model_dump_json())

    assert again.command() == command
    assert again.event_type == "command.updated"


# The acknowledgement


def test_acknowledgement_ok() -> None:
    acknowledgement = CommandAcknowledgement(device_status=DeviceStatus.OK, device_status_reason="Command scheduled")

    assert acknowledgement.model_dump(mode="json") == {
        "device_status": "OK",
        "device_status_reason": "Command scheduled",
    }


def test_acknowledgement_failed_needs_a_reason() -> None:
    with pytest.raises(ValidationError) as raised:
        CommandAcknowledgement.model_validate({"device_status": "FAILED", "device_status_reason": " "})

    assert error_locations(raised.value) == [("device_status_reason",)]


def test_acknowledgement_is_never_pending() -> None:
    with pytest.raises(ValidationError) as raised:
        CommandAcknowledgement.model_validate({"device_status": "PENDING"})

    assert error_locations(raised.value) == [("device_status",)]


def test_acknowledgement_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError) as raised:
        CommandAcknowledgement.model_validate({"device_status": "OK", "status": "OK"})

    assert error_locations(raised.value) == [("status",)]
