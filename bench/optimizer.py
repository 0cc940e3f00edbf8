"""Benchmark of the optimizer core: every battery-arbitrage scenario, and an MPC re-plan of 1,000 sites.

Scenarios: every bess-arbitrage-scenario/1 file in bench/scenarios/, one warm-up and ten repetitions, each
building its model from the scenario's arrays afresh (a new PlanSolver) and solving it, build and solve timed
apart; each schedule is checked against every constraint of the format (optimizer.scenario.schedule_errors)
and its cost against the recorded optimum (bench/scenarios/reference-optima.json). Beside them: the same
problem re-solved on a kept model (an MPC tick with nothing changed), and the figures of EMHASS 0.18.7 from
the scenario README (measured there on a 2-core machine like this one, not in this run).

Fleet: 1,000 sites with one 13.5 kWh / 5 kW battery each, 96 steps of 15 min, each with its own prices, load,
PV and SoC. One PlanSolver plans them all (one model for the shape, updated in place per site), then re-plans
all of them one tick later (prices, forecasts and SoC moved on): the figure is that re-plan, wall and CPU time
of this one process (HiGHS runs its simplex on one thread).

Aims (issue 17): day96 build + solve < 10 ms, week672 < 150 ms, the 1,000-site re-plan < 1.5 s on one core.
Figures are printed and written to bench/results/optimizer.json. Run: `uv run python bench/optimizer.py`.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import highspy
import numpy as np

# This script is named like the package it measures, and Python puts the script's folder first on sys.path,
# where "optimizer" would be this file: drop that folder before importing the package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from optimizer.problem import Battery, SiteProblem, TargetMode  # noqa: E402
from optimizer.scenario import (  # noqa: E402
    SCENARIO_FORMAT,
    problem_from_scenario,
    result_document,
    schedule_errors,
)
from optimizer.solver import PlanSolver  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "bench" / "scenarios"
RESULTS = ROOT / "bench" / "results" / "optimizer.json"
REPETITIONS = 10
SITES = 1000
# The scenario README's peer: optimal cost as EMHASS reports it, cold median (built and solved), warm.
EMHASS = {"day96": (-2.455930, 0.50, 0.079), "week672": (-8.077234, 6.3, 1.47)}
AIMS_S = {"day96": 0.010, "week672": 0.150}
FLEET_AIM_S = 1.5


def scenario_figures(path: Path, optima: dict[str, float]) -> dict[str, Any]:
    scenario_bytes = path.read_bytes()
    scenario = json.loads(scenario_bytes)
    problem = problem_from_scenario(scenario)
    plans = [PlanSolver().solve(problem) for _ in range(REPETITIONS + 1)][1:]
    build_s = [plan.build_s for plan in plans]
    solve_s = [plan.solve_s for plan in plans]
    total_s = [plan.build_s + plan.solve_s for plan in plans]
    result = result_document(
        scenario=scenario, scenario_bytes=scenario_bytes, plan=plans[-1], build_s=build_s, solve_s=solve_s
    )
    errors = schedule_errors(scenario, result)
    kept = PlanSolver()
    kept.solve(problem)
    warm = [kept.solve(problem) for _ in range(REPETITIONS)]
    name = scenario.get("name", path.stem)
    cost = result["objective"]["cost"]
    optimum = optima.get(name)
    return {
        "scenario": name,
        "steps": problem.steps,
        "status": result["status"],
        "cost": cost,
        "optimum": optimum,
        "relative_gap": None if optimum is None else abs(cost - optimum) / max(1e-12, abs(optimum)),
        "constraint_errors": errors,
        "violations": len(result["violations"]),
        "binaries": plans[-1].binaries,
        "median_build_s": statistics.median(build_s),
        "median_solve_s": statistics.median(solve_s),
        "median_total_s": statistics.median(total_s),
        "max_total_s": max(total_s),
        "warm_median_s": statistics.median(plan.build_s + plan.solve_s for plan in warm),
        "aim_total_s": AIMS_S.get(name),
        "emhass": None
        if name not in EMHASS
        else dict(zip(("cost", "cold_median_s", "warm_s"), EMHASS[name], strict=True)),
    }


def fleet(generator: np.random.Generator, tick: int) -> list[SiteProblem]:
    """1,000 sites one tick (15 min) apart from tick 0: the market price moves on, each site's tariff
    markup, load and PV forecasts, and SoC are its own."""
    steps = 96
    start = datetime(2026, 6, 1, tzinfo=UTC) + timedelta(minutes=15 * tick)
    hours = (np.arange(steps) + tick) / 4
    market = 0.12 + 0.08 * np.sin((hours - 9) / 24 * 2 * np.pi) + 0.15 * np.exp(-(((hours % 24) - 19) ** 2) / 2)
    problems = []
    for _ in range(SITES):
        import_price = market + generator.uniform(0.05, 0.15) + generator.normal(0, 0.01, steps)
        load = generator.uniform(0.2, 1.0) + generator.gamma(2.0, 0.4, steps)
        pv = np.clip(generator.uniform(2, 8) * np.sin(((hours % 24) - 6) / 12 * np.pi), 0, None)
        problems.append(
            SiteProblem.create(
                start=start,
                step_hours=0.25,
                import_price=import_price,
                export_price=market * 0.6,
                load_kw=load,
                pv_kw=pv,
                import_limit_kw=15.0,
                export_limit_kw=15.0,
                batteries=[
                    Battery(
                        name="battery",
                        capacity_kwh=13.5,
                        max_charge_kw=5.0,
                        max_discharge_kw=5.0,
                        soc_initial_pct=float(generator.uniform(15, 90)),
                        soc_min_pct=10.0,
                        reserve_pct=20.0,
                        soc_target_pct=50.0,
                        target_mode=TargetMode.AT_LEAST,
                    )
                ],
            )
        )
    return problems


def fleet_figures() -> dict[str, Any]:
    generator = np.random.default_rng(20261207)
    first, second = fleet(generator, 0), fleet(generator, 1)
    solver = PlanSolver()
    started, cpu_started = time.perf_counter(), time.process_time()
    for problem in first:
        solver.solve(problem)
    first_s, first_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    started, cpu_started = time.perf_counter(), time.process_time()
    plans = [solver.solve(problem) for problem in second]
    replan_s, replan_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    per_site = sorted(plan.build_s + plan.solve_s for plan in plans)
    # The same re-plan's first 100 sites each on a model built afresh: what keeping the model saves.
    cold = [PlanSolver().solve(problem) for problem in second[:100]]
    return {
        "sites": SITES,
        "steps": 96,
        "models": solver.model_count,
        "first_plan_s": first_s,
        "first_plan_cpu_s": first_cpu_s,
        "replan_s": replan_s,
        "replan_cpu_s": replan_cpu_s,
        "per_site_median_ms": statistics.median(per_site) * 1e3,
        "per_site_p99_ms": per_site[int(0.99 * len(per_site))] * 1e3,
        "per_site_cold_median_ms": statistics.median(plan.build_s + plan.solve_s for plan in cold) * 1e3,
        "median_iterations": statistics.median(plan.iterations for plan in plans),
        "median_iterations_cold": statistics.median(plan.iterations for plan in cold),
        "statuses": sorted({plan.status.value for plan in plans}),
        "aim_s": FLEET_AIM_S,
    }


def main() -> None:
    optima_path = SCENARIOS / "reference-optima.json"
    optima = json.loads(optima_path.read_text(encoding="utf-8")) if optima_path.exists() else {}
    scenarios = []
    for path in sorted(SCENARIOS.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(document, dict) and document.get("format") == SCENARIO_FORMAT:
            scenarios.append(scenario_figures(path, optima))
    print(f"optimizer: HiGHS {highspy.Highs().version()}, {REPETITIONS} repetitions after a warm-up")
    print(
        f"{'scenario':<10} {'cost':>11} {'optimum':>11} {'EMHASS':>10}  build ms  solve ms  total ms (aim)  warm ms"
        "  EMHASS cold / warm  checks"
    )
    for figures in scenarios:
        emhass = figures["emhass"] or {}
        aim = figures["aim_total_s"]
        checks = "ok" if not figures["constraint_errors"] and (figures["relative_gap"] or 0) <= 1e-6 else "FAILED"
        print(
            f"{figures['scenario']:<10} {figures['cost']:>11.6f}"
            f" {figures['optimum'] if figures['optimum'] is not None else float('nan'):>11.6f}"
            f" {emhass.get('cost', float('nan')):>10.6f}"
            f"  {figures['median_build_s'] * 1e3:>8.2f}  {figures['median_solve_s'] * 1e3:>8.2f}"
            f"  {figures['median_total_s'] * 1e3:>8.2f} ({aim * 1e3 if aim else float('nan'):.0f})"
            f"  {figures['warm_median_s'] * 1e3:>7.2f}"
            f"  {emhass.get('cold_median_s', float('nan')):>6.2f} s / {emhass.get('warm_s', float('nan')):.3f} s"
            f"  {checks}"
        )
        for error in figures["constraint_errors"][:5]:
            print(f"    {error}")
    fleet_result = fleet_figures()
    print(
        f"fleet: {fleet_result['sites']} sites x {fleet_result['steps']} steps, one model per shape"
        f" ({fleet_result['models']}): first plan {fleet_result['first_plan_s']:.2f} s, re-plan"
        f" {fleet_result['replan_s']:.2f} s wall / {fleet_result['replan_cpu_s']:.2f} s CPU (aim {FLEET_AIM_S} s),"
        f" per site median {fleet_result['per_site_median_ms']:.2f} ms, p99 {fleet_result['per_site_p99_ms']:.2f} ms"
        f" ({fleet_result['median_iterations']:.0f} simplex iterations; on a fresh model"
        f" {fleet_result['per_site_cold_median_ms']:.2f} ms, {fleet_result['median_iterations_cold']:.0f} iterations),"
        f" statuses {', '.join(fleet_result['statuses'])}"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(tz=UTC).isoformat(),
                "machine": platform.node(),
                "highs": highspy.Highs().version(),
                "repetitions": REPETITIONS,
                "scenarios": scenarios,
                "fleet": fleet_result,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
