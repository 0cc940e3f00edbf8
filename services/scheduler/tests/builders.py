"""Commands and devices as the scheduler's pure tests build them, at a fixed ``NOW``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from gridloop_common.contracts import Command
from scheduler import planning

__all__ = ["NOW", "command", "device"]

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def command(**changes: Any) -> Command:
    """A DISCHARGE 3000 W command for battery-1 from ten minutes after NOW to an hour after; ``changes`` override."""
    battery = {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000}
    battery.update(changes.pop("battery", {}))
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "event_id": None,
        "device_id": "battery-1",
        "starts_at": (NOW + timedelta(minutes=10)).isoformat(),
        "ends_at": (NOW + timedelta(hours=1)).isoformat(),
        "duration_s": 3000,
        "is_preparatory_action": False,
        "battery_commands": battery,
        "status": "OK",
        "device_status": "PENDING",
        "created_at": NOW.isoformat(),
        "updated_at": NOW.isoformat(),
    }
    base.update(changes)
    return Command.model_validate(base)


def device(**changes: Any) -> planning.DeviceFacts:
    """battery-1, active, online, 5 kW, with a site meter; ``changes`` override the registry values."""
    values: dict[str, Any] = {
        "name": "battery-1",
        "device_type": "bess",
        "active": True,
        "metadata": {"max_power_kw": 5, "site_meter": "meter-1"},
        "online": True,
        "offline_reason": None,
        "observed_at": NOW,
    }
    values.update(changes)
    return planning.DeviceFacts.from_registry(**values)
