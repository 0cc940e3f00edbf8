"""Upstream commands end to end: signed webhook → scheduler → device-agent → SunSpec battery → PATCH upstream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import httpx

from webhook_gateway.signatures import sign

from .conftest import REVERT_TIMEOUT_S, WEBHOOK_SECRET, Stack, command, eventually

STORAGE = 124
DISCHARGE_BIT = 2


async def _start(stack: Stack, *names: str) -> None:
    for name in names:
        await stack.start(name)


async def test_signed_webhook_drives_the_battery_and_is_acknowledged(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-battery-1")
    await _start(stack, "gateway", "scheduler", "agent")
    sent = stack.upstream.add_command(command("e2e-battery-1", setpoint_w=3000))

    (ack,) = await stack.wait_acks(sent["id"], 1)
    assert ack["device_status"] == "OK"
    await eventually(lambda: battery.applied_power_w == -3000, what="battery discharging at 3000 W")
    assert int(battery.raw(STORAGE, "StorCtl_Mod")) & DISCHARGE_BIT
    assert int(battery.raw(STORAGE, "InOutWRte_RvrtTms")) > 0  # guarded by a revert timer
    soc_before = battery.soc_pct
    battery.step(60)
    assert battery.soc_pct < soc_before
    assert await eventually(lambda: stack.state_of(sent["id"]), what="state") in ("active",)
    outcome = await eventually(
        lambda: stack.pool.fetchrow(
            "SELECT applied, applied_setpoint_w FROM scheduler.device_outcomes WHERE command_id = $1",
            uuid.UUID(sent["id"]),
        ),
        what="device outcome recorded",
    )
    assert outcome["applied"] is True and outcome["applied_setpoint_w"] == 3000


async def test_cancellation_returns_the_device_to_default_and_acks_again(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-battery-cancel")
    await _start(stack, "gateway", "scheduler", "agent")
    sent = stack.upstream.add_command(command("e2e-battery-cancel", setpoint_w=2000))
    await stack.wait_acks(sent["id"], 1)
    await eventually(lambda: battery.applied_power_w == -2000, what="discharging")

    stack.upstream.cancel(sent["id"])
    acks = await stack.wait_acks(sent["id"], 2)
    assert [ack["device_status"] for ack in acks] == ["OK", "OK"]
    await eventually(
        lambda: int(battery.raw(STORAGE, "StorCtl_Mod")) == 0 and battery.applied_power_w == 0,
        what="control released and the battery idle",
    )
    assert await stack.state_of(sent["id"]) == "canceled"


async def test_stale_version_is_ignored(stack: Stack) -> None:
    await stack.add_battery("e2e-battery-stale")
    await _start(stack, "gateway", "scheduler", "agent")
    first = stack.upstream.add_command(command("e2e-battery-stale", starts_in_s=600, setpoint_w=1000))
    await stack.wait_acks(first["id"], 1)
    replacement = {key: value for key, value in first.items() if key != "updated_at"}
    replacement["battery_commands"] = {**first["battery_commands"], "setpoint_w": 2000}
    stack.upstream.add_command(replacement)
    await stack.wait_acks(first["id"], 2)
    newer = stack.upstream.command(first["id"])
    # A redelivery of the first version, and an older version arriving late: neither changes anything.
    redelivered = stack.upstream.send_event("command.updated", first)
    first_time = datetime.fromisoformat(first["updated_at"])
    newer_time = datetime.fromisoformat(newer["updated_at"])
    late = {**first, "updated_at": (first_time + (newer_time - first_time) / 2).isoformat()}
    stale = stack.upstream.send_event("command.updated", late)
    await redelivered.wait()
    await stale.wait()
    row = await eventually(
        lambda: stack.pool.fetchrow(
            "SELECT stale_versions_ignored, command FROM scheduler.commands WHERE command_id = $1 "
            "AND stale_versions_ignored > 0",
            uuid.UUID(first["id"]),
        ),
        what="stale version counted",
    )
    assert json.loads(row["command"])["battery_commands"]["setpoint_w"] == 2000
    assert len(stack.acks_for(first["id"])) == 2  # no ack for the stale version


async def test_the_same_webhook_delivered_50_times_at_once_has_one_effect(stack: Stack) -> None:
    await stack.add_battery("e2e-battery-dupe")
    await _start(stack, "gateway", "scheduler", "agent")
    # The upstream knows the command (so it accepts the PATCH); the test delivers its webhook itself.
    body = stack.upstream.add_command(command("e2e-battery-dupe", starts_in_s=600), notify=False)
    now = datetime.now(tz=UTC)
    payload = json.dumps({"event_type": "command.created", "event_object": body, "timestamp": now.isoformat()}).encode()
    webhook_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret=WEBHOOK_SECRET, webhook_id=webhook_id, timestamp=timestamp, body=payload),
    }
    assert stack.upstream.webhook_url is not None
    async with httpx.AsyncClient(timeout=15) as client:
        responses = await asyncio.gather(
            *(client.post(stack.upstream.webhook_url, content=payload, headers=headers) for _ in range(50))
        )
    assert [response.status_code for response in responses] == [202] * 50
    await stack.wait_acks(body["id"], 1)
    await asyncio.sleep(1.0)  # give any duplicate the time to show up, then check there is none
    assert len(stack.acks_for(body["id"])) == 1
    versions = await stack.pool.fetchval(
        "SELECT count(*) FROM scheduler.command_versions WHERE command_id = $1", uuid.UUID(body["id"])
    )
    timers = await stack.pool.fetchval(
        "SELECT count(*) FROM scheduler.timers WHERE command_id = $1", uuid.UUID(body["id"])
    )
    assert (versions, timers) == (1, 2)


async def test_unknown_and_offline_devices_are_refused_with_a_reason(stack: Stack) -> None:
    closed_port = 1  # nothing listens there
    await stack.register("e2e-offline", port=closed_port)
    await _start(stack, "gateway", "scheduler", "agent")
    await eventually(
        lambda: stack.pool.fetchval(
            "SELECT NOT online FROM scheduler.device_availability WHERE device_id = 'e2e-offline'"
        ),
        what="agent reports the device offline",
    )
    unknown = stack.upstream.add_command(command("e2e-no-such-device"))
    offline = stack.upstream.add_command(command("e2e-offline"))
    (unknown_ack,) = await stack.wait_acks(unknown["id"], 1)
    (offline_ack,) = await stack.wait_acks(offline["id"], 1)
    assert unknown_ack["device_status"] == "FAILED"
    assert "unknown device 'e2e-no-such-device'" in unknown_ack["device_status_reason"]
    assert offline_ack["device_status"] == "FAILED"
    assert "offline" in offline_ack["device_status_reason"]


async def test_setpoint_beyond_the_device_limit_is_refused(stack: Stack) -> None:
    await stack.add_battery("e2e-battery-limit", max_power_kw=5)
    await _start(stack, "gateway", "scheduler", "agent")
    sent = stack.upstream.add_command(command("e2e-battery-limit", setpoint_w=9000))
    (ack,) = await stack.wait_acks(sent["id"], 1)
    assert ack["device_status"] == "FAILED"
    assert "9000 W is beyond the device's limit of 5000 W" in ack["device_status_reason"]


async def test_agent_killed_mid_command_the_battery_reverts_by_itself(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-battery-revert")
    await _start(stack, "gateway", "scheduler", "agent")
    sent = stack.upstream.add_command(command("e2e-battery-revert", setpoint_w=2500))
    await eventually(lambda: battery.applied_power_w == -2500, what="discharging")
    await stack.stop("agent", kill=True)
    started = time.monotonic()
    await eventually(
        lambda: battery.applied_power_w == 0 and battery.reverted_count >= 1,
        timeout_s=REVERT_TIMEOUT_S + 10,
        what="battery reverting on its own",
    )
    assert time.monotonic() - started <= REVERT_TIMEOUT_S + 2
    assert int(battery.raw(STORAGE, "StorCtl_Mod")) == 0
    assert sent["id"]


async def test_scheduler_restarted_with_timers_pending_misses_none_and_doubles_none(stack: Stack) -> None:
    batteries = [await stack.add_battery(f"e2e-battery-restart-{index}") for index in range(3)]
    await _start(stack, "gateway", "scheduler", "agent")
    sent = [
        stack.upstream.add_command(
            command(f"e2e-battery-restart-{index}", starts_in_s=4, setpoint_w=1000 + 500 * index)
        )
        for index in range(3)
    ]
    for item in sent:
        await stack.wait_acks(item["id"], 1)
    await stack.stop("scheduler", kill=True)
    await asyncio.sleep(5)  # every start time passes while no scheduler runs
    await _start(stack, "scheduler", "scheduler-2")  # and two replicas come back at once
    for index, battery in enumerate(batteries):
        await eventually(
            lambda battery=battery, index=index: battery.applied_power_w == -(1000 + 500 * index),
            what=f"battery {index} started late",
        )
    ids = [uuid.UUID(item["id"]) for item in sent]

    async def three_outcomes() -> bool:
        # A battery applies the setpoint before the agent's outcome reaches the scheduler, so await the rows.
        count = await stack.pool.fetchval(
            "SELECT count(*) FROM scheduler.device_outcomes WHERE command_id = ANY($1::uuid[])", ids
        )
        return bool(count >= 3)

    await eventually(three_outcomes, timeout_s=10, what="three device outcomes recorded")
    await asyncio.sleep(1.0)  # give a doubled start the time to show up, then check there is none
    fired = await stack.pool.fetch(
        "SELECT command_id, kind, count(*) AS fired FROM scheduler.timers WHERE command_id = ANY($1::uuid[])"
        " AND fired_at IS NOT NULL GROUP BY command_id, kind",
        ids,
    )
    assert sorted((row["kind"], row["fired"]) for row in fired) == [("start", 1)] * 3
    outcomes = await stack.pool.fetchval(
        "SELECT count(*) FROM scheduler.device_outcomes WHERE command_id = ANY($1::uuid[])", ids
    )
    assert outcomes == 3


async def test_upstream_patch_failing_for_a_while_every_ack_delivered_after(stack: Stack) -> None:
    await stack.add_battery("e2e-battery-acks")
    await _start(stack, "gateway", "scheduler", "agent")
    stack.upstream.fail_next(8, status=503)  # the next 8 API calls fail, whenever they come
    sent = [stack.upstream.add_command(command("e2e-battery-acks", starts_in_s=600 + index)) for index in range(5)]
    for item in sent:
        (ack,) = await stack.wait_acks(item["id"], 1, timeout_s=40)
        assert ack["device_status"] == "OK"
    refused = [ack for ack in stack.upstream.acks if ack["status_code"] != 200]
    assert refused, "the upstream was failing: some PATCH must have been refused first"
    ids = [uuid.UUID(item["id"]) for item in sent]

    async def outbox_drained() -> bool:
        # The upstream records a 200 before the scheduler marks the row delivered, so await the mark.
        pending = await stack.pool.fetchval(
            "SELECT count(*) FROM scheduler.ack_outbox WHERE delivered_at IS NULL AND command_id = ANY($1::uuid[])",
            ids,
        )
        return bool(pending == 0)

    await eventually(outbox_drained, timeout_s=10, what="every outbox row marked delivered")
