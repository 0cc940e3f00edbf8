"""Architecture rules: services never import each other, the shared library imports no service."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_dumping_ground_modules() -> None:
    offenders = [
        path.relative_to(ROOT)
        for pattern in ("utils*.py", "helpers*.py")
        for folder in ("libs", "services", "tools")
        for path in (ROOT / folder).rglob(pattern)
    ]
    assert offenders == []


# Reading the clock: every service reads time through the Clock its composition root hands down
# (gridloop_common.clock), so tests can hold it still or move it. Only clock.py reads the system's clocks.
_CLOCK_READINGS = frozenset(
    {
        "datetime.now",
        "datetime.utcnow",
        "datetime.today",
        "date.today",
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
    }
)
_TIME_FUNCTIONS = frozenset({"time", "time_ns", "monotonic", "monotonic_ns"})
# time.perf_counter stays allowed: it only measures how long something took, for metrics and logs, and no
# decision reads it.
_CLOCK_MODULE = Path("libs/common/src/gridloop_common/clock.py")
# Code that waits on the event loop's own timers (asyncio.timeout_at, loop.call_at, asyncio.wait_for) reads
# the loop's clock, because a Clock handed to it could not wake those timers. Tests drive these places with
# events or with gridloop_common.testing.FakeTimeEventLoop (a loop whose time is a FakeClock).
_LOOP_TIME_ALLOWED = {
    # Publisher confirm deadlines: one loop timer per coalesced write, and asyncio.timeout_at around the wait.
    Path("libs/common/src/gridloop_common/messaging/publisher.py"),
    # Waiting for an unknown device's registration: a deadline for asyncio.wait_for rounds.
    Path("services/device-agent/src/device_agent/fleet.py"),
    # Realtime interest: renewed by a keeper that sleeps on the loop, against an expiry PostgreSQL keeps by
    # its own clock (clock_timestamp()), so the renew-by times follow the same real time as the keeper.
    Path("services/telemetry-ingest/src/telemetry_ingest/realtime/hub.py"),
}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _reads_loop_time(node: ast.Call) -> bool:
    """``loop.time()``, ``self._loop.time()`` or ``asyncio.get_running_loop().time()``."""
    function = node.func
    if not isinstance(function, ast.Attribute) or function.attr != "time" or node.args:
        return False
    owner = function.value
    if isinstance(owner, ast.Call):
        return (_dotted(owner.func) or "").endswith(("get_running_loop", "get_event_loop"))
    return (_dotted(owner) or "").lower().endswith("loop")


def _clock_readings(source: str, *, loop_time_allowed: bool = False) -> list[str]:
    """Every place ``source`` reads a clock itself, as "what (line n)"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name is not None and any(name == reading or name.endswith("." + reading) for reading in _CLOCK_READINGS):
                found.append((node.lineno, name))
        elif isinstance(node, ast.ImportFrom) and node.module == "time":
            found += [
                (node.lineno, f"from time import {alias.name}") for alias in node.names if alias.name in _TIME_FUNCTIONS
            ]
        elif isinstance(node, ast.Call) and not loop_time_allowed and _reads_loop_time(node):
            found.append((node.lineno, "loop.time()"))
    return [f"{what} (line {line})" for line, what in sorted(found)]


def _production_modules() -> list[Path]:
    folders = [ROOT / "libs/common/src", *sorted((ROOT / "services").glob("*/src"))]
    return sorted(path.relative_to(ROOT) for folder in folders for path in folder.rglob("*.py"))


def test_time_is_read_only_through_the_clock() -> None:
    modules = _production_modules()
    assert _CLOCK_MODULE in modules and len(modules) > 50  # the walk found the code
    offenders = {
        str(path): readings
        for path in modules
        if path != _CLOCK_MODULE
        and (
            readings := _clock_readings(
                (ROOT / path).read_text(encoding="utf-8"), loop_time_allowed=path in _LOOP_TIME_ALLOWED
            )
        )
    }
    assert offenders == {}, "read time through gridloop_common.clock.Clock, handed down from app.py"


def test_the_clock_check_sees_every_way_of_reading_a_clock() -> None:
    source = (
        "import asyncio, time\n"
        "import datetime as dt\n"
        "from datetime import UTC, datetime\n"
        "from time import monotonic, perf_counter\n"
        "def f(clock=time.time):\n"
        "    loop = asyncio.get_running_loop()\n"
        "    a = datetime.now(UTC), dt.datetime.now(), time.monotonic(), dt.date.today()\n"
        "    b = loop.time(), self._loop.time(), asyncio.get_running_loop().time(), time.perf_counter()\n"
    )
    assert sorted(reading.split(" (line")[0] for reading in _clock_readings(source)) == sorted(
        [
            "from time import monotonic",
            "time.time",
            "datetime.now",
            "dt.datetime.now",
            "time.monotonic",
            "dt.date.today",
            "loop.time()",
            "loop.time()",
            "loop.time()",
        ]
    )
    assert "loop.time()" not in " ".join(_clock_readings(source, loop_time_allowed=True))
    assert _clock_readings("import time\nstarted = time.perf_counter()\n") == []
