"""A command's backup reserve holds while the command is in force and is undone when it ends."""

from __future__ import annotations

from .conftest import Stack, command, eventually

STORAGE = 124


async def test_a_command_backup_reserve_is_restored_when_the_command_ends(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-battery-reserve")
    assert battery.value(STORAGE, "MinRsvPct") == 10  # the device's own reserve
    for name in ("gateway", "scheduler", "agent"):
        await stack.start(name)
    sent = stack.upstream.add_command(command("e2e-battery-reserve", lasts_s=6, backup_reserve_percentage=50))
    (ack,) = await stack.wait_acks(sent["id"], 1)
    assert ack["device_status"] == "OK"
    await eventually(
        lambda: battery.value(STORAGE, "MinRsvPct") == 50 and int(battery.raw(STORAGE, "StorCtl_Mod")) == 2,
        what="the command's reserve of 50 % in force while it discharges",
    )
    await eventually(lambda: int(battery.raw(STORAGE, "StorCtl_Mod")) == 0, what="control released at the end")
    await eventually(lambda: battery.value(STORAGE, "MinRsvPct") == 10, timeout_s=5, what="the reserve back at 10 %")
