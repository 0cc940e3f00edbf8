"""The other intake modes (queue, poll), FOLLOW_LOAD, devices added at run time, and the commands CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aio_pika

from gridloop_common.contracts import routing
from gridloop_simulators.meter import MeterSimulator

from .conftest import Stack, command, eventually


def _envelope(body: dict[str, object], event_type: str = "command.created") -> bytes:
    return json.dumps(
        {"event_type": event_type, "event_object": body, "timestamp": datetime.now(tz=UTC).isoformat()}
    ).encode()


async def test_queue_mode_producer_and_an_invalid_message_dead_lettered_with_the_reason(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-queue-battery")
    await stack.start("scheduler")
    await stack.start("agent")
    valid = stack.upstream.add_command(command("e2e-queue-battery", setpoint_w=1500), notify=False)
    connection = await aio_pika.connect(stack.environment["GRIDLOOP_AMQP_URL"])
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(routing.UPSTREAM_EXCHANGE)
        for body, message_id in ((_envelope(valid), "producer-1"), (b'{"event_type": 42}', "producer-2")):
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id, content_type="application/json", delivery_mode=2),
                routing_key="command.created",
            )
        (ack,) = await stack.wait_acks(valid["id"], 1)
        assert ack["device_status"] == "OK"
        await eventually(lambda: battery.applied_power_w == -1500, what="battery driven from a queue producer")
        dead_letters = await channel.get_queue(routing.dead_letter_queue(routing.Queues.SCHEDULER_UPSTREAM))

        async def dead_letter() -> aio_pika.abc.AbstractIncomingMessage | None:
            return await dead_letters.get(fail=False, no_ack=True)

        message = await eventually(dead_letter, what="invalid envelope dead-lettered")
    assert message.message_id == "producer-2"
    assert "event_type" in str(message.headers["x-gridloop-dead-letter-reason"])


async def test_polling_mode_publishes_new_commands_and_survives_upstream_errors(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-poll-battery")
    stack.environment["GRIDLOOP_UPSTREAM_POLL"] = "on"
    stack.environment["GRIDLOOP_UPSTREAM_POLL_INTERVAL_S"] = "0.5"
    stack.upstream.fail_next(3, status=500)  # the first polls fail; the gateway must back off, not crash
    await stack.start("gateway")
    stack.upstream.webhook_url = None  # this test's upstream sends no webhooks: polling only
    await stack.start("scheduler")
    await stack.start("agent")
    polled = stack.upstream.add_command(command("e2e-poll-battery", setpoint_w=1200), notify=False)
    (ack,) = await stack.wait_acks(polled["id"], 1, timeout_s=40)
    assert ack["device_status"] == "OK"
    await eventually(lambda: battery.applied_power_w == -1200, what="battery driven from a polled command")
    assert stack.processes["gateway"].returncode is None
    log = stack.logs["gateway"].read_text()
    assert "upstream poll failed; backing off" in log


async def test_follow_load_discharges_to_cover_the_site_without_export(stack: Stack) -> None:
    battery = await stack.add_battery("e2e-follow-battery", max_power_kw=5, site_meter="e2e-follow-meter")
    async with MeterSimulator(port=0, battery=battery, profile_kw=[2.0] * 24, variation=0.0) as meter:
        await stack.register("e2e-follow-meter", port=meter.port, device_type="meter")
        await stack.start("gateway")
        await stack.start("scheduler")
        await stack.start("agent")
        sent = stack.upstream.add_command(command("e2e-follow-battery", power_mode="FOLLOW_LOAD", setpoint_w=None))
        (ack,) = await stack.wait_acks(sent["id"], 1)
        assert ack["device_status"] == "OK"
        # The closed loop settles the site near zero import, discharging about the 2 kW load.
        await eventually(
            lambda: -2000 <= battery.applied_power_w <= -1500 and 0 <= meter.site_power_w <= 500,
            timeout_s=30,
            what="battery covering the load",
        )
        for _ in range(10):  # and it never exports while it holds
            assert meter.site_power_w >= -1
            await asyncio.sleep(0.3)


async def test_a_device_added_while_running_is_picked_up_and_a_dead_one_stalls_nobody(stack: Stack) -> None:
    await stack.register("e2e-dead", port=1)
    await stack.start("gateway")
    await stack.start("scheduler")
    await stack.start("agent")
    dead = stack.upstream.add_command(command("e2e-dead", setpoint_w=1000))
    battery = await stack.add_battery("e2e-late-battery")  # registered after the agent started
    live = stack.upstream.add_command(command("e2e-late-battery", setpoint_w=1800))
    await eventually(lambda: battery.applied_power_w == -1800, what="late-added battery driven")
    (live_ack,) = await stack.wait_acks(live["id"], 1)
    assert live_ack["device_status"] == "OK"
    # Whether the agent has reported the dead device offline before its command is scheduled is a race: the
    # command is acknowledged FAILED at once, or OK when scheduled and FAILED when the dispatch finds it offline.
    dead_acks = await eventually(
        lambda: (acks := stack.acks_for(dead["id"])) and acks[-1]["device_status"] == "FAILED" and acks,
        what="FAILED ack for the dead device",
    )
    assert [ack["device_status"] for ack in dead_acks[:-1]] in ([], ["OK"])
    assert "e2e-dead" in dead_acks[-1]["device_status_reason"]


async def test_commands_cli_lists_and_shows_history(stack: Stack) -> None:
    await stack.add_battery("e2e-cli-battery")
    await stack.start("gateway")
    await stack.start("scheduler")
    sent = stack.upstream.add_command(command("e2e-cli-battery", starts_in_s=600, setpoint_w=2200))
    await stack.wait_acks(sent["id"], 1)
    gridloop = str(Path(sys.executable).with_name("gridloop"))
    listing = subprocess.run([gridloop, "commands"], env=stack.environment, capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert sent["id"] in listing.stdout and "DISCHARGE 2200 W" in listing.stdout
    shown = subprocess.run(
        [gridloop, "commands", "show", sent["id"]], env=stack.environment, capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    for expected in ("scheduled", "received", "acknowledged", "PATCH device_status=OK"):
        assert expected in shown.stdout
    await stack.stop("scheduler")
    down = subprocess.run([gridloop, "commands"], env=stack.environment, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1
    assert "no reply to 'scheduler.commands.list' within 5 s: is the serving service running?" in down.stderr
