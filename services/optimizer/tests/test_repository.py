"""The optimizer's storage against the real database: sites with their defaults, tariffs in force, runs and their
states, plans versioned per site and device, each step expiring at its end."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from gridloop_common.contracts import FlatTariffRequest, SiteParameters, TimeOfUseTariffRequest
from optimizer.repository import (
    OptimizerRepository,
    PlanWrite,
    RunKind,
    RunOutcome,
    RunStart,
    RunState,
    digest_inputs,
)
from optimizer.tariffs import compile_tariff, day_prices

pytestmark = pytest.mark.connected

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=10)
DAY = date(2026, 6, 2)


async def _register(pool: asyncpg.Pool, device: str, site: str) -> None:
    await pool.execute("INSERT INTO flux.mg_device_registry (name, type, site) VALUES ($1, 'bess', $2)", device, site)


def _start(kind: RunKind = RunKind.MPC, scope: list[str] | None = None, **changes: object) -> RunStart:
    values: dict[str, object] = {
        "kind": kind,
        "scope": scope,
        "inputs_digest": digest_inputs({"scope": scope}),
        "started_at": NOW,
    }
    values.update(changes)
    return RunStart(**values)  # type: ignore[arg-type]


def _optimal(**changes: object) -> RunOutcome:
    values: dict[str, object] = {
        "state": RunState.OPTIMAL,
        "finished_at": NOW + timedelta(seconds=1),
        "objective": 1.5,
        "build_ms": 2.0,
        "solve_ms": 3.0,
    }
    values.update(changes)
    return RunOutcome(**values)  # type: ignore[arg-type]


async def test_sites_of_the_registry_without_a_row_get_the_defaults(pool: asyncpg.Pool) -> None:
    await _register(pool, "battery-1", "north")
    await _register(pool, "battery-2", "south")
    await pool.execute(
        "INSERT INTO flux.mg_sites (name, timezone, import_limit_kw, export_limit_kw, site_meter)"
        " VALUES ('south', 'America/Toronto', 40, 10, 'meter-1'), ('planned', 'Europe/Paris', NULL, NULL, NULL)"
    )
    repository = OptimizerRepository(pool)

    every = await repository.sites()
    asked = await repository.sites(["north", "south", "nowhere"])

    assert sorted(every.found) == ["north", "planned", "south"]
    assert every.found["north"] == SiteParameters.defaults("north")
    assert every.found["north"].zone.key == "UTC" and not every.found["north"].described
    south = every.found["south"]
    assert (south.timezone, south.import_limit_kw, south.export_limit_kw, south.site_meter, south.described) == (
        "America/Toronto",
        40.0,
        10.0,
        "meter-1",
        True,
    )
    assert sorted(asked.found) == ["north", "south"]  # "nowhere" is in neither table: absent, for the caller
    assert every.refused == {}


async def test_the_tariff_in_force_is_the_latest_that_covers_the_site(pool: asyncpg.Pool) -> None:
    repository = OptimizerRepository(pool)
    start = datetime(2026, 6, 2, tzinfo=UTC)
    everywhere = compile_tariff(FlatTariffRequest(flat_price=0.08, date=start), now=NOW)
    for_south = compile_tariff(
        TimeOfUseTariffRequest(date=start, start_peak=start.replace(hour=16), stop_peak=start.replace(hour=21)),
        now=NOW,
        scope=["south"],
    )
    other_day = compile_tariff(FlatTariffRequest(flat_price=0.5, date=start + timedelta(days=1)), now=NOW)

    first = await repository.store_tariff(everywhere, {"north": day_prices(everywhere, "UTC")})
    second = await repository.store_tariff(for_south, {"south": day_prices(for_south, "America/Toronto")})
    await repository.store_tariff(other_day, {})
    in_force = await repository.tariffs_in_force(["north", "south", "east"], DAY)

    assert in_force["north"].tariff_id == first.tariff_id and in_force["east"].tariff_id == first.tariff_id
    assert in_force["south"].tariff_id == second.tariff_id
    assert in_force["south"].tariff == for_south  # read back as the same definition
    assert in_force["south"].prices["south"][96] == 0.25 and len(in_force["south"].prices["south"]) == 144
    assert await repository.tariffs_in_force(["north"], DAY + timedelta(days=2)) == {}


async def test_a_finished_run_stores_its_plans_as_the_next_versions_and_supersedes_the_last_run(
    pool: asyncpg.Pool,
) -> None:
    repository = OptimizerRepository(pool)
    first = await repository.start_run(_start(scope=["north"]))
    violations = [{"limit": "import_limit_kw", "site": "north", "device": None, "step": 3, "amount": 1.25}]

    first_versions = await repository.finish_run(
        first.run_id,
        _optimal(violations=violations),
        [PlanWrite("north", "battery-1", NOW, STEP, [5.0, -5.0, 0.0])],
    )
    second = await repository.start_run(_start(scope=["north"], started_at=NOW + timedelta(minutes=10)))
    second_versions = await repository.finish_run(
        second.run_id,
        _optimal(finished_at=NOW + timedelta(minutes=10, seconds=1)),
        [
            PlanWrite("north", "battery-1", NOW + STEP, STEP, [1.0, 2.0]),
            PlanWrite("north", "battery-2", NOW + STEP, STEP, [3.0, 4.0]),
        ],
    )
    runs = await repository.runs()

    assert first.state is RunState.RUNNING and first.finished_at is None
    assert [(version.device, version.version) for version in first_versions or []] == [("battery-1", 1)]
    assert sorted((version.device, version.version) for version in second_versions or []) == [
        ("battery-1", 2),
        ("battery-2", 1),
    ]
    assert [run.run_id for run in runs] == [second.run_id, first.run_id]
    assert runs[0].state is RunState.OPTIMAL and (runs[0].build_ms, runs[0].solve_ms) == (2.0, 3.0)
    assert runs[1].state is RunState.SUPERSEDED and runs[1].reason == f"superseded by run {second.run_id}"
    assert runs[1].violations == violations and runs[1].scope == ("north",)
    [only] = await repository.runs(run_id=first.run_id)
    assert only.run_id == first.run_id
    [plan] = [plan for plan in await repository.plans_of_run(second.run_id) if plan.device == "battery-1"]
    assert plan.version == 2 and plan.setpoints_kw == [1.0, 2.0]
    assert plan.step_starts() == [NOW + STEP, NOW + 2 * STEP] and plan.step_ends()[-1] == NOW + 3 * STEP
    assert plan.ends_at == NOW + 3 * STEP


async def test_runs_of_another_scope_kind_or_day_are_not_superseded(pool: asyncpg.Pool) -> None:
    repository = OptimizerRepository(pool)
    day_ahead = await repository.start_run(_start(RunKind.DAY_AHEAD, None, day=DAY, iteration=0))
    await repository.finish_run(day_ahead.run_id, _optimal())
    other_day = await repository.start_run(_start(RunKind.DAY_AHEAD, None, day=DAY + timedelta(days=1), iteration=0))
    await repository.finish_run(other_day.run_id, _optimal())
    mpc_south = await repository.start_run(_start(RunKind.MPC, ["south"]))
    await repository.finish_run(mpc_south.run_id, _optimal())
    later_round = await repository.start_run(
        _start(RunKind.DAY_AHEAD, None, day=DAY, iteration=1, started_at=NOW + timedelta(minutes=1))
    )
    await repository.finish_run(later_round.run_id, _optimal(finished_at=NOW + timedelta(minutes=2)))

    states = {run.run_id: run.state for run in await repository.runs()}

    assert states == {
        day_ahead.run_id: RunState.SUPERSEDED,  # a later iteration for the same date replaces it
        other_day.run_id: RunState.OPTIMAL,
        mpc_south.run_id: RunState.OPTIMAL,
        later_round.run_id: RunState.OPTIMAL,
    }


async def test_a_run_stopped_while_solving_stores_nothing_and_its_plans_leave_force(pool: asyncpg.Pool) -> None:
    repository = OptimizerRepository(pool)
    finished = await repository.start_run(_start(scope=["north"]))
    await repository.finish_run(finished.run_id, _optimal(), [PlanWrite("north", "battery-1", NOW, STEP, [5.0] * 6)])
    solving = await repository.start_run(_start(scope=["north"], started_at=NOW + timedelta(seconds=5)))

    stopped = await repository.stop_runs(RunKind.MPC, ["north"], NOW + timedelta(seconds=10))
    late = await repository.finish_run(
        solving.run_id, _optimal(), [PlanWrite("north", "battery-1", NOW, STEP, [9.0] * 6)]
    )

    assert sorted(stopped) == sorted([finished.run_id, solving.run_id])
    assert late is None
    assert await repository.plans_of_run(solving.run_id) == []
    assert await repository.plans_in_force(NOW + STEP) == []
    runs = {run.run_id: run for run in await repository.runs()}
    assert runs[finished.run_id].finished_at == NOW + timedelta(seconds=1)  # its own finish is kept
    assert runs[solving.run_id].finished_at == NOW + timedelta(seconds=10)
    assert {run.state for run in runs.values()} == {RunState.STOPPED}


async def test_each_step_expires_at_its_end_and_only_the_latest_version_counts(pool: asyncpg.Pool) -> None:
    repository = OptimizerRepository(pool)
    long_run = await repository.start_run(_start(scope=["north"]))
    await repository.finish_run(long_run.run_id, _optimal(), [PlanWrite("north", "battery-1", NOW, STEP, [5.0] * 12)])
    short_run = await repository.start_run(_start(scope=["north"], started_at=NOW + timedelta(seconds=30)))
    await repository.finish_run(
        short_run.run_id,
        _optimal(finished_at=NOW + timedelta(seconds=31)),
        [PlanWrite("north", "battery-1", NOW, STEP, [-2.0, -3.0])],
    )

    [current] = await repository.plans_in_force(NOW + timedelta(minutes=15))
    after_its_end = await repository.plans_in_force(NOW + 2 * STEP)

    assert (current.version, current.run_id) == (2, short_run.run_id)
    assert current.setpoint_at(NOW + timedelta(minutes=15)) == -3.0
    assert current.setpoint_at(NOW + 2 * STEP) is None  # the last step ended: nothing in force
    assert after_its_end == []  # version 1 reached further, but version 2 replaced it entirely


async def test_runs_finishing_at_once_never_share_a_version(pool: asyncpg.Pool) -> None:
    repository = OptimizerRepository(pool)
    runs = [await repository.start_run(_start(scope=[f"site-{index}"])) for index in range(6)]

    stored = await asyncio.gather(
        *(
            repository.finish_run(run.run_id, _optimal(), [PlanWrite("shared", "battery-1", NOW, STEP, [float(index)])])
            for index, run in enumerate(runs)
        )
    )

    assert sorted(versions[0].version for versions in stored if versions) == [1, 2, 3, 4, 5, 6]


async def test_a_fleet_of_plans_is_written_in_one_call(pool: asyncpg.Pool) -> None:
    repository = OptimizerRepository(pool)
    run = await repository.start_run(_start(RunKind.DAY_AHEAD, None, day=DAY))
    plans = [
        PlanWrite(f"site-{index:03d}", f"battery-{index:03d}", NOW, STEP, [index / 10] * 144) for index in range(200)
    ]

    versions = await repository.finish_run(run.run_id, _optimal(), plans)
    stored = await repository.plans_of_run(run.run_id)

    assert versions is not None and len(versions) == 200
    assert len(stored) == 200 and stored[7].setpoints_kw == [0.7] * 144 and len(stored[7].step_ends()) == 144
    assert stored[7].ends_at == NOW + 144 * STEP and stored[7].step == STEP


@pytest.mark.parametrize(
    ("starts_at", "step", "setpoints"),
    [
        (NOW, STEP, []),
        (NOW, timedelta(0), [1.0]),
        (NOW, timedelta(seconds=-600), [1.0]),
        (NOW, timedelta(seconds=0.5), [1.0]),
        (NOW.replace(tzinfo=None), STEP, [1.0]),
        (NOW, STEP, [1.0, float("nan")]),
    ],
    ids=["empty", "zero-step", "negative-step", "fractional-step", "naive", "nan"],
)
def test_a_malformed_plan_is_refused_before_the_database(
    starts_at: datetime, step: timedelta, setpoints: list[float]
) -> None:
    with pytest.raises(ValueError, match="plan of battery-1"):
        PlanWrite("north", "battery-1", starts_at, step, setpoints)


def test_a_step_expires_at_its_end() -> None:
    plan = PlanWrite("north", "battery-1", NOW, STEP, [1.0, 2.0])

    assert plan.setpoint_at(NOW - timedelta(microseconds=1)) is None
    assert plan.setpoint_at(NOW) == 1.0 and plan.setpoint_at(NOW + STEP - timedelta(microseconds=1)) == 1.0
    assert plan.setpoint_at(NOW + STEP) == 2.0
    assert plan.setpoint_at(NOW + 2 * STEP) is None


async def test_two_plans_for_one_device_in_a_run_are_refused(pool: asyncpg.Pool) -> None:
    repository = OptimizerRepository(pool)
    run = await repository.start_run(_start())
    twice = [PlanWrite("north", "battery-1", NOW, STEP, [1.0])] * 2

    with pytest.raises(ValueError, match="one plan per site and device"):
        await repository.finish_run(run.run_id, _optimal(), twice)


def test_equal_inputs_have_equal_digests_whatever_their_key_order() -> None:
    first = digest_inputs({"prices": [0.1, 0.2], "start": NOW, "site": "north"})
    second = digest_inputs({"site": "north", "start": NOW, "prices": [0.1, 0.2]})

    assert first == second and len(first) == 64
    assert digest_inputs({"site": "north", "start": NOW, "prices": [0.1, 0.3]}) != first
