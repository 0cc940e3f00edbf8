"""The planning endpoints end to end: the real gateway and optimizer processes on the test vhost and database.

A ToU tariff posted through the gateway is answered by the optimizer and its battery plan is published on
gridloop.devices; an MPC starts and stops through POST /calculate_mpc; the optimizer's own refusals (a day
already over) reach the operator as the gateway's 422. The scheduler carrying plans out is its own tests'.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from gridloop_common.auth import issue_key
from gridloop_common.contracts import routing
from gridloop_common.contracts.plans import DevicePlan
from gridloop_common.messaging import open_broker
from gridloop_common.settings import AmqpSettings

JWT_SECRET = "test-secret-with-at-least-thirty-two-characters"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextlib.asynccontextmanager
async def _running(script: str, environment: dict[str, str], port: int) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        _script(script), env=environment, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            for _ in range(600):
                assert process.returncode is None, f"{script} exited during start-up"
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)  # a process's readiness is only seen by asking
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


async def test_tariff_and_mpc_through_the_gateway_reach_the_devices(amqp_url: str, database_url: str) -> None:
    gateway_port, optimizer_port = _free_port(), _free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GRIDLOOP_")}
    environment.update(
        GRIDLOOP_AMQP_URL=amqp_url,
        GRIDLOOP_DATABASE_URL=database_url,
        GRIDLOOP_WEBHOOK_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        GRIDLOOP_JWT_SECRET=JWT_SECRET,
        GRIDLOOP_GATEWAY_PORT=str(gateway_port),
        GRIDLOOP_OPTIMIZER_PORT=str(optimizer_port),
        GRIDLOOP_STARTUP_TIMEOUT_S="20",
    )
    subprocess.run([_script("gridloop-ingest"), "migrate"], env=environment, check=True, capture_output=True)
    site = f"e2e-{uuid.uuid4().hex[:6]}"
    connection = await asyncpg.connect(database_url)
    try:
        device_id = await connection.fetchval(
            "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'bess', $2, $3::jsonb)"
            " RETURNING id",
            f"{site}.bess",
            site,
            '{"capacity_kwh": 10, "max_power_kw": 5}',
        )
        await connection.execute(
            "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES (now(), $1, 50, 0)",
            device_id,
        )
    finally:
        await connection.close()
    headers = {"Authorization": f"Bearer {issue_key(JWT_SECRET, 'grid_operator')}"}
    tomorrow = (datetime.now(tz=UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    async with (
        open_broker(AmqpSettings(amqp_url=amqp_url), client_name="e2e-plans", url=amqp_url) as broker,
        _running("gridloop-optimizer", environment, optimizer_port),
        _running("gridloop-gateway", environment, gateway_port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway_port}", timeout=30.0) as client,
    ):
        queue = await broker.channel.declare_queue(f"e2e.plans.{uuid.uuid4().hex[:8]}", exclusive=True)
        await queue.bind(routing.DEVICES_EXCHANGE, routing_key=routing.device_plan_key(f"{site}.bess"))

        tariff = await client.post(
            "/toutariff",
            headers=headers,
            json={
                "site": site,
                "date": tomorrow.isoformat(),
                "start_peak": (tomorrow + timedelta(hours=16)).isoformat(),
                "stop_peak": (tomorrow + timedelta(hours=21)).isoformat(),
            },
        )
        over = await client.post("/flattariff", headers=headers, json={"site": site, "date": "2020-01-01T00:00:00Z"})
        mpc = await client.post(
            "/calculate_mpc",
            headers=headers,
            json={
                "site": site,
                "prices": {datetime.now(tz=UTC).isoformat(): 0.1},
                "power_limit": {datetime.now(tz=UTC).isoformat(): 20.0},
            },
        )
        stopped = await client.post("/calculate_mpc", headers=headers, params={"site": site})

        plans = []
        async with asyncio.timeout(30), queue.iterator(no_ack=True) as messages:
            async for message in messages:
                plans.append(DevicePlan.model_validate_json(message.body))
                if len(plans) == 3:
                    break

    assert tariff.status_code == 200, tariff.text
    assert tariff.json()["state"] == "optimal" and len(tariff.json()["prices"]) == 144
    assert over.status_code == 422 and over.json()["errors"][0]["field"] == "date"
    assert mpc.status_code == 200, mpc.text
    assert mpc.json()["sites"][0]["devices"][0]["name"] == f"{site}.bess"
    assert stopped.status_code == 200 and stopped.json()["stopped"] is True
    assert [plan.kind.value for plan in plans] == ["tariff", "mpc", "mpc"]
    assert len(plans[0].steps) == 144 and len(plans[1].steps) == 12 and plans[2].steps == []
