"""`gridloop plan`: a scenario file in, its result file out, run as the user runs it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer.scenario import schedule_errors

SCENARIOS = Path(__file__).resolve().parents[3] / "bench" / "scenarios"


@pytest.mark.parametrize("name", ["day96", "week672", "negative48"])
def test_plan_writes_a_result_that_meets_every_constraint_at_the_optimal_cost(name: str, tmp_path: Path) -> None:
    gridloop = str(Path(sys.executable).with_name("gridloop"))
    scenario_path = SCENARIOS / f"{name}.json"
    out = tmp_path / "result.json"
    command = [gridloop, "plan", str(scenario_path), "--out", str(out), "--repetitions", "2"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert f"{name}: optimal, cost" in completed.stderr
    scenario = json.loads(scenario_path.read_bytes())
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["format"] == "bess-arbitrage-result/1"
    assert result["scenario"] == name
    assert result["scenario_sha256"] == hashlib.sha256(scenario_path.read_bytes()).hexdigest()
    assert result["status"] == "optimal"
    assert len(result["timing"]["build_s"]) == len(result["timing"]["solve_s"]) == 2
    assert result["timing"]["median_solve_s"] > 0
    assert schedule_errors(scenario, result) == []
    optimum = json.loads((SCENARIOS / "reference-optima.json").read_text(encoding="utf-8"))[name]
    assert result["objective"]["cost"] == pytest.approx(optimum, rel=1e-6)


def test_plan_names_an_unreadable_scenario(tmp_path: Path) -> None:
    gridloop = str(Path(sys.executable).with_name("gridloop"))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "bess-arbitrage-scenario/1", "num_steps": 2}), encoding="utf-8")
    completed = subprocess.run([gridloop, "plan", str(broken)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "battery: is missing" in completed.stderr
