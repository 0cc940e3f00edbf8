"""The gridloop command: API keys, log rendering, and the supervisor restarting a dead child."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest

from gridloop_cli import status
from gridloop_cli.keys import make_key
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
    assert roles == {
        "anon": "anon",
        "authenticated": "authenticated",
        "service_role": "service_role",
        "grid_operator": "grid_operator",
    }


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


async def test_status_asks_for_device_freshness_with_the_service_role_key() -> None:
    # telemetry-ingest's /status/devices takes the service_role key (issue 14, M4); a stand-in answers as it does.
    seen: list[dict[str, str]] = []

    def ingest(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.headers))
        token = request.headers.get("apikey")
        if token is None or jwt.decode(token, SECRET, algorithms=["HS256"])["role"] != "service_role":
            return httpx.Response(401, json={"code": "42501"})
        return httpx.Response(200, json=[{"device": "d", "name": "battery-1", "age_s": 1.0, "stale": False}])

    key = make_key(secret=SECRET, role="service_role")
    async with httpx.AsyncClient(transport=httpx.MockTransport(ingest)) as client:
        devices = await status._device_freshness(client, "127.0.0.1", 8081, key)
        without = await status._device_freshness(client, "127.0.0.1", 8081, None)
    assert devices == [status.DeviceFreshness("battery-1", None, 1.0, False)]
    assert seen[0]["authorization"] == f"Bearer {key}"
    assert isinstance(without, str) and "GRIDLOOP_JWT_SECRET" in without
    assert len(seen) == 1  # no keyless request is made
