"""H1 against the real service: slow anonymous reads must not starve other clients, /readyz or the consumer.

The probe's repro: twelve concurrent anon GETs of mg_bess_readings whose `or=(...)` holds 1,500 `like`
filters held every pool connection for 30 s; a service_role GET meanwhile got 504 after 10 s, and /readyz and
the readings consumer share that pool. Here `gridloop-ingest` runs as its console script on the test database
and vhost, and while the attack (then a variant within the filter cap) is in flight another client, /readyz
and the consumer must each be served within a generous bound (seconds, well above normal).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from gridloop_common.contracts import routing
from telemetry_ingest.api.auth import issue_key

pytestmark = pytest.mark.connected

SECRET = "attack-test-secret-of-at-least-32-characters"
ANON = issue_key(SECRET, "anon")
SERVICE = issue_key(SECRET, "service_role")
SEEDED_READINGS = 20_000
PROMPTLY_S = 5.0  # normal is a few milliseconds; the probe saw 10 s and a 504
STORED_WITHIN_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def ingest(amqp_url: str, database_url: str) -> AsyncIterator[str]:
    """gridloop-ingest as deployed (default pool and limits), on a free port; yields its base URL."""
    port = _free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GRIDLOOP_")}
    environment.update(
        {
            "GRIDLOOP_AMQP_URL": amqp_url,
            "GRIDLOOP_DATABASE_URL": database_url,
            "GRIDLOOP_JWT_SECRET": SECRET,
            "GRIDLOOP_INGEST_HOST": "127.0.0.1",
            "GRIDLOOP_INGEST_PORT": str(port),
            "GRIDLOOP_TELEMETRY_UPLOAD": "off",
            "GRIDLOOP_REORDER": "off",
            "GRIDLOOP_STARTUP_TIMEOUT_S": "20",
        }
    )
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("gridloop-ingest")),
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                assert process.returncode is None, "gridloop-ingest exited during start-up"
                assert time.monotonic() < deadline, "gridloop-ingest not ready within 45 s"
                try:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(20):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def _like_filter(terms: int) -> str:
    return "or=(" + ",".join(f"time.like.*{index:03d}*x" for index in range(terms)) + ")"


async def _timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


async def _attack_in_flight(connection: asyncpg.Connection, attack: asyncio.Future[Any]) -> None:
    """Until the attack's statements run in PostgreSQL, or every attack request has been answered."""
    while not attack.done():
        running = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
            " AND query LIKE '%::text LIKE%' AND pid <> pg_backend_pid()"
        )
        if running:
            return
        await asyncio.sleep(0.05)


async def _stored(connection: asyncpg.Connection, device: uuid.UUID) -> float:
    """Seconds until a reading of ``device`` is in the table (polled; the consumer acks only after commit)."""
    started = time.monotonic()
    while not await connection.fetchval("SELECT count(*) FROM flux.mg_bess_readings WHERE device_id = $1", device):
        assert time.monotonic() - started < STORED_WITHIN_S, "the readings consumer stored nothing"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_an_anonymous_flood_of_slow_filters_leaves_other_clients_readiness_and_ingest_served(
    ingest: str, amqp_url: str, database_url: str
) -> None:
    seeded = uuid.uuid4()
    published: list[uuid.UUID] = []
    start = datetime(2026, 6, 1, tzinfo=UTC)
    connection = await asyncpg.connect(database_url)
    broker = await aio_pika.connect(amqp_url)
    try:
        # Rows for the like filters to chew on: at 1,500 filters each, tens of seconds a statement.
        await connection.copy_records_to_table(
            "mg_bess_readings",
            schema_name="flux",
            columns=("time", "device_id", "soe", "target_power"),
            records=[(start + timedelta(seconds=index), seeded, 50.0, 0.0) for index in range(SEEDED_READINGS)],
        )
        channel = await broker.channel()
        telemetry = await channel.get_exchange(routing.TELEMETRY_EXCHANGE)
        async with httpx.AsyncClient(base_url=ingest, timeout=60) as client:
            for terms in (1500, 100):  # the probe's attack, then one within the filter cap
                path = f"/rest/v1/mg_bess_readings?select=soe&{_like_filter(terms)}"
                attack = asyncio.gather(*(client.get(path, headers={"apikey": ANON}) for _ in range(12)))
                await _attack_in_flight(connection, attack)

                other, other_s = await _timed(
                    client.get(
                        f"/rest/v1/mg_bess_readings?select=soe&device_id=eq.{seeded}&limit=1",
                        headers={"apikey": SERVICE},
                    )
                )
                assert (other.status_code, other.json()) == (200, [{"soe": 50}]), terms
                assert other_s < PROMPTLY_S, (terms, other_s)
                ready, ready_s = await _timed(client.get("/readyz"))
                assert (ready.status_code, ready_s < PROMPTLY_S) == (200, True), (terms, ready_s, ready.text)
                device = uuid.uuid4()
                published.append(device)
                reading = {"time": start.isoformat(), "device_id": str(device), "soe": 40.0, "target_power": 0.0}
                await telemetry.publish(
                    aio_pika.Message(json.dumps([reading]).encode(), message_id=str(uuid.uuid4())),
                    routing_key=routing.RoutingKeys.TELEMETRY_BESS,
                )
                assert await _stored(connection, device) < STORED_WITHIN_S
                answers = await attack
                statuses = sorted({answer.status_code for answer in answers})
                if terms > 100:
                    # Refused before any SQL (the filter cap; a front end may also refuse the long URL).
                    assert all(400 <= status < 500 for status in statuses), statuses
                else:
                    # Served two at a time for this client, the others told to retry; a statement past anon's
                    # 3 s is cancelled and says so.
                    assert set(statuses) <= {200, 429, 500}, statuses
                    for answer in answers:
                        if answer.status_code == 500:
                            assert answer.json()["code"] == "57014"
                        if answer.status_code == 429:
                            assert answer.headers["Retry-After"] == "1"
    finally:
        await broker.close()
        await connection.execute(
            "DELETE FROM flux.mg_bess_readings WHERE device_id = ANY($1::uuid[])", [seeded, *published]
        )
        await connection.close()
