"""Each service as its console script: starts, declares topology, migrates, serves health, stops."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import asyncpg
import httpx
import pytest

from gridloop_common.messaging import QUEUES

SERVICES = [
    ("gridloop-gateway", "GRIDLOOP_GATEWAY_PORT"),
    ("gridloop-scheduler", "GRIDLOOP_SCHEDULER_PORT"),
    ("gridloop-optimizer", "GRIDLOOP_OPTIMIZER_PORT"),
    ("gridloop-ingest", "GRIDLOOP_INGEST_PORT"),
    ("gridloop-agent", "GRIDLOOP_AGENT_PORT"),
]


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


async def _wait_ready(port: int, process: asyncio.subprocess.Process, *, timeout_s: float = 45.0) -> dict:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            assert process.returncode is None, "service exited during start-up"
            try:
                response = await client.get(f"http://127.0.0.1:{port}/readyz")
                if response.status_code == 200:
                    return dict(response.json())
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"not ready on port {port} within {timeout_s} s")


@pytest.mark.parametrize(("script", "port_variable"), SERVICES)
async def test_service_starts_ready_and_stops_within_20_s_of_sigterm(
    script: str, port_variable: str, service_environment: dict[str, str], amqp_url: str, database_url: str
) -> None:
    # telemetry-ingest owns flux.*, which the agent reads: migrate it first as `gridloop migrate` does.
    subprocess.run([_script("gridloop-ingest"), "migrate"], env=service_environment, check=True, capture_output=True)
    port = int(service_environment[port_variable])
    process = await asyncio.create_subprocess_exec(
        _script(script),
        env=service_environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        readiness = await _wait_ready(port, process)
        assert all(readiness["checks"].values())
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            metrics = await client.get(f"http://127.0.0.1:{port}/metrics")
            assert "process_cpu_seconds_total" in metrics.text
        # The live exposition, as a Prometheus scrapes it, passes Prometheus's linter.
        promtool = shutil.which("promtool")
        assert promtool is not None, "promtool is missing: run scripts/ensure-infrastructure.sh"
        lint = subprocess.run([promtool, "check", "metrics"], input=metrics.content, capture_output=True, timeout=60)
        assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()

        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            for spec in QUEUES:  # the whole topology exists once any service has started
                await channel.declare_queue(spec.name, passive=True)

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()
        assert time.monotonic() - started < 20
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert '"message": "shutting down"' in log
    assert "Traceback" not in log


async def test_migrations_are_recorded_per_owner(service_environment: dict[str, str], database_url: str) -> None:
    for script in ("gridloop-ingest", "gridloop-scheduler"):
        subprocess.run([_script(script), "migrate"], env=service_environment, check=True, capture_output=True)
        subprocess.run([_script(script), "migrate"], env=service_environment, check=True, capture_output=True)
    connection = await asyncpg.connect(database_url)
    try:
        owners = {
            row["owner"]: row["count"]
            for row in await connection.fetch(
                "SELECT owner, count(*) FROM public.gridloop_schema_migrations GROUP BY owner"
            )
        }
    finally:
        await connection.close()
    assert owners.keys() >= {"scheduler", "telemetry-ingest"}


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("GRIDLOOP_AMQP_URL", "http://not-amqp", "gridloop-scheduler: invalid setting GRIDLOOP_AMQP_URL: "),
        (
            "GRIDLOOP_SCHEDULER_PORT",
            "ninety",
            "gridloop-scheduler: invalid setting GRIDLOOP_SCHEDULER_PORT: ",
        ),
        (
            "GRIDLOOP_UPSTREAM_ACK_PATH",
            "/v1/commands",
            "gridloop-scheduler: invalid setting GRIDLOOP_UPSTREAM_ACK_PATH",
        ),
    ],
)
def test_invalid_setting_stops_with_one_line_and_exit_code_2(
    variable: str, value: str, expected: str, service_environment: dict[str, str]
) -> None:
    environment = {**service_environment, variable: value}
    result = subprocess.run(
        [_script("gridloop-scheduler")], env=environment, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.startswith(expected)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_secret_stops_the_gateway(service_environment: dict[str, str]) -> None:
    environment = {key: value for key, value in service_environment.items() if key != "GRIDLOOP_WEBHOOK_SECRET"}
    result = subprocess.run([_script("gridloop-gateway")], env=environment, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == "gridloop-gateway: invalid setting GRIDLOOP_WEBHOOK_SECRET: Field required\n"


def test_unreachable_broker_stops_with_a_clear_line(service_environment: dict[str, str]) -> None:
    environment = {
        **service_environment,
        "GRIDLOOP_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        "GRIDLOOP_STARTUP_TIMEOUT_S": "1",
    }
    result = subprocess.run(
        [_script("gridloop-optimizer")], env=environment, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "gridloop-optimizer: RabbitMQ unreachable at amqp://guest:***@127.0.0.1:1/" in result.stderr
    assert "Traceback" not in result.stderr


async def test_gridloop_status_shows_every_service_ready(service_environment: dict[str, str]) -> None:
    subprocess.run([_script("gridloop-ingest"), "migrate"], env=service_environment, check=True, capture_output=True)
    processes = [
        await asyncio.create_subprocess_exec(
            _script(script),
            env=service_environment,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for script, _ in SERVICES
    ]
    try:
        for process, (_, port_variable) in zip(processes, SERVICES, strict=True):
            await _wait_ready(int(service_environment[port_variable]), process)
        result = subprocess.run(
            [_script("gridloop"), "status"], env=service_environment, capture_output=True, text=True, timeout=60
        )
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(process.wait() for process in processes))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("webhook-gateway", "scheduler", "optimizer", "telemetry-ingest", "device-agent"):
        assert any(line.startswith(name) and " ready " in line for line in lines), result.stdout
    assert any(line.startswith("scheduler.upstream ") for line in lines)
    assert "DEAD-LETTERED" in result.stdout


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("whsec_AA==", "decodes to 1 bytes; Standard Webhooks secrets are at least 24"),
        ("whsec_not*base64!", "is not whsec_<base64>"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2hvcnQ=", "secret 2 of 2: webhook secret decodes to 5 bytes"),
    ],
)
def test_an_unusable_webhook_secret_stops_the_gateway_with_one_line(
    secret: str, problem: str, service_environment: dict[str, str]
) -> None:
    environment = {**service_environment, "GRIDLOOP_WEBHOOK_SECRET": secret}
    result = subprocess.run([_script("gridloop-gateway")], env=environment, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("gridloop-gateway: invalid setting GRIDLOOP_WEBHOOK_SECRET: ")
    assert problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert secret.split()[-1].removeprefix("whsec_") not in result.stderr  # the key is never echoed
