"""The gridloop command: API keys, log rendering, and the supervisor restarting a dead child."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from gridloop_cli.services import ServiceProcess
from gridloop_cli.stack import Supervisor, format_line

SECRET = "a-test-secret-that-is-long-enough-for-hs256-keys"


def test_keys_are_jwts_for_each_role() -> None:
    gridloop = str(Path(sys.executable).with_name("gridloop"))
    environment = {**os.environ, "GRIDLOOP_JWT_SECRET": SECRET}
    result = subprocess.run([gridloop, "keys"], env=environment, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    roles = {}
    for line in result.stdout.splitlines():
        role, _, token = line.partition(": ")
        roles[role] = jwt.decode(token, SECRET, algorithms=["HS256"])["role"]
    assert roles == {"anon": "anon", "authenticated": "authenticated", "service_role": "service_role"}


def test_json_log_lines_render_readably() -> None:
    line = json.dumps(
        {
            "ts": "2026-06-01T12:00:01.123+00:00",
            "level": "info",
            "service": "scheduler",
            "logger": "x",
            "message": "command scheduled",
            "command_id": "c-1",
        }
    )
    assert format_line(line) == "12:00:01 info  command scheduled  command_id=c-1"
    assert format_line("plain text") == "plain text"


async def test_a_dead_child_is_reported_and_restarted(capsys: pytest.CaptureFixture[str]) -> None:
    crashing = ServiceProcess("crasher", (sys.executable, "-c", "import sys; print('starting'); sys.exit(3)"))
    supervisor = Supervisor(environment=dict(os.environ), processes=[crashing], grace_period_s=2)
    watcher = asyncio.create_task(supervisor._watch(supervisor._children[0]))
    async with asyncio.timeout(15):
        while supervisor._children[0].restarts < 2:
            await asyncio.sleep(0.05)
    await supervisor.stop()
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    output = capsys.readouterr().out
    assert "crasher | exited with code 3; restart #1 in 1 s" in output
    assert "crasher | exited with code 3; restart #2 in 2 s" in output
    assert output.count("crasher | starting") >= 2
