"""`gridloop plans`: the optimizer's runs, and one run's plan as a table, asked over RPC (optimizer.runs.*)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from gridloop_cli.status import table
from gridloop_common.contracts.routing import RoutingKeys

__all__ = ["RUNS_LIST", "RUNS_SHOW", "render_list", "render_show"]

RUNS_LIST = RoutingKeys.OPTIMIZER_RUNS_LIST
RUNS_SHOW = RoutingKeys.OPTIMIZER_RUNS_SHOW


def _short_time(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def render_list(answer: dict[str, Any]) -> str:
    rows = [
        [
            str(run["run_id"]),
            str(run["kind"]),
            str(run["state"]),
            ",".join(run["scope"]) if run.get("scope") else "all sites",
            str(run.get("day") or "-"),
            _number(run.get("objective"), 4),
            _number(run.get("solve_ms"), 1),
            str(len(run.get("violations") or [])),
            _short_time(run["started_at"]),
            str(run.get("reason") or ""),
        ]
        for run in answer["runs"]
    ]
    if not rows:
        return "no optimization runs yet"
    return table(
        ["RUN", "KIND", "STATE", "SCOPE", "DAY", "OBJECTIVE", "SOLVE MS", "VIOLATIONS", "STARTED", "REASON"], rows
    )


def render_show(answer: dict[str, Any]) -> str:
    """One run: its summary, then per device and step the time, the setpoint (kW, + charging) and the SoC."""
    run = answer["run"]
    lines = [
        f"run {run['run_id']} ({run['kind']}): {run['state']}" + (f" ({run['reason']})" if run.get("reason") else ""),
        f"objective {_number(run.get('objective'), 4)}, build {_number(run.get('build_ms'), 1)} ms, "
        f"solve {_number(run.get('solve_ms'), 1)} ms, {len(run.get('violations') or [])} violations, "
        f"started {_short_time(run['started_at'])}, finished {_short_time(run.get('finished_at'))}",
    ]
    soc_by_device = {
        device["name"]: device.get("soc_pct") or [] for site in answer.get("sites", []) for device in site["devices"]
    }
    for plan in answer["plans"]:
        starts_at = datetime.fromisoformat(plan["starts_at"])
        step = timedelta(seconds=plan["step_seconds"])
        soc = soc_by_device.get(plan["device"], [])
        rows = [
            [
                _short_time((starts_at + index * step).isoformat()),
                f"{setpoint:+.3f}",
                _number(soc[index], 1) if index < len(soc) else "-",
            ]
            for index, setpoint in enumerate(plan["setpoints_kw"])
        ]
        lines += ["", f"{plan['device']} at {plan['site']} (plan version {plan['version']})"]
        lines.append(table(["TIME", "SETPOINT KW", "SOC %"], rows))
    if not answer["plans"]:
        lines += ["", "no device plans in this run"]
    for violation in run.get("violations") or []:
        lines.append(
            f"violation: {violation.get('limit')} at {violation.get('site')}"
            f"{'/' + violation['device'] if violation.get('device') else ''} step {violation.get('step')}"
            f" by {violation.get('amount')}"
        )
    return "\n".join(lines)
