"""The battery-arbitrage scenario format: every scenario solved to its optimum, every constraint checked.

The optimum each result is compared with comes from `reference_optimum`, the scenario README's equations
typed one by one into highspy's modelling layer (with binaries for the exclusivity rule where asked): a
second formulation that shares no code with optimizer.formulation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import highspy
import numpy as np
import pytest

from optimizer.problem import ProblemError
from optimizer.scenario import problem_from_scenario, result_document, schedule_errors
from optimizer.solver import solve

SCENARIOS = Path(__file__).resolve().parents[3] / "bench" / "scenarios"
# The peer's costs in the scenario README (EMHASS 0.18.7, HiGHS MILP with its default 1 % gap).
PEER_COSTS = {"day96": -2.455930, "week672": -8.077234}


def reference_optimum(scenario: dict[str, Any], *, exclusive: bool) -> float:
    """min cost subject to the README's constraints, as written there."""
    steps = scenario["num_steps"]
    dt = scenario["time_step_minutes"] / 60
    battery = scenario["battery"]
    grid = scenario["grid"]
    capacity = battery["capacity_kwh"]
    highs = highspy.Highs()
    highs.silent()
    highs.setOptionValue("mip_rel_gap", 1e-9)
    charge = [highs.addVariable(0, battery["max_charge_kw"]) for _ in range(steps)]
    discharge = [highs.addVariable(0, battery["max_discharge_kw"]) for _ in range(steps)]
    imported = [highs.addVariable(0, grid["import_limit_kw"]) for _ in range(steps)]
    exported = [highs.addVariable(0, grid["export_limit_kw"]) for _ in range(steps)]
    energy = [
        highs.addVariable(capacity * battery["soc_min_pct"] / 100, capacity * battery["soc_max_pct"] / 100)
        for _ in range(steps)
    ]
    previous: Any = capacity * battery["soc_initial_pct"] / 100
    for t in range(steps):
        highs.addConstr(
            energy[t]
            == previous
            + battery["charge_efficiency"] * charge[t] * dt
            - discharge[t] * dt / battery["discharge_efficiency"]
        )
        previous = energy[t]
        highs.addConstr(
            imported[t] - exported[t] == scenario["load_kw"][t] - scenario["pv_kw"][t] + charge[t] - discharge[t]
        )
        if exclusive:
            charging = highs.addBinary()
            importing = highs.addBinary()
            highs.addConstr(charge[t] <= battery["max_charge_kw"] * charging)
            highs.addConstr(discharge[t] <= battery["max_discharge_kw"] * (1 - charging))
            highs.addConstr(imported[t] <= grid["import_limit_kw"] * importing)
            highs.addConstr(exported[t] <= grid["export_limit_kw"] * (1 - importing))
    highs.addConstr(energy[-1] == capacity * battery["soc_final_pct"] / 100)
    highs.minimize(
        sum(
            (imported[t] * scenario["import_price"][t] - exported[t] * scenario["export_price"][t]) * dt
            for t in range(steps)
        )
    )
    assert highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return float(highs.getInfo().objective_function_value)


def solved(scenario: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(scenario).encode()
    plan = solve(problem_from_scenario(scenario))
    return result_document(scenario=scenario, scenario_bytes=raw, plan=plan, build_s=[], solve_s=[])


def negative_price_scenario(seed: int) -> dict[str, Any]:
    """A day at 30 min with negative prices at midday (export never dearer than import, as the format says)."""
    generator = np.random.default_rng(seed)
    steps = 48
    hours = np.arange(steps) / 2
    import_price = 0.25 + 0.15 * np.cos((hours - 19) / 24 * 2 * np.pi) + generator.normal(0, 0.05, steps)
    import_price[20:30] -= 0.45
    export_price = import_price - generator.uniform(0.0, 0.08, steps)
    return {
        "format": "bess-arbitrage-scenario/1",
        "name": f"negative-{seed}",
        "time_step_minutes": 30,
        "num_steps": steps,
        "start_time_utc": "2026-06-01T00:00:00Z",
        "currency": "EUR",
        "import_price": import_price.round(5).tolist(),
        "export_price": export_price.round(5).tolist(),
        "load_kw": generator.uniform(0.3, 3.0, steps).round(4).tolist(),
        "pv_kw": np.clip(6 * np.sin((hours - 6) / 12 * np.pi), 0, None).round(4).tolist(),
        "battery": {
            "capacity_kwh": 10.0,
            "max_charge_kw": 4.0,
            "max_discharge_kw": 4.0,
            "charge_efficiency": 0.92,
            "discharge_efficiency": 0.94,
            "soc_min_pct": 10.0,
            "soc_max_pct": 90.0,
            "soc_initial_pct": 40.0,
            "soc_final_pct": 50.0,
        },
        "grid": {"import_limit_kw": 12.0, "export_limit_kw": 12.0},
    }


def scenario_names() -> list[str]:
    return sorted(
        path.stem
        for path in SCENARIOS.glob("*.json")
        if json.loads(path.read_text(encoding="utf-8")).get("format") == "bess-arbitrage-scenario/1"
    )


def test_the_scenarios_are_there() -> None:
    assert {"day96", "week672", "negative48"} <= set(scenario_names())


@pytest.mark.parametrize("name", scenario_names())
def test_each_scenario_is_solved_to_its_optimum_meeting_every_constraint(name: str) -> None:
    scenario = json.loads((SCENARIOS / f"{name}.json").read_text(encoding="utf-8"))
    result = solved(scenario)
    assert result["status"] == "optimal"
    assert schedule_errors(scenario, result) == []
    assert result["violations"] == []
    # The README: with prices >= 0 and export never above import, the LP reaches the MILP's cost.
    prices = scenario["import_price"] + scenario["export_price"]
    exclusive = min(prices) < 0 or any(
        sell > buy for buy, sell in zip(scenario["import_price"], scenario["export_price"], strict=True)
    )
    optimum = reference_optimum(scenario, exclusive=exclusive)
    assert result["objective"]["cost"] == pytest.approx(optimum, rel=1e-6)
    recorded = json.loads((SCENARIOS / "reference-optima.json").read_text(encoding="utf-8"))
    assert recorded[name] == pytest.approx(optimum, rel=1e-9)
    if name in PEER_COSTS:
        assert result["objective"]["cost"] <= PEER_COSTS[name]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_negative_prices_reach_the_exclusive_optimum(seed: int) -> None:
    scenario = negative_price_scenario(seed)
    result = solved(scenario)
    assert schedule_errors(scenario, result) == []  # includes: never charging and discharging at once
    exclusive = reference_optimum(scenario, exclusive=True)
    relaxed = reference_optimum(scenario, exclusive=False)
    assert relaxed < exclusive - 1e-6  # the LP alone would "earn" by burning energy: binaries were needed
    assert result["objective"]["cost"] == pytest.approx(exclusive, rel=1e-6)


def test_the_checker_finds_each_broken_constraint() -> None:
    scenario = json.loads((SCENARIOS / "day96.json").read_text(encoding="utf-8"))
    valid = solved(scenario)
    assert schedule_errors(scenario, valid) == []
    step = int(np.argmax(valid["schedule"]["battery_charge_kw"]))

    def broken(change: Any) -> list[str]:
        result = copy.deepcopy(valid)
        change(result)
        return schedule_errors(scenario, result)

    def both(result: dict[str, Any]) -> None:
        result["schedule"]["battery_discharge_kw"][step] = 0.5

    def soc(result: dict[str, Any]) -> None:
        result["schedule"]["soc_pct"][5] += 0.01

    def cost(result: dict[str, Any]) -> None:
        result["objective"]["cost"] -= 0.001

    def over_import(result: dict[str, Any]) -> None:
        result["schedule"]["grid_import_kw"][3] = 13.0

    def short(result: dict[str, Any]) -> None:
        result["schedule"]["grid_export_kw"].pop()

    assert any("at once" in error for error in broken(both))
    assert any("soc_pct[5]" in error for error in broken(soc))
    assert any("objective.cost" in error for error in broken(cost))
    assert any("grid_import_kw 13.0 outside" in error for error in broken(over_import))
    assert broken(short) == ["schedule.grid_export_kw has 95 entries, not 96"]


def test_a_malformed_scenario_names_its_field() -> None:
    scenario = json.loads((SCENARIOS / "day96.json").read_text(encoding="utf-8"))
    del scenario["battery"]["capacity_kwh"]
    with pytest.raises(ProblemError) as missing:
        problem_from_scenario(scenario)
    assert missing.value.field == "battery.capacity_kwh"
    scenario = json.loads((SCENARIOS / "day96.json").read_text(encoding="utf-8"))
    scenario["pv_kw"] = scenario["pv_kw"][:-1]
    with pytest.raises(ProblemError) as short:
        problem_from_scenario(scenario)
    assert short.value.field == "pv_kw"
