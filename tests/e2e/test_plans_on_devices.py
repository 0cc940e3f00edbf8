"""Plans that reach the batteries (issue 17, item 6): the whole stack, from an operator endpoint to the device.

The gateway, optimizer, scheduler and device-agent run as processes; the battery is the SunSpec simulator.
The optimizer's view of the battery is one state-of-charge reading stored at the start (no telemetry-ingest
runs here), and the site's load an external forecast put over RPC: export earns nothing, so a plan only
discharges to serve load, and only charges when a dearer step follows where that load can use the energy.

Every MPC here has 1-minute steps and a `start` in the past, so its first step ends within the minute and
the test sees two steps in well under two minutes. The dear step is followed by a less dear one, so the
plan spends the charge in the dearest step rather than being indifferent between them.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from gridloop_common.auth import issue_key
from gridloop_common.contracts import routing
from gridloop_common.contracts.forecasts import ExternalForecastRequest
from gridloop_common.messaging import RpcClient, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.battery import BatterySimulator
from gridloop_simulators.charger import CarVisit, ChargerSimulator, ChargerSpec

from .conftest import Stack, command, eventually

STORAGE = 124
MAX_POWER_W = 5000
LOAD_KW = 10.0  # above the battery's power: every dear step can use a full step of discharge
MINUTE = timedelta(minutes=1)


async def _site_with_battery(stack: Stack, *, soc: float = 50, **metadata: Any) -> tuple[str, BatterySimulator]:
    """A site of its own (the database outlives each test) with one battery and the SoC reading the optimizer
    plans from."""
    site = f"e2e-plan-{uuid.uuid4().hex[:6]}"
    battery = await stack.add_battery(f"{site}.bess", site=site, soc=soc, **metadata)
    await stack.pool.execute(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power)"
        " SELECT now(), id, $2, 0 FROM flux.mg_device_registry WHERE name = $1",
        f"{site}.bess",
        soc,
    )
    return site, battery


async def _start_all(stack: Stack) -> None:
    for name in ("optimizer", "scheduler", "agent", "gateway"):
        await stack.start(name)


async def _put_load(stack: Stack, site: str, *, start: datetime, step_minutes: int, steps: int) -> None:
    """The site's load as an external forecast (optimizer.forecasts.put), which wins over history."""
    request = ExternalForecastRequest(
        site=site, quantity="load", start=start, step=step_minutes, values=[LOAD_KW] * steps, source="e2e"
    )
    amqp_url = stack.environment["GRIDLOOP_AMQP_URL"]
    async with (
        open_broker(AmqpSettings(amqp_url=amqp_url), client_name="e2e-forecast", url=amqp_url) as broker,
        RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="e2e-forecast") as client,
    ):
        reply = json.loads(
            await client.call(routing.RoutingKeys.OPTIMIZER_FORECASTS_PUT, request.model_dump_json().encode())
        )
    assert reply["site"] == site and reply["steps"] == steps, reply


@asynccontextmanager
async def _operator(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    key = issue_key(stack.environment["GRIDLOOP_JWT_SECRET"], "grid_operator")
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{stack.ports['gateway']}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30.0,
    ) as client:
        yield client


def _mpc(site: str, start: datetime, prices: list[float], *, steps: int | None = None) -> dict[str, Any]:
    """An MPC of 1-minute steps from ``start``, one price per step, stopping after ``steps`` (default: one per
    price)."""
    return {
        "site": site,
        "interval": 1,
        "start": start.isoformat(),
        "stop": (start + (steps or len(prices)) * MINUTE).isoformat(),
        "prices": {(start + index * MINUTE).isoformat(): price for index, price in enumerate(prices)},
        "power_limit": {start.isoformat(): 100.0},
    }


async def _start_mpc(
    stack: Stack, client: httpx.AsyncClient, site: str, start: datetime, prices: list[float], **options: Any
) -> list[float]:
    """Start the MPC; the first plan's setpoints (kW, + charging) of the site's battery."""
    await _put_load(stack, site, start=start - 10 * MINUTE, step_minutes=5, steps=6)
    answer = await client.post("/calculate_mpc", json=_mpc(site, start, prices, **options))
    assert answer.status_code == 200, answer.text
    (planned,) = answer.json()["sites"]
    (device,) = planned["devices"]
    assert device["name"] == f"{site}.bess"
    return [float(setpoint) for setpoint in device["setpoints"]]


def _released(battery: BatterySimulator) -> bool:
    return int(battery.raw(STORAGE, "StorCtl_Mod")) == 0 and battery.applied_power_w == 0


async def test_an_mpc_charges_the_battery_in_the_cheap_minute_and_discharges_it_in_the_dear_one(
    stack: Stack,
) -> None:
    site, battery = await _site_with_battery(stack)
    await _start_all(stack)
    # The first step ends 30 s from now; the dear one follows, then a cheaper one to refill in.
    start = datetime.now(tz=UTC) - timedelta(seconds=30)
    async with _operator(stack) as client:
        setpoints = await _start_mpc(stack, client, site, start, [0.01, 1.0, 0.5])
    assert setpoints[0] > 0 and setpoints[1] < 0, setpoints

    await eventually(lambda: battery.applied_power_w > 0, timeout_s=15, what="the battery charging")
    charging_from = battery.soc_pct
    assert battery.applied_power_w == setpoints[0] * 1000
    await eventually(lambda: battery.soc_pct > charging_from, timeout_s=15, what="the SoC rising while charging")
    assert battery.applied_power_w > 0

    # The dear minute: the re-plan at its start discharges to serve the site's load.
    await eventually(lambda: battery.applied_power_w < 0, timeout_s=60, what="the battery discharging")
    discharging_from = battery.soc_pct
    await eventually(lambda: battery.soc_pct < discharging_from, timeout_s=15, what="the SoC falling")
    assert datetime.now(tz=UTC) >= start + MINUTE, "discharged before the dear minute began"


async def test_an_upstream_command_overrides_the_plan_and_the_plan_resumes_after_it(stack: Stack) -> None:
    site, battery = await _site_with_battery(stack)
    await _start_all(stack)
    # The cheap first step lasts 55 s more: room for a short command in the middle of it.
    start = datetime.now(tz=UTC) - timedelta(seconds=5)
    async with _operator(stack) as client:
        setpoints = await _start_mpc(stack, client, site, start, [0.01, 1.0, 0.5])
    plan_w = setpoints[0] * 1000
    assert plan_w > 0, setpoints
    await eventually(lambda: battery.applied_power_w == plan_w, timeout_s=15, what="the plan's charge applied")

    sent = stack.upstream.add_command(command(f"{site}.bess", lasts_s=8, setpoint_w=2000))

    await eventually(lambda: battery.applied_power_w == -2000, timeout_s=15, what="the command discharging")
    await stack.wait_acks(sent["id"], 1)
    command_ends = datetime.fromisoformat(sent["ends_at"])
    await eventually(lambda: battery.applied_power_w == plan_w, timeout_s=20, what="the plan's setpoint again")
    assert datetime.now(tz=UTC) >= command_ends, "the plan came back before the command ended"
    assert datetime.now(tz=UTC) < start + MINUTE, "the step ended: this is not the plan resuming"

    handovers = [
        json.loads(line) for line in stack.logs["scheduler"].read_text().splitlines() if "control handed over" in line
    ]
    sources = [(entry.get("from_source"), entry.get("to_source")) for entry in handovers]
    assert ("plan", "upstream_command") in sources and ("upstream_command", "plan") in sources, sources


async def test_stopping_the_mpc_returns_the_battery_to_its_default_at_once(stack: Stack) -> None:
    site, battery = await _site_with_battery(stack)
    await _start_all(stack)
    start = datetime.now(tz=UTC) - timedelta(seconds=5)
    async with _operator(stack) as client:
        setpoints = await _start_mpc(stack, client, site, start, [0.01, 1.0, 0.5])
        await eventually(lambda: battery.applied_power_w > 0, timeout_s=15, what="the battery charging")

        stopped = await client.post("/calculate_mpc", params={"site": site})
        asked = time.monotonic()

        assert stopped.status_code == 200 and stopped.json()["stopped"] is True, stopped.text
        assert stopped.json()["devices"] == [f"{site}.bess"]
        await eventually(lambda: _released(battery), timeout_s=10, what="the battery released")
    # Released by a write, well before the plan's step (50 s more) or the device's revert timer would have.
    assert time.monotonic() - asked < 10
    assert battery.reverted_count == 0
    assert datetime.now(tz=UTC) < start + MINUTE, setpoints


async def test_with_the_optimizer_dead_no_setpoint_outlives_its_step(stack: Stack) -> None:
    # Below its reserve, the battery charges even in a plan of one step (the reserve is a soft floor).
    site, battery = await _site_with_battery(stack, soc=5, backup_reserve_percentage=20)
    await _start_all(stack)
    start = datetime.now(tz=UTC) - timedelta(seconds=40)
    async with _operator(stack) as client:
        setpoints = await _start_mpc(stack, client, site, start, [0.01], steps=1)
    step_ends = start + MINUTE
    assert setpoints[0] > 0, setpoints
    await stack.stop("optimizer", kill=True)

    await eventually(lambda: battery.applied_power_w > 0, timeout_s=10, what="the plan's step applied")
    assert int(battery.raw(STORAGE, "StorCtl_Mod")) != 0

    await eventually(
        lambda: _released(battery),
        timeout_s=(step_ends - datetime.now(tz=UTC)).total_seconds() + 15,
        what="the battery released after the step's end",
    )
    assert datetime.now(tz=UTC) >= step_ends, "released before its step ended"
    assert "optimizer" not in stack.processes


def _zone_where_it_is_morning(now: datetime) -> ZoneInfo:
    """A fixed-offset zone where ``now`` is between 08:00 and 09:00, so today has a peak still ahead."""
    offset = (8 - now.hour + 12) % 24 - 12  # -12..11 hours
    # Etc/GMT zones have the POSIX sign: Etc/GMT-9 is nine hours ahead of UTC.
    return ZoneInfo("Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}")


async def test_a_tou_tariff_for_today_makes_the_battery_charge_in_the_cheap_window(stack: Stack) -> None:
    site, battery = await _site_with_battery(stack)
    now = datetime.now(tz=UTC)
    zone = _zone_where_it_is_morning(now)
    await stack.pool.execute("INSERT INTO flux.mg_sites (name, timezone) VALUES ($1, $2)", site, zone.key)
    await _start_all(stack)
    local_now = now.astimezone(zone)
    assert 8 <= local_now.hour < 9, local_now
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    # The peak begins within the half hour: less off-peak time than the battery needs to fill, so every
    # off-peak step before it charges, the one holding now included.
    start_peak = (local_now + timedelta(minutes=30)).replace(second=0, microsecond=0)
    start_peak -= timedelta(minutes=start_peak.minute % 10)
    await _put_load(stack, site, start=midnight, step_minutes=60, steps=24)

    async with _operator(stack) as client:
        tariff = await client.post(
            "/toutariff",
            json={
                "site": site,
                "date": midnight.isoformat(),
                "start_peak": start_peak.isoformat(),
                "stop_peak": (start_peak + timedelta(hours=4)).isoformat(),
            },
        )
        assert tariff.status_code == 200, tariff.text
        await eventually(lambda: battery.applied_power_w > 0, timeout_s=15, what="the battery charging now")
        status = await client.post("/request_optimization_status", json={"site": site})

    assert status.status_code == 200, status.text
    runs = {run["run_id"]: run for run in status.json()["runs"]}
    run = runs[tariff.json()["run_id"]]
    assert run["kind"] == "tariff" and run["state"] == "optimal", run
    (planned,) = tariff.json()["sites"]
    (device,) = planned["devices"]
    assert device["setpoints"][0] > 0 and min(device["setpoints"]) < 0, device["setpoints"]


async def test_a_tou_tariff_whose_peak_holds_now_makes_the_battery_discharge_in_it(stack: Stack) -> None:
    site, battery = await _site_with_battery(stack, soc=80)
    now = datetime.now(tz=UTC)
    zone = _zone_where_it_is_morning(now)
    await stack.pool.execute("INSERT INTO flux.mg_sites (name, timezone) VALUES ($1, $2)", site, zone.key)
    await _start_all(stack)
    local_now = now.astimezone(zone)
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    # The peak began before now and lasts into the afternoon; the evening is off-peak, to refill in.
    start_peak = local_now.replace(second=0, microsecond=0) - timedelta(minutes=local_now.minute % 10 + 10)
    await _put_load(stack, site, start=midnight, step_minutes=60, steps=24)

    async with _operator(stack) as client:
        tariff = await client.post(
            "/toutariff",
            json={
                "site": site,
                "date": midnight.isoformat(),
                "start_peak": start_peak.isoformat(),
                "stop_peak": (start_peak + timedelta(hours=4)).isoformat(),
            },
        )
        assert tariff.status_code == 200, tariff.text
        soc_before = battery.soc_pct
        await eventually(lambda: battery.applied_power_w < 0, timeout_s=15, what="the battery discharging now")
        await eventually(lambda: battery.soc_pct < soc_before, timeout_s=15, what="the battery's SoC falling")

    (planned,) = tariff.json()["sites"]
    (device,) = planned["devices"]
    assert device["setpoints"][0] < 0 and max(device["setpoints"]) > 0, device["setpoints"]  # it refills later


async def _site_with_charger(
    stack: Stack, *, device_type: str, version: str, departure: datetime, soc: float, target: float
) -> tuple[str, str, str, str]:
    """A site of its own with one 11 kW three-phase charger (6 A minimum) whose car, 60 kWh, is described in
    metadata.ev (no charger telemetry is stored); (site, device name, OCPP id, password)."""
    site = f"e2e-ev-{uuid.uuid4().hex[:6]}"
    name, ocpp_id, password = f"{site}.ev", f"CP-{uuid.uuid4().hex[:8]}", "simulated-charger"
    metadata = {
        "max_power_kw": 11,
        "phases": 3,
        "min_current_a": 6,
        "ocpp": {"id": ocpp_id, "version": version, "password_sha256": hashlib.sha256(password.encode()).hexdigest()},
        "ev": {
            "capacity_kwh": 60,
            "departure": departure.strftime("%H:%M"),
            "target_soc_pct": target,
            "initial_soc_pct": soc,
        },
    }
    await stack.pool.execute(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, $2, $3, $4::jsonb)",
        name,
        device_type,
        site,
        json.dumps(metadata),
    )
    return site, name, ocpp_id, password


async def _start_charger_mpc(
    stack: Stack, client: httpx.AsyncClient, site: str, name: str, start: datetime, prices: list[float]
) -> list[float]:
    """Start the MPC; the first plan's setpoints (kW, + charging) of the site's one charger."""
    await _put_load(stack, site, start=start - 10 * MINUTE, step_minutes=5, steps=6)
    answer = await client.post("/calculate_mpc", json=_mpc(site, start, prices))
    assert answer.status_code == 200, answer.text
    (planned,) = answer.json()["sites"]
    (device,) = planned["devices"]
    assert device["name"] == name, device
    return [float(setpoint) for setpoint in device["setpoints"]]


async def test_an_mpc_makes_a_v1g_charger_charge_in_the_cheap_minute(stack: Stack) -> None:
    """A V1G charger (the OCPP 1.6 simulator) whose car, 60 kWh at 30 %, must reach 30.2 % by a departure two
    to three minutes ahead: 0.12 kWh stored at 90 % is 8 kW over one minute, the cheap one (the second). The
    plan stands the charger still in the dear first minute and charges it in the cheap one."""
    start = datetime.now(tz=UTC) - timedelta(seconds=30)
    departure = (start + 3 * MINUTE).replace(second=0, microsecond=0)
    site, name, ocpp_id, password = await _site_with_charger(
        stack, device_type="electric_vehicle_v1g", version="1.6", departure=departure, soc=30, target=30.2
    )
    await _start_all(stack)
    charger = ChargerSimulator(
        url=f"ws://127.0.0.1:{stack.ports['ocpp']}/ocpp/{ocpp_id}",
        charge_point_id=ocpp_id,
        password=password,
        car=CarVisit(capacity_kwh=60, initial_soc_percentage=30),
        meter_interval_s=5,
        tick_s=0.2,
    )
    async with charger, _operator(stack) as client:
        setpoints = await _start_charger_mpc(stack, client, site, name, start, [1.0, 0.01, 1.0])
        assert setpoints[0] == 0 and abs(setpoints[1] - 0.12 / 0.9 * 60) < 0.01, setpoints

        # The dear minute: the charger, charging at rated by itself until then, stands still.
        await eventually(
            lambda: charger.state.limit is not None and charger.state.limit.limit_w == 0 and charger.state.power_w == 0,
            timeout_s=15,
            what="the charger standing still under a profile of 0 W",
        )
        assert datetime.now(tz=UTC) < start + MINUTE
        # The cheap minute: the re-plan at its start keeps it, and the charger charges at the plan's power.
        await eventually(lambda: charger.state.power_w > 0, timeout_s=60, what="the charger charging")
        assert datetime.now(tz=UTC) >= start + MINUTE, "charged before the cheap minute began"
        assert abs(charger.state.power_w - 8000) < 20, charger.state.power_w


async def test_an_mpc_makes_a_v2g_charger_serve_the_dear_minute_and_refill_the_car_in_the_cheap_one(
    stack: Stack,
) -> None:
    """A V2G charger (the OCPP 2.1 simulator) whose car, 60 kWh at 50 %, must be back at 50 % by a departure
    two to three minutes ahead; the site draws 10 kW. Discharging x kW in the dear minute needs x / 0.81 back
    in the cheap one, at most the 11 kW rating: the plan discharges about 8.9 kW, then charges at 11 kW."""
    start = datetime.now(tz=UTC) - timedelta(seconds=30)
    departure = (start + 3 * MINUTE).replace(second=0, microsecond=0)
    site, name, ocpp_id, password = await _site_with_charger(
        stack, device_type="electric_vehicle_v2g", version="2.1", departure=departure, soc=50, target=50
    )
    await _start_all(stack)
    charger = ChargerSimulator(
        url=f"ws://127.0.0.1:{stack.ports['ocpp']}/ocpp/{ocpp_id}",
        charge_point_id=ocpp_id,
        password=password,
        protocol="ocpp2.1",
        spec=ChargerSpec(v2g=True),
        car=CarVisit(capacity_kwh=60, initial_soc_percentage=50),
        meter_interval_s=1,
        tick_s=0.2,
    )
    async with charger, _operator(stack) as client:
        setpoints = await _start_charger_mpc(stack, client, site, name, start, [1.0, 0.01, 1.0])
        assert setpoints[0] < -4.14 and setpoints[1] > 4.14, setpoints

        await eventually(lambda: charger.state.power_w < 0, timeout_s=20, what="the car discharging")
        assert datetime.now(tz=UTC) < start + MINUTE
        assert abs(charger.state.power_w - setpoints[0] * 1000) < 20, charger.state.power_w
        await eventually(lambda: charger.state.power_w > 0, timeout_s=60, what="the car refilling")
        assert datetime.now(tz=UTC) >= start + MINUTE, "refilled before the cheap minute began"
