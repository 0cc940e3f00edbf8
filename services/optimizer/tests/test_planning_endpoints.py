"""The operator RPCs of the optimizer against the real database and broker: what each answers, what it stores,
and the device plans it publishes on gridloop.devices (read from a test queue bound to device.plan.#)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from gridloop_common.contracts import routing
from gridloop_common.contracts.forecasts import ExternalForecastRequest, ForecastQuantity
from gridloop_common.contracts.grid_services import OperatorReply
from gridloop_common.contracts.plans import DevicePlan
from gridloop_common.contracts.routing import OperatorRpc
from gridloop_common.messaging import Broker, RpcClient, rpc_handler
from gridloop_common.testing import FakeClock
from optimizer.handlers import RUNS_SHOW, Handlers
from optimizer.mpc import MpcService
from optimizer.planning_runs import PlanningRun, SolverLike
from optimizer.problem import Plan, SiteProblem
from optimizer.repository import ForecastRepository, OptimizerRepository, PlanningRepository

NOW = datetime(2026, 12, 7, 12, 3, tzinfo=UTC)
TOMORROW = datetime(2026, 12, 8, tzinfo=UTC)
STEP = timedelta(minutes=10)


class FailingSolver:
    def solve(self, problem: SiteProblem, *, time_limit_s: float | None = None) -> Plan:
        raise RuntimeError("HiGHS crashed on purpose")


@dataclass
class Optimizer:
    handlers: Handlers
    mpc: MpcService
    planning: PlanningRun
    clock: FakeClock
    broker: Broker
    plans_queue: str
    pool: asyncpg.Pool

    async def ask(self, key: str, body: dict[str, Any] | None = None) -> OperatorReply:
        return await self.handlers.operator(
            key, b"" if body is None else json.dumps(body).encode(), now=self.clock.now()
        )

    async def published(self) -> list[DevicePlan]:
        queue = await self.broker.channel.get_queue(self.plans_queue)
        found = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            found.append(DevicePlan.model_validate_json(message.body))
        return found


@contextlib.asynccontextmanager
async def optimizer_on(
    pool: asyncpg.Pool, plan_broker: tuple[Broker, str], *, solver: type[SolverLike] | None = None
) -> AsyncIterator[Optimizer]:
    broker, queue = plan_broker
    clock = FakeClock(NOW)
    forecasts = ForecastRepository(pool)
    planning = PlanningRun(
        optimizer=OptimizerRepository(pool),
        planning=PlanningRepository(pool),
        forecasts=forecasts,
        publisher=broker.publisher,
        time_limit_s=5.0,
        solver_factory=solver,
    )
    mpc = MpcService(planning, clock)
    try:
        yield Optimizer(
            Handlers(planning=planning, mpc=mpc, forecasts=forecasts, clock=clock),
            mpc,
            planning,
            clock,
            broker,
            queue,
            pool,
        )
    finally:
        await mpc.close()


@pytest.fixture
async def optimizer(pool: asyncpg.Pool, plan_broker: tuple[Broker, str]) -> AsyncIterator[Optimizer]:
    async with optimizer_on(pool, plan_broker) as running:
        yield running


async def add_site(
    pool: asyncpg.Pool, name: str, *, battery: dict[str, Any] | None = None, soc_pct: float = 50.0, load_kw: float = 2.0
) -> None:
    """A UTC site with a constant load forecast (external, so it wins) and, when given, one battery."""
    await pool.execute("INSERT INTO flux.mg_sites (name, timezone) VALUES ($1, 'UTC')", name)
    if battery is not None:
        device_id = await pool.fetchval(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', $2, $3) RETURNING id",
            f"{name}.bess",
            name,
            battery,
        )
        await pool.execute(
            "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES ($1, $2, $3, 0)",
            NOW - timedelta(minutes=1),
            device_id,
            soc_pct,
        )
    await ForecastRepository(pool).store_external(
        ExternalForecastRequest(
            site=name, quantity=ForecastQuantity.LOAD, start=NOW - timedelta(hours=1), step=10, values=[load_kw] * 300
        ),
        received_at=NOW - timedelta(minutes=5),
    )


BATTERY = {"capacity_kwh": 10, "max_power_kw": 5}
TOU = {
    "date": TOMORROW.isoformat(),
    "start_peak": (TOMORROW + timedelta(hours=16)).isoformat(),
    "stop_peak": (TOMORROW + timedelta(hours=21)).isoformat(),
    "off_peak_value": 0.05,
    "on_peak_value": 0.25,
}


def mpc_body(**overrides: Any) -> dict[str, Any]:
    start = datetime(2026, 12, 7, 12, 10, tzinfo=UTC)
    return {
        "prices": {start.isoformat(): 0.1},
        "power_limit": {start.isoformat(): 50.0},
        "interval": 10,
        "start": start.isoformat(),
        "stop": (start + timedelta(hours=1)).isoformat(),
        **overrides,
    }


async def test_a_time_of_use_tariff_charges_the_battery_cheap_and_discharges_it_dear(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    await optimizer.pool.execute(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata)"
        """ VALUES ('alpha.unsized', 'bess', 'alpha', '{"max_power_kw": 5}')"""
    )

    reply = await optimizer.ask(OperatorRpc.TIME_OF_USE_TARIFF, TOU)

    assert reply.status == 200, reply.body
    body = reply.body
    assert body["date"] == "2026-12-08" and body["state"] == "optimal"
    # A battery whose size the registry does not give is left out and reported, never guessed.
    assert body["left_out"] == [
        {"site": "alpha", "device": "alpha.unsized", "reason": "metadata.capacity_kwh is missing"}
    ]
    prices = body["prices"]
    assert isinstance(prices, list) and len(prices) == 144
    assert (
        prices[16 * 6 - 1] == 0.05 and prices[16 * 6] == 0.25 and prices[21 * 6 - 1] == 0.25 and prices[21 * 6] == 0.05
    )
    [plan] = await optimizer.published()
    assert plan.device_name == "alpha.bess" and plan.kind.value == "tariff" and str(plan.run_id) == body["run_id"]
    assert len(plan.steps) == 144 and plan.steps[0].starts_at == TOMORROW
    assert all(step.ends_at - step.starts_at == STEP for step in plan.steps)  # every step expires at its end
    peak = range(16 * 6, 21 * 6)
    charged_before_peak = sum(step.power_w for step in plan.steps[: 16 * 6] if step.power_w > 0)
    discharged_in_peak = -sum(plan.steps[index].power_w for index in peak)
    assert charged_before_peak > 0
    assert discharged_in_peak > 5_000 * 6  # more than the 5 kWh it held, in W x 10-minute steps
    assert all(plan.steps[index].power_w <= 0 for index in peak)  # never charges at the dear price
    stored = await optimizer.pool.fetchrow("SELECT state, tariff_id::text FROM optimizer.runs")
    assert stored["state"] == "optimal" and stored["tariff_id"] == body["tariff_id"]


async def test_a_tariff_for_a_day_already_over_is_refused_naming_the_date(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    reply = await optimizer.ask(OperatorRpc.FLAT_TARIFF, {"flat_price": 0.1, "date": "2026-12-01T00:00:00Z"})
    assert reply.status == 422
    assert reply.body["errors"] == [{"field": "date", "message": reply.body["message"]}]
    assert await optimizer.published() == []


async def test_an_unknown_site_and_a_bad_field_are_refused_with_422_naming_the_field(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    unknown = await optimizer.ask(OperatorRpc.FLAT_TARIFF, {"site": "nowhere", "date": TOMORROW.isoformat()})
    assert unknown.status == 422 and unknown.body["errors"][0]["field"] == "site"  # type: ignore[index]
    bad = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body(interval=0))
    assert bad.status == 422 and bad.body["errors"][0]["field"] == "interval"  # type: ignore[index]


async def test_day_ahead_without_prices_or_tariff_is_a_409_then_plans_on_the_tariff_in_force(
    optimizer: Optimizer,
) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)

    refused = await optimizer.ask(OperatorRpc.COORDINATE_DAY_AHEAD, {})
    assert refused.status == 409 and refused.body["error"] == "no_prices"
    assert "market data" in str(refused.body["message"])

    await optimizer.ask(OperatorRpc.TIME_OF_USE_TARIFF, TOU)
    await optimizer.published()
    first = await optimizer.ask(OperatorRpc.COORDINATE_DAY_AHEAD, {})
    second = await optimizer.ask(OperatorRpc.COORDINATE_DAY_AHEAD, {"iteration": 1, "prices": [0.07] * 144})

    assert first.status == 200 and second.status == 200
    assert first.body["date"] == "2026-12-08" and second.body["iteration"] == 1
    [site] = first.body["sites"]  # type: ignore[misc]
    assert site["site"] == "alpha" and len(site["planned_import_kw"]) == 144 and site["cost"] > 0
    states = dict(await optimizer.pool.fetch("SELECT run_id::text, state FROM optimizer.runs WHERE kind = 'day_ahead'"))
    assert states == {first.body["run_id"]: "superseded", second.body["run_id"]: "optimal"}


async def test_the_mpc_plans_at_once_replans_on_the_next_interval_and_stops_with_empty_plans(
    optimizer: Optimizer,
) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)

    started = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body())

    assert started.status == 200, started.body
    [site] = started.body["sites"]  # type: ignore[misc]
    assert len(site["import_kw"]) == 6 and site["devices"][0]["name"] == "alpha.bess"
    assert len(site["devices"][0]["setpoints"]) == 6 and site["violations"] == []
    [first_plan] = await optimizer.published()
    assert len(first_plan.steps) == 6 and first_plan.kind.value == "mpc"
    [session_id] = optimizer.mpc.active()

    # The next interval: a new SoC reading, and the re-plan starts from the step then in force.
    optimizer.clock.set(datetime(2026, 12, 7, 12, 20, tzinfo=UTC))
    await optimizer.pool.execute(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power)"
        " SELECT $1, id, 90, 0 FROM flux.mg_device_registry WHERE name = 'alpha.bess'",
        datetime(2026, 12, 7, 12, 19, tzinfo=UTC),
    )
    replanned = await optimizer.mpc.tick(session_id, optimizer.clock.now())

    assert replanned is not None and replanned.run_id != UUID(str(started.body["run_id"]))
    [second_plan] = await optimizer.published()
    assert second_plan.steps[0].starts_at == datetime(2026, 12, 7, 12, 20, tzinfo=UTC)
    assert len(second_plan.steps) == 5  # the steps up to the stop
    assert second_plan.issued_at >= first_plan.issued_at
    soc_path = replanned.sites[0]["devices"][0]["soc_pct"]
    assert soc_path[0] != pytest.approx(site["devices"][0]["soc_pct"][0])  # planned from the 90 % reading

    stopped = await optimizer.ask(OperatorRpc.STOP_MPC, {})

    assert stopped.status == 200 and stopped.body["stopped"] is True and stopped.body["devices"] == ["alpha.bess"]
    [empty] = await optimizer.published()
    assert empty.device_name == "alpha.bess" and empty.steps == [] and empty.issued_at >= second_plan.issued_at
    assert optimizer.mpc.active() == []
    states = {row["state"] for row in await optimizer.pool.fetch("SELECT state FROM optimizer.runs WHERE kind = 'mpc'")}
    assert "optimal" not in states and "stopped" in states
    session = await optimizer.pool.fetchval("SELECT state FROM optimizer.mpc_sessions")
    assert session == "stopped"


async def test_an_mpc_re_plan_spends_what_its_earlier_steps_stored(optimizer: Optimizer) -> None:
    # Regression: each re-plan ended at least at the SoC it started from, so energy a cheap step stored was
    # never spent in the dear steps after it (there was nothing cheap left to refill it with) and the MPC paid
    # to charge for nothing. A re-plan ends at least at the SoC the MPC started with.
    await add_site(optimizer.pool, "alpha", battery=BATTERY, load_kw=10.0)
    start = datetime(2026, 12, 7, 12, 10, tzinfo=UTC)
    # The dear step, then one a little cheaper: too dear to refill in (0.95 / 0.95**2 > 1), so a re-plan held
    # to its own starting SoC stays idle; one held to the MPC's can spend the charge, and spends it first in
    # the dearest step.
    prices = {start.isoformat(): 0.01, (start + STEP).isoformat(): 1.0, (start + 2 * STEP).isoformat(): 0.95}
    body = mpc_body(prices=prices)
    body["stop"] = (start + 3 * STEP).isoformat()

    started = await optimizer.ask(OperatorRpc.CALCULATE_MPC, body)

    assert started.status == 200, started.body
    first = started.body["sites"][0]["devices"][0]["setpoints"]  # type: ignore[index]
    assert first[0] > 0  # stores the cheap energy for the dear steps
    [session_id] = optimizer.mpc.active()
    # The battery charged as planned: the next reading is higher than the MPC's first.
    optimizer.clock.set(start + STEP)
    charged = 50.0 + first[0] * (STEP / timedelta(hours=1)) / BATTERY["capacity_kwh"] * 100 * 0.95
    await optimizer.pool.execute(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power)"
        " SELECT $1, id, $2, 0 FROM flux.mg_device_registry WHERE name = 'alpha.bess'",
        start + STEP - timedelta(seconds=30),
        charged,
    )

    replanned = await optimizer.mpc.tick(session_id, optimizer.clock.now())

    assert replanned is not None
    setpoints = replanned.sites[0]["devices"][0]["setpoints"]
    assert setpoints[0] < 0, setpoints  # the dear step uses what was stored
    assert replanned.sites[0]["devices"][0]["soc_pct"][-1] == pytest.approx(50.0, abs=0.01)
    assert replanned.sites[0]["violations"] == []


async def test_the_mpc_loop_replans_when_the_clock_reaches_the_next_step(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body())
    await optimizer.published()

    queue = await optimizer.broker.channel.get_queue(optimizer.plans_queue)
    await asyncio.sleep(0)  # let the MPC's task start waiting for its next step
    optimizer.clock.advance((datetime(2026, 12, 7, 12, 20, tzinfo=UTC) - NOW).total_seconds())
    async with asyncio.timeout(30), queue.iterator(no_ack=True) as messages:
        async for message in messages:
            replanned = DevicePlan.model_validate_json(message.body)
            break
    assert replanned.steps[0].starts_at == datetime(2026, 12, 7, 12, 20, tzinfo=UTC)
    assert len(replanned.steps) == 5


async def test_an_import_limit_below_the_load_is_reported_as_violations(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "beta", load_kw=3.0)  # no battery: nothing can lower the import

    reply = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body(power_limit={"2026-12-07T12:10:00Z": 1.0}))

    assert reply.status == 200 and reply.body["state"] == "optimal"
    [site] = reply.body["sites"]  # type: ignore[misc]
    assert site["import_kw"] == [3.0] * 6
    assert [(v["limit"], v["step"], v["amount"]) for v in site["violations"]] == [
        ("import_limit", step, 2.0) for step in range(6)
    ]
    stored = await optimizer.pool.fetchval("SELECT violations FROM optimizer.runs")
    assert len(stored) == 6


async def test_a_failing_solve_answers_a_failed_run_and_publishes_nothing(
    pool: asyncpg.Pool, plan_broker: tuple[Broker, str]
) -> None:
    async with optimizer_on(pool, plan_broker, solver=FailingSolver) as failing:
        await add_site(pool, "alpha", battery=BATTERY)

        reply = await failing.ask(OperatorRpc.TIME_OF_USE_TARIFF, TOU)

        assert reply.status == 200
        assert reply.body["state"] == "failed" and "HiGHS crashed on purpose" in str(reply.body["reason"])
        assert await failing.published() == []
        status = await failing.ask(OperatorRpc.OPTIMIZATION_STATUS, {"run_id": reply.body["run_id"]})
        [run] = status.body["runs"]  # type: ignore[misc]
        assert run["state"] == "failed" and "HiGHS crashed" in run["reason"]


async def test_status_lists_runs_and_refuses_an_unknown_run(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    tariff = await optimizer.ask(OperatorRpc.FLAT_TARIFF, {"flat_price": 0.1, "date": TOMORROW.isoformat()})

    listed = await optimizer.ask(OperatorRpc.OPTIMIZATION_STATUS, None)
    unknown = await optimizer.ask(OperatorRpc.OPTIMIZATION_STATUS, {"run_id": "00000000-0000-0000-0000-000000000000"})

    [run] = listed.body["runs"]  # type: ignore[misc]
    assert run["run_id"] == tariff.body["run_id"] and run["kind"] == "tariff" and run["state"] == "optimal"
    assert run["build_ms"] >= 0 and run["solve_ms"] > 0 and run["finished_at"] is not None
    assert unknown.status == 404 and unknown.body["errors"][0]["field"] == "run_id"  # type: ignore[index]


async def test_a_restarted_optimizer_resumes_the_active_mpc(
    pool: asyncpg.Pool, plan_broker: tuple[Broker, str]
) -> None:
    async with optimizer_on(pool, plan_broker) as before:
        await add_site(pool, "alpha", battery=BATTERY)
        await before.ask(OperatorRpc.CALCULATE_MPC, mpc_body())
        await before.published()
    async with optimizer_on(pool, plan_broker) as after:
        after.clock.set(datetime(2026, 12, 7, 12, 30, tzinfo=UTC))
        resumed = await after.mpc.resume(now=after.clock.now())

        assert len(resumed) == 1 and after.mpc.active() == resumed
        [plan] = await after.published()
        assert plan.steps[0].starts_at == datetime(2026, 12, 7, 12, 30, tzinfo=UTC) and len(plan.steps) == 4


async def test_the_rpc_queue_serves_status_and_gridloop_plans(
    optimizer: Optimizer, amqp_url: str, tmp_path: Path
) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    tariff = await optimizer.ask(OperatorRpc.FLAT_TARIFF, {"flat_price": 0.1, "date": TOMORROW.isoformat()})
    await optimizer.published()
    broker = optimizer.broker

    async with (
        broker.consumer(
            routing.Queues.OPTIMIZER_RPC, rpc_handler(broker.publisher, optimizer.handlers.serve), drain_timeout_s=2.0
        ),
        RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="test-cli") as client,
    ):
        status = json.loads(await client.call("optimizer.status", b"{}"))
        shown = json.loads(await client.call(RUNS_SHOW, json.dumps({"run_id": tariff.body["run_id"]}).encode()))
        reply = OperatorReply.model_validate_json(await client.call(OperatorRpc.STOP_MPC, b"{}"))
        listing = await _cli(tmp_path, amqp_url, "plans")
        table = await _cli(tmp_path, amqp_url, "plans", "show", str(tariff.body["run_id"]))

    assert status["service"] == "optimizer"
    assert shown["run"]["run_id"] == tariff.body["run_id"]
    [plan] = shown["plans"]
    assert plan["device"] == "alpha.bess" and len(plan["setpoints_kw"]) == 144
    assert len(shown["sites"][0]["devices"][0]["soc_pct"]) == 144
    assert reply.status == 200 and reply.body["stopped"] is False
    assert tariff.body["run_id"] in listing and "tariff" in listing and "optimal" in listing
    lines = table.splitlines()
    assert lines[0].startswith(f"run {tariff.body['run_id']} (tariff): optimal")
    assert "alpha.bess at alpha (plan version 1)" in lines
    header = lines.index("alpha.bess at alpha (plan version 1)") + 1
    assert lines[header].split() == ["TIME", "SETPOINT", "KW", "SOC", "%"]
    assert lines[header + 2].startswith("2026-12-08 00:00:00")
    assert len(lines) - header - 2 >= 144


async def _cli(directory: Path, amqp_url: str, *arguments: str) -> str:
    """Run the gridloop CLI as a process (it imports no service), in ``directory`` so its dev files land there."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GRIDLOOP_")}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("gridloop")),
        *arguments,
        env={**environment, "GRIDLOOP_AMQP_URL": amqp_url},
        cwd=directory,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await process.communicate()
    assert process.returncode == 0, errors.decode()
    return output.decode()


async def test_an_mpc_replaced_without_storage_returns_the_battery_to_its_default(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    first = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body())
    await optimizer.published()

    replaced = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body(electric_storage=False))

    assert replaced.status == 200
    [site] = replaced.body["sites"]  # type: ignore[misc]
    assert site["devices"] == [] and site["import_kw"] == [2.0] * 6
    [empty] = await optimizer.published()
    assert empty.device_name == "alpha.bess" and empty.steps == []
    assert len(optimizer.mpc.active()) == 1
    states = dict(await optimizer.pool.fetch("SELECT run_id::text, state FROM optimizer.runs"))
    assert states == {first.body["run_id"]: "stopped", replaced.body["run_id"]: "optimal"}


async def test_each_site_is_planned_on_its_local_day_within_its_own_import_limit(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    await add_site(optimizer.pool, "toronto", load_kw=2.0)
    await optimizer.pool.execute(
        "UPDATE flux.mg_sites SET timezone = 'America/Toronto', import_limit_kw = 1.5 WHERE name = 'toronto'"
    )

    reply = await optimizer.ask(OperatorRpc.TIME_OF_USE_TARIFF, TOU)

    assert reply.status == 200, reply.body
    # The peak is 16:00-21:00 wall-clock time at each site, so both local days have the same vector (one
    # list); in real time Toronto's day, and its peak, start five hours later.
    prices = reply.body["prices"]
    assert isinstance(prices, list) and prices[16 * 6] == 0.25 and prices[16 * 6 - 1] == 0.05
    sites = {entry["site"]: entry for entry in reply.body["sites"]}  # type: ignore[union-attr]
    assert sites["alpha"]["starts_at"] == "2026-12-08T00:00:00+00:00"
    assert sites["toronto"]["starts_at"] == "2026-12-08T05:00:00+00:00"
    limits = {(v["limit"], v["amount"]) for v in sites["toronto"]["violations"]}
    assert limits == {("import_limit", 0.5)} and len(sites["toronto"]["violations"]) == 144
    assert sites["alpha"]["violations"] == []


async def test_a_day_already_over_at_one_site_of_the_scope_is_refused(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "kiritimati")
    await optimizer.pool.execute("UPDATE flux.mg_sites SET timezone = 'Pacific/Kiritimati'")

    # 12:03 UTC on the 7th is 02:03 on the 8th at UTC+14: the 7th is over there, not everywhere.
    reply = await optimizer.ask(OperatorRpc.FLAT_TARIFF, {"date": "2026-12-07T00:00:00Z"})

    assert reply.status == 422
    assert reply.body["errors"] == [
        {"field": "date", "message": "date: 2026-12-07 is already over at site kiritimati (Pacific/Kiritimati)"}
    ]


async def test_mpc_steps_before_the_first_price_take_the_tariff_in_force_else_409(optimizer: Optimizer) -> None:
    await add_site(optimizer.pool, "alpha", battery=BATTERY)
    late_prices = {"2026-12-07T12:30:00Z": 0.3}

    refused = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body(prices=late_prices))
    assert refused.status == 409 and refused.body["error"] == "no_prices"
    assert refused.body["errors"][0]["field"] == "prices"  # type: ignore[index]
    assert optimizer.mpc.active() == []

    await optimizer.ask(OperatorRpc.FLAT_TARIFF, {"flat_price": 0.1, "date": "2026-12-07T00:00:00Z"})
    await optimizer.published()
    started = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body(prices=late_prices))

    assert started.status == 200, started.body
    # Cheap (the tariff's 0.1) for the two steps before 12:30, dear (0.3) after: it charges first.
    [plan] = await optimizer.published()
    assert [step.power_w > 0 for step in plan.steps[:2]] == [True, True]
    assert all(step.power_w <= 0 for step in plan.steps[2:])


async def test_an_mpc_plans_a_v1g_car_in_the_cheap_step_and_reports_a_charger_without_its_car(
    optimizer: Optimizer,
) -> None:
    """A V1G charger whose car (60 kWh at 30 %, 32 % by 13:00) leaves within the MPC: 1.2 kWh stored at 90 %
    is 1.33 kWh, 8 kW over the one cheap 10-minute step (12:30, above the 4.14 kW minimum). A charger
    registered without its car is left out with the reason; with electric_vehicle false none is planned."""
    await add_site(optimizer.pool, "alpha")
    car = {"capacity_kwh": 60, "departure": "13:00", "target_soc_pct": 32, "initial_soc_pct": 30}
    for name, metadata in (
        ("alpha.ev", {"max_power_kw": 11, "phases": 3, "min_current_a": 6, "ev": car}),
        ("alpha.ev-unknown-car", {"max_power_kw": 11}),
    ):
        await optimizer.pool.execute(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata)"
            " VALUES ($1, 'electric_vehicle_v1g', 'alpha', $2)",
            name,
            metadata,
        )
    start = datetime(2026, 12, 7, 12, 10, tzinfo=UTC)
    prices = {start.isoformat(): 0.3, "2026-12-07T12:30:00+00:00": 0.05, "2026-12-07T12:40:00+00:00": 0.3}

    started = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body(prices=prices))

    assert started.status == 200, started.body
    [site] = started.body["sites"]  # type: ignore[misc]
    [device] = site["devices"]
    assert (device["name"], device["type"]) == ("alpha.ev", "electric_vehicle_v1g")
    assert device["setpoints"] == pytest.approx([0, 0, 8.0, 0, 0, 0], abs=1e-3)
    assert site["violations"] == []
    [left_out] = started.body["left_out"]  # type: ignore[index]
    assert left_out["device"] == "alpha.ev-unknown-car" and left_out["reason"].startswith("metadata.ev is missing")
    [plan] = await optimizer.published()
    assert plan.device_name == "alpha.ev"
    assert [step.power_w for step in plan.steps] == [0, 0, 8000, 0, 0, 0]

    without = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body(prices=prices, electric_vehicle=False))

    assert without.status == 200 and without.body["sites"][0]["devices"] == []  # type: ignore[index]
    [empty] = await optimizer.published()
    assert empty.device_name == "alpha.ev" and empty.steps == []


async def test_a_car_starts_from_its_chargers_latest_soc_reading_while_a_transaction_runs(
    optimizer: Optimizer,
) -> None:
    """Two chargers with the same car in metadata (30 %): one whose latest reading, in a transaction, says
    31 %, planned from 31 %; one whose latest reading has no transaction (the car left; an older reading of
    45 % was another car's), planned from its metadata's 30 %. Prices are flat and no target binds at once,
    so neither charges in the first step and its SoC there is the one it started from."""
    await add_site(optimizer.pool, "alpha")
    car = {"capacity_kwh": 60, "departure": "13:00", "target_soc_pct": 20, "initial_soc_pct": 30}
    for name, readings in (
        ("alpha.plugged", [(NOW - timedelta(minutes=2), 31.0, "7")]),
        ("alpha.left", [(NOW - timedelta(minutes=5), 45.0, "6"), (NOW - timedelta(minutes=1), None, None)]),
    ):
        device_id = await optimizer.pool.fetchval(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata)"
            " VALUES ($1, 'electric_vehicle_v1g', 'alpha', $2) RETURNING id",
            name,
            {"max_power_kw": 11, "ev": car},
        )
        for time, soc, transaction in readings:
            await optimizer.pool.execute(
                "INSERT INTO flux.mg_ev_charger_readings (time, device_id, soc_pct, transaction_id)"
                " VALUES ($1, $2, $3, $4)",
                time,
                device_id,
                soc,
                transaction,
            )

    started = await optimizer.ask(OperatorRpc.CALCULATE_MPC, mpc_body())

    assert started.status == 200, started.body
    [site] = started.body["sites"]  # type: ignore[misc]
    first_soc = {device["name"]: device["soc_pct"][0] for device in site["devices"]}
    assert first_soc == {"alpha.plugged": 31.0, "alpha.left": 30.0}
