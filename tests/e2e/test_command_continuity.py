"""Continuity of control across agent restarts, cancellations and hand-overs (issue 14: P1, P2, P7).

The battery simulator logs every write to its storage controls (model 124), so these tests read the
sequence of writes the device took, and when, against what the upstream was told.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from gridloop_simulators.battery import ControlWrite

from .conftest import REVERT_TIMEOUT_S, Stack, command, eventually

STORAGE = 124
DISCHARGE_BIT = 2
MAX_POWER_W = 5000  # add_battery's default: rates are percentages of it


def _discharge_setpoint(write: ControlWrite, watts: float) -> bool:
    """The write of a plan's rates asking for ``watts`` of discharge (the mode follows in a write of its own)."""
    points = write.points
    return points.get("OutWRte") == watts / MAX_POWER_W * 100 and points.get("InWRte") == 0


def _charge_setpoint(write: ControlWrite, watts: float) -> bool:
    points = write.points
    return points.get("InWRte") == watts / MAX_POWER_W * 100 and points.get("OutWRte") == 0


async def test_a_restarted_agent_re_applies_the_discharge_in_force_at_once(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-resync-battery")
    await stack.start("gateway")
    await stack.start("scheduler")
    await stack.start("agent")
    sent = stack.upstream.add_command(command("e2e-resync-battery", setpoint_w=2500))
    await eventually(lambda: battery.applied_power_w == -2500, what="discharging")
    await stack.stop("agent", kill=True)
    await eventually(
        lambda: battery.reverted_count >= 1 and battery.applied_power_w == 0,
        timeout_s=REVERT_TIMEOUT_S + 10,
        what="the battery releasing itself while no agent runs",
    )
    writes_before = len(battery.control_writes)

    await stack.start("agent")
    started = time.monotonic()

    # No timer of the command is due for half an hour: only the new agent's resync can bring the setpoint back.
    rewritten = await eventually(
        lambda: next((w for w in battery.control_writes[writes_before:] if _discharge_setpoint(w, 2500)), None),
        timeout_s=15,
        what="the discharge setpoint re-written by the new agent",
    )
    assert rewritten.at - started < 15
    await eventually(lambda: battery.applied_power_w == -2500, what="discharging again")
    assert await stack.state_of(sent["id"]) == "active"
    assert len(stack.acks_for(sent["id"])) == 1  # nothing new to say upstream


async def test_a_cancellation_is_acknowledged_after_the_releasing_write(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-release-battery")
    await stack.start("gateway")
    await stack.start("scheduler")
    await stack.start("agent")
    sent = stack.upstream.add_command(command("e2e-release-battery", setpoint_w=2000))
    await stack.wait_acks(sent["id"], 1)
    await eventually(lambda: battery.applied_power_w == -2000, what="discharging")
    # At each write that releases the battery, how many OKs the upstream had accepted by then.
    acks_at_release: list[int] = []
    battery.write_observers.append(
        lambda write: acks_at_release.append(len(stack.acks_for(sent["id"]))) if write.releases else None
    )

    stack.upstream.cancel(sent["id"])

    acks = await stack.wait_acks(sent["id"], 2)
    assert [ack["device_status"] for ack in acks] == ["OK", "OK"]
    assert acks_at_release, "the agent never wrote the release"
    assert acks_at_release[0] == 1, "the cancellation was acknowledged before the battery was released"
    assert int(battery.raw(STORAGE, "StorCtl_Mod")) == 0


async def test_with_the_agent_down_a_cancellation_is_acknowledged_once_the_revert_window_has_passed(
    stack: Stack,
) -> None:
    battery = await stack.add_battery("e2e-dead-release-battery")
    await stack.start("gateway")
    await stack.start("scheduler")
    await stack.start("agent")
    sent = stack.upstream.add_command(command("e2e-dead-release-battery", setpoint_w=2500))
    await stack.wait_acks(sent["id"], 1)
    await eventually(lambda: battery.applied_power_w == -2500, what="discharging")
    await stack.stop("agent", kill=True)

    stack.upstream.cancel(sent["id"])
    canceled = time.monotonic()

    async def second_ok() -> bool:
        if len(stack.acks_for(sent["id"])) < 2:
            return False
        # The moment the OK is seen, the battery must already have let go by itself.
        assert battery.reverted_count >= 1 and int(battery.raw(STORAGE, "StorCtl_Mod")) == 0, (
            f"OK upstream while the battery still runs the command at {battery.applied_power_w} W"
        )
        return True

    # No agent will ever confirm the release: the OK still comes, once the revert window has run out.
    await eventually(second_ok, timeout_s=REVERT_TIMEOUT_S + 20, what="the cancellation's OK")
    assert time.monotonic() - canceled >= REVERT_TIMEOUT_S - 1
    assert [ack["device_status"] for ack in stack.acks_for(sent["id"])] == ["OK", "OK"]


async def test_a_command_hands_over_to_the_next_in_one_write(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-handover-battery")
    await stack.start("gateway")
    await stack.start("scheduler")
    await stack.start("agent")
    first = stack.upstream.add_command(command("e2e-handover-battery", lasts_s=8, setpoint_w=2000))
    ends_at = datetime.fromisoformat(first["ends_at"])
    following = command("e2e-handover-battery", setpoint_w=1500, mode="CHARGE")
    # Due the instant the first ends.
    following.update(starts_at=first["ends_at"], ends_at=(ends_at + timedelta(minutes=30)).isoformat())
    second = stack.upstream.add_command(following)
    await stack.wait_acks(first["id"], 1)
    await stack.wait_acks(second["id"], 1)
    await eventually(lambda: battery.applied_power_w == -2000, what="the first command discharging")

    handed_over = await eventually(
        lambda: next((w for w in battery.control_writes if _charge_setpoint(w, 1500)), None),
        timeout_s=30,
        what="the second command's setpoint written",
    )

    writes = battery.control_writes
    start = next(index for index, write in enumerate(writes) if _discharge_setpoint(write, 2000))
    between = writes[start + 1 : writes.index(handed_over)]
    # The device was never told to let go at the first command's end: the last revert countdown armed before
    # the hand-over (the device releases itself when it runs out) reaches well past that end.
    last_armed = [write for write in writes[: writes.index(handed_over)] if "InOutWRte_RvrtTms" in write.points][-1]
    ends_at_monotonic = ends_at.timestamp() + (time.monotonic() - time.time())
    assert last_armed.at + last_armed.points["InOutWRte_RvrtTms"] >= ends_at_monotonic + 1
    # Between the two setpoints: the first's mode (discharge) and refreshes of its revert timer, no release.
    assert all(
        set(write.points) == {"InOutWRte_RvrtTms"}
        or write.points == {"StorCtl_Mod": DISCHARGE_BIT}
        or _discharge_setpoint(write, 2000)
        for write in between
    ), [write.points for write in between]
    assert battery.reverted_count == 0, "the battery released itself between the two commands"
    await eventually(lambda: battery.applied_power_w == 1500, what="the second command charging")
