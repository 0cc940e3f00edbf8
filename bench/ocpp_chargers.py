"""Benchmark of the device-agent's OCPP central system: many simulated chargers on one agent process.

The real `gridloop-agent` runs as a process of its own (its CPU is what is measured); the chargers are
`gridloop sim charger`'s ChargerSimulator (the `ocpp` library's charge-point side) in this process, all on
127.0.0.1. Each charger is registered (V1G, OCPP 1.6J), dials in with Basic auth, boots, and sends a heartbeat
and meter values every interval. Measured: the time until every charger is connected, the agent's CPU per
charger per minute in the steady state, and, after a DeviceAction per charger on the broker, the time until
every charger has accepted its charging profile (every outcome applied). Aim (issue 18): 1,000 chargers on
one core, every profile accepted within 10 s.

A private vhost and database, removed at the end. Figures are printed and written to
bench/results/ocpp_chargers.json. Run: `uv run python bench/ocpp_chargers.py [--chargers 1000 --minutes 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from infrastructure import Infrastructure, free_port

from gridloop_common.contracts import BatteryMode, DeviceAction, DeviceOutcome, PowerMode, routing
from gridloop_common.db import migrate_database
from gridloop_common.messaging import QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.charger import CarVisit, ChargerSimulator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ocpp_chargers.json"
BIN = Path(sys.executable).parent
PASSWORD = "bench-charger"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def run(chargers: int, minutes: float, interval_s: int) -> dict[str, object]:
    async with Infrastructure() as infrastructure:
        await migrate_database(infrastructure.database_url, owner="telemetry-ingest", package="telemetry_ingest")
        connection = await asyncpg.connect(infrastructure.database_url)
        password_sha256 = hashlib.sha256(PASSWORD.encode()).hexdigest()
        await connection.executemany(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata)"
            " VALUES ($1, 'electric_vehicle_v1g', 'BENCH', $2::jsonb)",
            [
                (
                    f"ev-{index}",
                    json.dumps({"max_power_kw": 11, "ocpp": {"id": f"CP-{index}", "password_sha256": password_sha256}}),
                )
                for index in range(chargers)
            ],
        )
        await connection.close()
        ocpp_port = free_port()
        environment = infrastructure.environment(
            GRIDLOOP_AGENT_PORT=str(free_port()),
            GRIDLOOP_OCPP_PORT=str(ocpp_port),
            GRIDLOOP_OCPP_HEARTBEAT_INTERVAL_S=str(interval_s),
            GRIDLOOP_AGENT_REVERT_TIMEOUT_S="600",
        )
        async with open_broker(
            AmqpSettings(amqp_url=infrastructure.amqp_url),  # type: ignore[arg-type]
            client_name="bench-ocpp",
            startup_timeout_s=10,
        ) as broker:
            # Where the agent's availability reports and outcomes go (nobody else consumes them here).
            await declare_queue(
                broker.channel,
                QueueSpec(
                    "bench.availability",
                    bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_AVAILABILITY),),
                ),
            )
            await declare_queue(
                broker.channel,
                QueueSpec("bench.outcomes", bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_OUTCOME),)),
            )
            agent = subprocess.Popen(
                [str(BIN / "gridloop-agent")], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            simulators = [
                ChargerSimulator(
                    url=f"ws://127.0.0.1:{ocpp_port}/ocpp",
                    charge_point_id=f"CP-{index}",
                    password=PASSWORD,
                    car=CarVisit(arrive_after_s=0.0),
                    meter_interval_s=interval_s,
                    tick_s=interval_s / 4,
                )
                for index in range(chargers)
            ]
            try:
                await _wait_for_port(ocpp_port)
                started = time.monotonic()
                for first in range(0, chargers, 100):
                    await asyncio.gather(*(simulator.connect() for simulator in simulators[first : first + 100]))
                connected_s = time.monotonic() - started
                print(f"{chargers} chargers connected and booted in {connected_s:.2f} s")

                cpu_before, steady_started = _cpu_s(agent.pid), time.monotonic()
                await asyncio.sleep(minutes * 60)
                steady_s = time.monotonic() - steady_started
                cpu_steady_s = _cpu_s(agent.pid) - cpu_before
                per_charger_minute_ms = cpu_steady_s / chargers / (steady_s / 60) * 1000
                print(
                    f"steady state: agent CPU {cpu_steady_s:.2f} s over {steady_s:.0f} s "
                    f"({cpu_steady_s / steady_s * 100:.1f} % of a core), "
                    f"{per_charger_minute_ms:.3f} ms per charger per minute"
                )

                queue = await broker.channel.get_queue("bench.outcomes", ensure=False)
                now = datetime.now(tz=UTC)
                cpu_before = _cpu_s(agent.pid)
                pushed_at = time.monotonic()
                for index in range(chargers):
                    action = DeviceAction(
                        device_name=f"ev-{index}",
                        mode=BatteryMode.CHARGE,
                        power_mode=PowerMode.SETPOINT,
                        setpoint_w=7000,
                        issued_at=now,
                        valid_until=now + timedelta(minutes=30),
                    )
                    await broker.publisher.publish(
                        exchange=routing.DEVICES_EXCHANGE,
                        routing_key=routing.device_action_key(action.device_name),
                        body=action,
                    )
                published_s = time.monotonic() - pushed_at
                applied = failed = 0
                async with queue.iterator() as messages, asyncio.timeout(300):
                    async for message in messages:
                        await message.ack()
                        outcome = DeviceOutcome.model_validate_json(message.body)
                        applied += outcome.applied
                        failed += not outcome.applied
                        if applied + failed == chargers:
                            break
                all_outcomes_s = time.monotonic() - pushed_at
                cpu_push_s = _cpu_s(agent.pid) - cpu_before
                accepted = sum(1 for simulator in simulators if simulator.state.limit is not None)
                print(
                    f"profiles: {chargers} actions published in {published_s:.2f} s; every outcome after "
                    f"{all_outcomes_s:.2f} s ({applied} applied, {failed} failed; "
                    f"{accepted} chargers hold the profile); "
                    f"agent CPU {cpu_push_s:.2f} s"
                )
            finally:
                await asyncio.gather(*(simulator.disconnect() for simulator in simulators), return_exceptions=True)
                agent.send_signal(signal.SIGTERM)
                agent.wait(30)
    return {
        "measured_at": datetime.now(tz=UTC).isoformat(),
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "chargers": chargers,
        "interval_s": interval_s,
        "connect_all_s": round(connected_s, 3),
        "steady_window_s": round(steady_s, 1),
        "agent_cpu_steady_s": round(cpu_steady_s, 3),
        "agent_cpu_share_of_a_core": round(cpu_steady_s / steady_s, 4),
        "agent_cpu_ms_per_charger_minute": round(per_charger_minute_ms, 4),
        "profile_push": {
            "publish_s": round(published_s, 3),
            "every_outcome_s": round(all_outcomes_s, 3),
            "applied": applied,
            "failed": failed,
            "chargers_holding_the_profile": accepted,
            "agent_cpu_s": round(cpu_push_s, 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=2.0, help="steady-state window measured")
    parser.add_argument("--interval", type=int, default=60, help="heartbeat and meter-value interval, s")
    arguments = parser.parse_args()
    results = asyncio.run(run(arguments.chargers, arguments.minutes, arguments.interval))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
