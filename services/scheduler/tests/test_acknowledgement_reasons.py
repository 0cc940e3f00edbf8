"""An accepted command's OK acknowledgement says where gridloop does other than the command asks: SAVINGS
runs as self-consumption, and the deprecated enable_grid_export and maximum_charge_percentage are ignored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gridloop_common.contracts import Command
from gridloop_common.testing import FakeClock
from scheduler.commands import CommandReceiver
from scheduler.repository import CommandRepository

pytestmark = pytest.mark.connected

NOW = datetime.now(tz=UTC).replace(microsecond=0)


async def _received(pool: asyncpg.Pool, battery: dict[str, Any]) -> tuple[list[tuple[str, str | None]], str]:
    device = f"battery-{uuid.uuid4().hex[:10]}"
    await pool.execute(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', 'TEST', $2::jsonb)",
        device,
        {"max_power_kw": 5, "capacity_kwh": 13.5},
    )
    command = Command.model_validate(
        {
            "id": str(uuid.uuid4()),
            "event_id": None,
            "device_id": device,
            "starts_at": NOW.isoformat(),
            "ends_at": (NOW + timedelta(hours=1)).isoformat(),
            "duration_s": 3600,
            "is_preparatory_action": False,
            "battery_commands": battery,
            "status": "OK",
            "device_status": "PENDING",
            "created_at": NOW.isoformat(),
            "updated_at": NOW.isoformat(),
        }
    )
    receiver = CommandReceiver(repository=CommandRepository(pool), clock=FakeClock(NOW))
    assert await receiver.receive(command, event_type="command.created", correlation_id=None) == "new"
    acks = await pool.fetch(
        "SELECT device_status, device_status_reason FROM scheduler.ack_outbox WHERE command_id = $1", command.id
    )
    history = await pool.fetchval(
        "SELECT detail FROM scheduler.command_history WHERE command_id = $1 AND kind = 'scheduled'", command.id
    )
    return [(row["device_status"], row["device_status_reason"]) for row in acks], str(history)


async def test_savings_is_acknowledged_ok_saying_it_follows_self_consumption(pool: asyncpg.Pool) -> None:
    acks, history = await _received(pool, {"mode": "SAVINGS"})
    assert acks == [
        ("OK", "SAVINGS follows the optimizer's plan for the device, and self-consumption while there is none")
    ]
    assert history.endswith(
        "SAVINGS follows the optimizer's plan for the device, and self-consumption while there is none"
    )


async def test_deprecated_settings_are_acknowledged_as_ignored(pool: asyncpg.Pool) -> None:
    acks, _ = await _received(
        pool,
        {"mode": "CHARGE", "power_mode": "SETPOINT", "setpoint_w": 2000, "maximum_charge_percentage": 90},
    )
    assert acks == [("OK", "maximum_charge_percentage ignored (deprecated upstream)")]


async def test_a_command_carried_out_as_asked_is_acknowledged_without_a_reason(pool: asyncpg.Pool) -> None:
    acks, _ = await _received(pool, {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 2000})
    assert acks == [("OK", None)]
