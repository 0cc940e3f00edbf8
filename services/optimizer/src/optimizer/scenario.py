"""The battery-arbitrage scenario and result files (bess-arbitrage-scenario/1, bess-arbitrage-result/1).

`problem_from_scenario` turns a scenario document into a `SiteProblem` (the format's grid limits, SoC bounds
and final SoC are hard; here they are soft, priced far above any price, so a scenario that can meet them
gets a plan that does, and one that cannot gets a plan with its violations listed instead of no answer).
`result_document` writes a plan in the result format; `schedule_errors` checks a result against every
constraint of the format, written from the format's equations alone so that it shares nothing with the
formulation it checks. See docs in services/optimizer/README.md.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from optimizer.problem import Battery, Plan, ProblemError, SiteProblem, TargetMode

__all__ = [
    "RESULT_FORMAT",
    "SCENARIO_FORMAT",
    "TOLERANCE",
    "problem_from_scenario",
    "result_document",
    "scenario_cost",
    "schedule_errors",
]

SCENARIO_FORMAT = "bess-arbitrage-scenario/1"
RESULT_FORMAT = "bess-arbitrage-result/1"
TOLERANCE = 1e-6  # kW, kWh and SoC points, as the format checks
BATTERY_NAME = "battery"


def problem_from_scenario(scenario: Mapping[str, Any]) -> SiteProblem:
    """The site problem of a scenario document; a missing or malformed field raises `ProblemError`."""
    if scenario.get("format") != SCENARIO_FORMAT:
        raise ProblemError("format", f"must be {SCENARIO_FORMAT!r}")
    battery = _section(scenario, "battery")
    grid = _section(scenario, "grid")
    steps = int(_number(scenario, "num_steps", "num_steps"))
    try:
        start = datetime.fromisoformat(str(scenario.get("start_time_utc", "")).replace("Z", "+00:00"))
    except ValueError as error:
        raise ProblemError("start_time_utc", "must be an ISO 8601 time") from error
    series = {}
    for key in ("import_price", "export_price", "load_kw", "pv_kw"):
        values = scenario.get(key)
        if not isinstance(values, list):
            raise ProblemError(key, "must be a list of numbers")
        if len(values) != steps:
            raise ProblemError(key, f"has {len(values)} entries, num_steps is {steps}")
        series[key] = values
    problem = SiteProblem.create(
        start=start,
        step_hours=_number(scenario, "time_step_minutes", "time_step_minutes") / 60,
        import_price=series["import_price"],
        export_price=series["export_price"],
        load_kw=series["load_kw"],
        pv_kw=series["pv_kw"],
        batteries=[
            Battery(
                name=BATTERY_NAME,
                **{
                    name: _number(battery, key, f"battery.{key}")
                    for name, key in (
                        ("capacity_kwh", "capacity_kwh"),
                        ("max_charge_kw", "max_charge_kw"),
                        ("max_discharge_kw", "max_discharge_kw"),
                        ("charge_efficiency", "charge_efficiency"),
                        ("discharge_efficiency", "discharge_efficiency"),
                        ("soc_min_pct", "soc_min_pct"),
                        ("soc_max_pct", "soc_max_pct"),
                        ("soc_initial_pct", "soc_initial_pct"),
                        ("soc_target_pct", "soc_final_pct"),
                    )
                },
                target_mode=TargetMode.EXACT,
            )
        ],
        import_limit_kw=_number(grid, "import_limit_kw", "grid.import_limit_kw"),
        export_limit_kw=_number(grid, "export_limit_kw", "grid.export_limit_kw"),
    )
    return problem


def _section(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = document.get(key)
    if not isinstance(section, Mapping):
        raise ProblemError(key, "is missing")
    return section


def _number(section: Mapping[str, Any], key: str, path: str) -> float:
    if key not in section:
        raise ProblemError(path, "is missing")
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProblemError(path, "must be a number")
    return float(value)


def result_document(
    *,
    scenario: Mapping[str, Any],
    scenario_bytes: bytes,
    plan: Plan,
    build_s: Sequence[float],
    solve_s: Sequence[float],
    optimizer: str = "gridloop",
) -> dict[str, Any]:
    """The result file for `plan`: its schedule, its cost recomputed from the schedule, and the timings of
    the repetitions (seconds, after one warm-up)."""
    battery = plan.batteries[0]
    schedule = {
        "battery_charge_kw": battery.charge_kw.tolist(),
        "battery_discharge_kw": battery.discharge_kw.tolist(),
        "grid_import_kw": plan.grid_import_kw.tolist(),
        "grid_export_kw": plan.grid_export_kw.tolist(),
        "soc_pct": battery.soc_pct.tolist(),
    }
    return {
        "format": RESULT_FORMAT,
        "optimizer": optimizer,
        "scenario": scenario.get("name", ""),
        "scenario_sha256": hashlib.sha256(scenario_bytes).hexdigest(),
        "schedule": schedule,
        "status": plan.status.value,
        "objective": {"cost": scenario_cost(scenario, schedule)},
        "violations": [
            {
                "limit": violation.limit.value,
                "step": violation.step,
                "amount": violation.amount,
                "unit": violation.unit,
                "penalty": violation.penalty,
            }
            for violation in plan.violations
        ],
        "timing": {
            "build_s": list(build_s),
            "solve_s": list(solve_s),
            "median_build_s": statistics.median(build_s) if build_s else None,
            "median_solve_s": statistics.median(solve_s) if solve_s else None,
        },
    }


def scenario_cost(scenario: Mapping[str, Any], schedule: Mapping[str, Sequence[float]]) -> float:
    """sum_t (imp[t]*import_price[t] - exp[t]*export_price[t]) * dt, from the schedule."""
    dt = float(scenario["time_step_minutes"]) / 60
    return math.fsum(
        (imported * buy - exported * sell) * dt
        for imported, exported, buy, sell in zip(
            schedule["grid_import_kw"],
            schedule["grid_export_kw"],
            scenario["import_price"],
            scenario["export_price"],
            strict=True,
        )
    )


def schedule_errors(
    scenario: Mapping[str, Any], result: Mapping[str, Any], *, tolerance: float = TOLERANCE
) -> list[str]:
    """Every constraint of the scenario format the result's schedule breaks (empty: a valid schedule).

    The SoC is recomputed from the charge and discharge powers, as the format prescribes, and compared with
    the reported one; bounds are checked on the recomputed path.
    """
    errors: list[str] = []
    steps = int(scenario["num_steps"])
    dt = float(scenario["time_step_minutes"]) / 60
    battery = scenario["battery"]
    grid = scenario["grid"]
    schedule = result["schedule"]
    lengths = {
        "battery_charge_kw": steps,
        "battery_discharge_kw": steps,
        "grid_import_kw": steps,
        "grid_export_kw": steps,
        "soc_pct": steps + 1,
    }
    for key, length in lengths.items():
        if len(schedule.get(key, ())) != length:
            errors.append(f"schedule.{key} has {len(schedule.get(key, ()))} entries, not {length}")
    if errors:
        return errors
    capacity = float(battery["capacity_kwh"])
    eta_charge = float(battery["charge_efficiency"])
    eta_discharge = float(battery["discharge_efficiency"])
    energy = capacity * float(battery["soc_initial_pct"]) / 100
    low = capacity * float(battery["soc_min_pct"]) / 100
    high = capacity * float(battery["soc_max_pct"]) / 100
    if abs(float(schedule["soc_pct"][0]) - float(battery["soc_initial_pct"])) > tolerance:
        errors.append(f"soc_pct[0] {schedule['soc_pct'][0]} is not the initial {battery['soc_initial_pct']}")
    for t in range(steps):
        charge = float(schedule["battery_charge_kw"][t])
        discharge = float(schedule["battery_discharge_kw"][t])
        imported = float(schedule["grid_import_kw"][t])
        exported = float(schedule["grid_export_kw"][t])
        for name, value, bound in (
            ("battery_charge_kw", charge, float(battery["max_charge_kw"])),
            ("battery_discharge_kw", discharge, float(battery["max_discharge_kw"])),
            ("grid_import_kw", imported, float(grid["import_limit_kw"])),
            ("grid_export_kw", exported, float(grid["export_limit_kw"])),
        ):
            if value < -tolerance or value > bound + tolerance:
                errors.append(f"step {t}: {name} {value} outside [0, {bound}]")
        if charge > tolerance and discharge > tolerance:
            errors.append(f"step {t}: charges {charge} and discharges {discharge} kW at once")
        if imported > tolerance and exported > tolerance:
            errors.append(f"step {t}: imports {imported} and exports {exported} kW at once")
        balance = float(scenario["load_kw"][t]) - float(scenario["pv_kw"][t]) + charge - discharge
        if abs(imported - exported - balance) > tolerance:
            errors.append(f"step {t}: import - export = {imported - exported}, the balance needs {balance}")
        energy += eta_charge * charge * dt - discharge * dt / eta_discharge
        if energy < low - tolerance or energy > high + tolerance:
            errors.append(f"step {t}: energy {energy} kWh outside [{low}, {high}]")
        reported = float(schedule["soc_pct"][t + 1]) * capacity / 100
        if abs(reported - energy) > tolerance:
            errors.append(f"step {t}: soc_pct[{t + 1}] says {reported} kWh, the powers give {energy}")
    final = capacity * float(battery["soc_final_pct"]) / 100
    if abs(energy - final) > tolerance:
        errors.append(f"final energy {energy} kWh is not the target {final}")
    cost = scenario_cost(scenario, schedule)
    reported_cost = float(result.get("objective", {}).get("cost", math.nan))
    if not abs(reported_cost - cost) <= tolerance * max(1.0, abs(cost)):
        errors.append(f"objective.cost {reported_cost} is not the schedule's cost {cost}")
    return errors
