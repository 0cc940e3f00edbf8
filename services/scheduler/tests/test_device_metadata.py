"""Registry metadata is read through gridloop_common's DeviceMetadata: a device whose metadata the contract
refuses gets every command FAILED with the field named, never a guessed limit (``max_power_kw: 0`` used to
refuse every setpoint as "beyond 0 W", ``max_power_kw: true`` became a 1,000 W limit)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from gridloop_common.contracts import Command
from scheduler import planning
from scheduler.commands import CommandReceiver
from scheduler.repository import CommandRepository

NOW = datetime.now(tz=UTC).replace(microsecond=0)


def _command(device: str, *, setpoint_w: int = 800) -> Command:
    return Command.model_validate(
        {
            "id": str(uuid.uuid4()),
            "event_id": None,
            "device_id": device,
            "starts_at": NOW.isoformat(),
            "ends_at": (NOW + timedelta(hours=1)).isoformat(),
            "duration_s": 3600,
            "is_preparatory_action": False,
            "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": setpoint_w},
            "status": "OK",
            "device_status": "PENDING",
            "created_at": NOW.isoformat(),
            "updated_at": NOW.isoformat(),
        }
    )


def _device(metadata: Any) -> planning.DeviceFacts:
    return planning.DeviceFacts.from_registry(
        name="battery-1",
        device_type="bess",
        active=True,
        metadata=metadata,
        online=True,
        offline_reason=None,
        observed_at=NOW,
    )


@pytest.mark.parametrize("bad", [0, True, -5, "5"], ids=["zero", "true", "negative", "string"])
def test_a_bad_power_limit_refuses_the_command_naming_the_field(bad: Any) -> None:
    decision = planning.decide(_command("battery-1"), _device({"max_power_kw": bad}), now=NOW)

    assert not decision.accepted
    assert decision.reason is not None
    assert decision.reason.startswith("device 'battery-1' has invalid registry metadata: metadata.max_power_kw: ")


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ("not an object", "metadata"),
        ({"site_meter": ""}, "metadata.site_meter"),
        ({"max_power_kw": 5, "modbus": {"host": "h", "port": 0}}, "metadata.modbus.port"),
    ],
)
def test_any_field_the_contract_refuses_makes_the_device_unusable(metadata: Any, field: str) -> None:
    device = _device(metadata)

    assert device.metadata_problem is not None and device.metadata_problem.field == field
    decision = planning.decide(_command("battery-1"), device, now=NOW)
    assert not decision.accepted and decision.reason is not None and f"metadata: {field}: " in decision.reason


def test_valid_metadata_still_limits_the_setpoint_and_names_the_site_meter() -> None:
    device = _device({"max_power_kw": 0.5, "site_meter": "meter-1", "future_key": [1]})

    assert (device.max_power_w, device.has_site_meter, device.metadata_problem) == (500, True, None)
    assert planning.decide(_command("battery-1", setpoint_w=400), device, now=NOW).accepted
    assert not planning.decide(_command("battery-1", setpoint_w=800), device, now=NOW).accepted


class _FixedClock:
    def now(self) -> datetime:
        return NOW

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("receiving a command does not sleep")


def _refusals_counted(field: str) -> float:
    value = REGISTRY.get_sample_value("gridloop_scheduler_invalid_device_metadata_total", {"field": field})
    return value or 0.0


@pytest.mark.connected
@pytest.mark.parametrize("bad", [0, True], ids=["zero", "true"])
async def test_a_row_written_behind_the_contract_fails_its_commands_naming_the_field(
    pool: asyncpg.Pool, bad: Any, caplog: pytest.LogCaptureFixture
) -> None:
    device = f"battery-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as connection, connection.transaction():
        # A row the database's contract trigger (telemetry-ingest 0019) would refuse, as one written before it.
        await connection.execute("SET LOCAL session_replication_role = replica")
        await connection.execute(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', 'TEST', $2::jsonb)",
            device,
            {"max_power_kw": bad, "capacity_kwh": 13.5},
        )
    counted_before = _refusals_counted("metadata.max_power_kw")
    command = _command(device)
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=_FixedClock())

    assert await receiver.receive(command, event_type="command.created", correlation_id=None) == "failed"

    acks = await pool.fetch(
        "SELECT device_status, device_status_reason FROM scheduler.ack_outbox WHERE command_id = $1", command.id
    )
    assert [row["device_status"] for row in acks] == ["FAILED"]
    assert (
        f"device {device!r} has invalid registry metadata: metadata.max_power_kw: " in acks[0]["device_status_reason"]
    )
    assert await pool.fetchval("SELECT state FROM scheduler.commands WHERE command_id = $1", command.id) == "failed"
    assert _refusals_counted("metadata.max_power_kw") == counted_before + 1
    assert any(
        record.getMessage() == "device registry metadata refused"
        and record.__dict__.get("field") == "metadata.max_power_kw"
        for record in caplog.records
    )
