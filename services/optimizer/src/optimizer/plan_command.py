"""`gridloop-optimizer plan SCENARIO [--out RESULT] [--repetitions R]`: one scenario file solved, its result
file written (bess-arbitrage-scenario/1 in, bess-arbitrage-result/1 out; `gridloop plan` runs this).

The solve is repeated as the format times it: one warm-up, then R repetitions, each building its model from
the scenario's arrays afresh (a new `PlanSolver`), build and solve timed apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from optimizer.problem import Plan, ProblemError
from optimizer.scenario import problem_from_scenario, result_document
from optimizer.solver import PlanSolver

__all__ = ["run"]


def run(argv: list[str], *, time_limit_s: float, program: str) -> int:
    parser = argparse.ArgumentParser(prog=f"{program} plan", description="Solve one battery-arbitrage scenario.")
    parser.add_argument("scenario", type=Path, help="a bess-arbitrage-scenario/1 file")
    parser.add_argument("--out", type=Path, help="where to write the result (default: standard output)")
    parser.add_argument("--repetitions", type=int, default=10, help="timed solves after one warm-up (default 10)")
    arguments = parser.parse_args(argv)
    if arguments.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    try:
        scenario_bytes = arguments.scenario.read_bytes()
        scenario = json.loads(scenario_bytes)
        problem = problem_from_scenario(scenario)
    except OSError as error:
        print(f"{program}: cannot read {arguments.scenario}: {error.strerror}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as error:
        print(f"{program}: {arguments.scenario} is not JSON: {error}", file=sys.stderr)
        return 2
    except ProblemError as error:
        print(f"{program}: {arguments.scenario}: {error}", file=sys.stderr)
        return 2
    plans: list[Plan] = []
    for _ in range(arguments.repetitions + 1):
        plans.append(PlanSolver(time_limit_s=time_limit_s).solve(problem))
    timed = plans[1:]
    plan = timed[-1]
    build_s = [repetition.build_s for repetition in timed]
    solve_s = [repetition.solve_s for repetition in timed]
    document = result_document(
        scenario=scenario, scenario_bytes=scenario_bytes, plan=plan, build_s=build_s, solve_s=solve_s
    )
    text = json.dumps(document, indent=1) + "\n"
    if arguments.out is None:
        sys.stdout.write(text)
    else:
        arguments.out.write_text(text, encoding="utf-8")
    print(
        f"{scenario.get('name', arguments.scenario.name)}: {plan.status.value}, cost"
        f" {document['objective']['cost']:.6f} {scenario.get('currency', '')}, {len(plan.violations)} violations,"
        f" median build {statistics.median(build_s) * 1e3:.2f} ms, solve {statistics.median(solve_s) * 1e3:.2f} ms"
        f" ({arguments.repetitions} repetitions after a warm-up)",
        file=sys.stderr,
    )
    return 0
