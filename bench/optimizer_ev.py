"""Benchmark of the optimizer core's EV model: a day of 96 quarter-hours, one EV and one battery.

The day starts at 18:00; the car (60 kWh, 30 % -> 80 %) is plugged in from step 0 to 07:00 (step 52), beside
a 13.5 kWh / 5 kW battery, on seeded random prices and load, an import limit of 25 kW. Four chargers:

- V1G 11 kW without a minimum current (a plain LP),
- V1G 11 kW with the 6 A three-phase minimum (4.14 kW: a MIP, one binary per plugged-in step),
- V2G 11 kW with that minimum and a 20 % floor (a MIP with two binaries per plugged-in step),
- on/off 7.4 kW.

Each: one warm-up, then ten solves on a fresh model (build + solve), and ten on a kept model whose prices
move (an MPC tick); plus, with a time limit of 1 µs, the cost of the LP relaxation's rounded plan against the
MIP optimum (a plain LP has no relaxation: out of time, its plan idles, as a battery's does).
Figures are printed and written to bench/results/optimizer_ev.json. Run: `uv run python bench/optimizer_ev.py`.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highspy
import numpy as np

# The package is named like bench/optimizer.py: keep this script's folder off sys.path before importing it.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from optimizer.problem import Battery, ElectricVehicle, EvKind, SiteProblem  # noqa: E402
from optimizer.solver import PlanSolver, solve  # noqa: E402

STEPS = 96
REPETITIONS = 10
RESULTS = Path(__file__).resolve().parent / "results" / "optimizer_ev.json"


def _problem(vehicle: ElectricVehicle, seed: int) -> SiteProblem:
    rng = np.random.default_rng(seed)
    prices = 0.15 + 0.1 * np.sin(np.arange(STEPS) / STEPS * 2 * np.pi) + rng.uniform(0, 0.08, STEPS)
    return SiteProblem.create(
        start=datetime(2026, 12, 7, 18, tzinfo=UTC),
        step_hours=0.25,
        import_price=prices,
        export_price=np.zeros(STEPS),
        load_kw=rng.uniform(0.3, 3.0, STEPS),
        batteries=[
            Battery(
                name="battery",
                capacity_kwh=13.5,
                max_charge_kw=5.0,
                max_discharge_kw=5.0,
                soc_initial_pct=50.0,
                soc_target_pct=50.0,
            )
        ],
        vehicles=[vehicle],
        import_limit_kw=25.0,
    )


def _vehicle(kind: EvKind, *, rated: float, minimum: float) -> ElectricVehicle:
    return ElectricVehicle(
        name="car",
        kind=kind,
        capacity_kwh=60.0,
        soc_initial_pct=30.0,
        max_power_kw=rated,
        min_power_kw=minimum,
        arrival_step=0,
        departure_step=52,
        target_soc_pct=80.0,
        soc_min_pct=20.0,
    )


CASES = {
    "v1g_no_minimum": _vehicle(EvKind.V1G, rated=11.0, minimum=0.0),
    "v1g_6a_three_phase": _vehicle(EvKind.V1G, rated=11.0, minimum=4.14),
    "v2g_6a_three_phase": _vehicle(EvKind.V2G, rated=11.0, minimum=4.14),
    "on_off_7kw": _vehicle(EvKind.ON_OFF, rated=7.4, minimum=0.0),
}


def _case(vehicle: ElectricVehicle) -> dict[str, Any]:
    problem = _problem(vehicle, seed=1)
    solve(problem)  # warm-up
    fresh = []
    for _ in range(REPETITIONS):
        plan = solve(problem)
        fresh.append((plan.build_s + plan.solve_s) * 1000)
    solver = PlanSolver()
    solver.solve(problem)
    kept = []
    for seed in range(2, 2 + REPETITIONS):
        moved = solver.solve(_problem(vehicle, seed=seed))
        kept.append((moved.build_s + moved.solve_s) * 1000)
    relaxed = solve(problem, time_limit_s=1e-6)
    return {
        "status": plan.status.value,
        "binaries": plan.binaries,
        "objective": round(plan.objective, 6),
        "violations": len(plan.violations),
        "fresh_ms": {"median": round(statistics.median(fresh), 2), "max": round(max(fresh), 2)},
        "kept_model_ms": {"median": round(statistics.median(kept), 2), "max": round(max(kept), 2)},
        "tiny_time_limit": {
            "status": relaxed.status.value,
            "relaxed": relaxed.relaxed,
            "objective": round(relaxed.objective, 6),
            "above_optimum_pct": round((relaxed.objective - plan.objective) / abs(plan.objective) * 100, 2),
        },
    }


def main() -> None:
    results = {name: _case(vehicle) for name, vehicle in CASES.items()}
    for name, figures in results.items():
        print(
            f"{name:22s} {figures['status']:8s} binaries {figures['binaries']:3d}"
            f"  fresh {figures['fresh_ms']['median']:7.2f} ms (max {figures['fresh_ms']['max']:.2f})"
            f"  kept {figures['kept_model_ms']['median']:7.2f} ms"
            + (
                f"  relaxed +{figures['tiny_time_limit']['above_optimum_pct']:.2f} %"
                if figures["tiny_time_limit"]["relaxed"]
                else "  1 µs: no relaxation (an LP out of time idles)"
            )
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measured_at": datetime.now(tz=UTC).isoformat(),
                "host": platform.node(),
                "highs": highspy.Highs().version(),
                "steps": STEPS,
                "cases": results,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"written to {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
