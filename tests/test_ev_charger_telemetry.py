"""EV charger telemetry end to end, in one process on loopback (issue 18 item 3): the ``ocpp`` charge-point
simulator dials in to the device-agent's central system, whose meter values and sessions cross the real broker to
telemetry-ingest's readings consumer, land in flux.mg_ev_charger_readings and flux.mg_ev_sessions on the real
database, and are served by the Flux REST API and its realtime channel."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent, RealtimeSubscribeStates
from realtime.types import PostgresChangesPayload

from device_agent.chargers.central_system import CentralSystem
from device_agent.repository import find_charger
from gridloop_common.clock import SystemClock
from gridloop_common.contracts import routing
from gridloop_common.db import migrate_database, open_pool
from gridloop_common.messaging import Delivery, open_broker
from gridloop_common.observability import Health, serve_http
from gridloop_common.settings import AmqpSettings
from gridloop_simulators.charger import CarVisit, ChargerSimulator
from telemetry_ingest.api.auth import issue_key
from telemetry_ingest.api.postgrest import load_catalogue
from telemetry_ingest.api.routes import build_app
from telemetry_ingest.ingest.consumer import readings_handler
from telemetry_ingest.ingest.repository import ReadingsRepository
from telemetry_ingest.realtime import RealtimeHub, realtime_route
from telemetry_ingest.settings import IngestSettings

pytestmark = pytest.mark.connected

PASSWORD = "correct horse battery staple"
JWT_SECRET = "ev-charger-tests-secret-of-at-least-32-characters"
WAIT_S = 15.0
RATED_KW = 16 * 3 * 230.0 / 1000


@dataclass
class Stack:
    pool: asyncpg.Pool
    ocpp_url: str
    api_url: str
    stored: Callable[[str, Any], Awaitable[asyncpg.Record]]


@pytest.fixture
async def stack(database_url: str, amqp_url: str) -> AsyncIterator[Stack]:
    await migrate_database(database_url, owner="telemetry-ingest", package="telemetry_ingest")
    handled = asyncio.Condition()
    async with (
        open_pool(database_url, min_size=1, max_size=8) as pool,
        open_broker(AmqpSettings(), client_name="ev-telemetry-test", url=amqp_url) as broker,
        RealtimeHub(database_url) as hub,
    ):
        handle = readings_handler(ReadingsRepository(pool), broker.publisher)

        async def handle_and_tell(delivery: Delivery) -> None:
            await handle(delivery)
            async with handled:
                handled.notify_all()

        async def stored(query: str, *arguments: Any) -> asyncpg.Record:
            """The first row of ``query`` once some handled message has stored it (checked after each one)."""
            async with asyncio.timeout(WAIT_S), handled:
                while (row := await pool.fetchrow(query, *arguments)) is None:
                    await handled.wait()
            return row

        async with pool.acquire() as connection:
            catalogue = await load_catalogue(connection)
        app = build_app(
            pool=pool,
            catalogue=catalogue,
            settings=IngestSettings(jwt_secret=JWT_SECRET),
            health=Health(service="ev-telemetry-test"),
            extra_routes=[realtime_route(hub, JWT_SECRET)],
        )
        system = CentralSystem(
            find_charger=lambda ocpp_id: find_charger(pool, ocpp_id),
            publisher=broker.publisher,
            clock=SystemClock(),
            heartbeat_interval_s=5,
            offline_margin_s=2.0,
        )
        async with (
            broker.consumer(routing.Queues.INGEST_READINGS, handle_and_tell, drain_timeout_s=5.0),
            serve_http(app, host="127.0.0.1", port=0) as server,
            system.serving("127.0.0.1", 0) as ocpp_server,
        ):
            api_port = server.servers[0].sockets[0].getsockname()[1]
            ocpp_port = next(iter(ocpp_server.sockets)).getsockname()[1]
            yield Stack(pool, f"ws://127.0.0.1:{ocpp_port}/ocpp", f"http://127.0.0.1:{api_port}", stored)


async def _register(pool: asyncpg.Pool, ocpp_id: str, protocol: str = "ocpp1.6") -> uuid.UUID:
    ocpp = {
        "id": ocpp_id,
        "version": protocol.removeprefix("ocpp"),
        "password_sha256": hashlib.sha256(PASSWORD.encode()).hexdigest(),
    }
    device_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, 'electric_vehicle_v1g', 'TEST',"
        " $2::jsonb) RETURNING id",
        f"charger-{uuid.uuid4().hex[:8]}",
        {"ocpp": ocpp, "max_power_kw": 11},
    )
    return device_id


def _simulator(stack: Stack, ocpp_id: str, car: CarVisit, protocol: str = "ocpp1.6") -> ChargerSimulator:
    return ChargerSimulator(
        url=stack.ocpp_url,
        charge_point_id=ocpp_id,
        password=PASSWORD,
        protocol=protocol,
        car=car,
        meter_interval_s=0.1,
        tick_s=0.05,
    )


async def test_meter_values_become_rows_served_by_the_rest_api_and_the_realtime_channel(stack: Stack) -> None:
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    device_id = await _register(stack.pool, ocpp_id)
    anon = issue_key(JWT_SECRET, "anon", lifetime_seconds=600)
    arrivals: asyncio.Queue[PostgresChangesPayload] = asyncio.Queue()
    states: list[RealtimeSubscribeStates] = []
    client = AsyncRealtimeClient(f"{stack.api_url}/realtime/v1", token=anon, auto_reconnect=False)
    channel = client.channel("ev-chargers")
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert,
        arrivals.put_nowait,
        table="mg_ev_charger_readings",
        schema="flux",
        filter=f"device_id=eq.{device_id}",
    )
    try:
        await channel.subscribe(lambda state, error: states.append(state))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        async with _simulator(stack, ocpp_id, CarVisit(arrive_after_s=0.0, initial_soc_percentage=40.0)):
            row = await stack.stored(
                "SELECT * FROM flux.mg_ev_charger_readings"
                " WHERE device_id = $1 AND power_kw > 0 AND soc_pct IS NOT NULL",
                device_id,
            )
            payload = await asyncio.wait_for(arrivals.get(), WAIT_S)
    finally:
        await client.close()

    assert row["power_kw"] == pytest.approx(RATED_KW)
    assert 40.0 <= row["soc_pct"] < 41.0
    assert row["connector_status"] == "Charging"
    record = payload["data"]["record"]
    assert record is not None and record["device_id"] == str(device_id)
    assert payload["data"]["table"] == "mg_ev_charger_readings"

    # Served like the battery readings: anon reads, newest first.
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        answer = await http.get(
            "/rest/v1/mg_ev_charger_readings",
            params={
                "device_id": f"eq.{device_id}",
                "power_kw": "gt.0",
                "select": "time,power_kw,soc_pct,energy_import_kwh,transaction_id",
                "order": "time.desc",
            },
            headers={"apikey": anon, "Authorization": f"Bearer {anon}"},
        )
        assert answer.status_code == 200, answer.text
        served = answer.json()
        assert served and served[0]["power_kw"] == pytest.approx(RATED_KW)
        assert served[0]["transaction_id"] is not None
        # ...and anon may not write them (authenticated ingests, as for mg_bess_readings).
        refused = await http.post(
            "/rest/v1/mg_ev_charger_readings",
            json={"time": "2026-12-08T00:00:00Z", "device_id": str(device_id), "power_kw": 1},
            headers={"apikey": anon, "Authorization": f"Bearer {anon}"},
        )
        assert refused.status_code == 401, refused.text


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.1"])
async def test_a_plug_in_and_plug_out_make_one_session_row_with_energy_and_socs(stack: Stack, protocol: str) -> None:
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    device_id = await _register(stack.pool, ocpp_id, protocol)
    # A small battery, so that 1.5 s at 11 kW moves its SoC by several percent.
    car = CarVisit(arrive_after_s=0.0, leave_after_s=1.5, capacity_kwh=0.05, initial_soc_percentage=40.0)
    async with _simulator(stack, ocpp_id, car, protocol) as simulator:
        row = await stack.stored(
            "SELECT * FROM flux.mg_ev_sessions WHERE device_id = $1 AND plugged_out_at IS NOT NULL", device_id
        )
        delivered_wh = simulator.state.energy_import_wh  # its register started at 0 Wh

    assert await stack.pool.fetchval("SELECT count(*) FROM flux.mg_ev_sessions WHERE device_id = $1", device_id) == 1
    assert row["plugged_out_at"] > row["plugged_in_at"]
    assert delivered_wh > 0
    if protocol == "ocpp1.6":
        # meterStart and meterStop (whole Wh) bound the session.
        assert row["transaction_id"] == "1"
        assert row["energy_kwh"] == pytest.approx(int(delivered_wh) / 1000)
    else:
        # 2.x sends no registers with Started/Ended here: the first and last ones read in the session bound it,
        # so up to a meter interval at each end (11 kW for 0.1 s: about 0.3 Wh each; a loaded machine stretches it)
        # is not counted, and never more than the charger delivered (1e-6: the column is a float4).
        assert row["transaction_id"] == f"{ocpp_id}-1"
        assert delivered_wh / 1000 - 0.003 < row["energy_kwh"] <= delivered_wh / 1000 + 1e-6
    # The first SoC the charger reported in the session: the car has charged for up to one meter interval by then.
    assert 40.0 <= row["initial_soc_pct"] < 42.0
    assert row["final_soc_pct"] > row["initial_soc_pct"] + 5
    assert row["stop_reason"] == "EVDisconnected"

    # Served by the REST API like the readings: anon reads sessions.
    anon = issue_key(JWT_SECRET, "anon", lifetime_seconds=600)
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        answer = await http.get(
            "/rest/v1/mg_ev_sessions",
            params={"device_id": f"eq.{device_id}", "select": "session_id,energy_kwh,final_soc_pct"},
            headers={"apikey": anon, "Authorization": f"Bearer {anon}"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {
            "session_id": str(row["session_id"]),
            "energy_kwh": pytest.approx(row["energy_kwh"]),
            "final_soc_pct": pytest.approx(row["final_soc_pct"]),
        }
    ]


async def test_a_session_that_outlives_its_connection_is_closed_by_the_plug_out_after_the_reconnection(
    stack: Stack,
) -> None:
    ocpp_id = f"CP-{uuid.uuid4().hex[:6]}"
    device_id = await _register(stack.pool, ocpp_id)
    car = CarVisit(arrive_after_s=0.0, leave_after_s=1.0, initial_soc_percentage=40.0)
    simulator = _simulator(stack, ocpp_id, car)
    await simulator.connect()
    try:
        started = await stack.stored("SELECT * FROM flux.mg_ev_sessions WHERE device_id = $1", device_id)
        assert started["plugged_out_at"] is None
        # The link drops with the car still plugged in; the charger dials in again and, a second later, the car
        # leaves: its StopTransaction names the transaction begun on the first connection.
        await simulator.disconnect()
        await simulator.connect()
        ended = await stack.stored(
            "SELECT * FROM flux.mg_ev_sessions WHERE device_id = $1 AND plugged_out_at IS NOT NULL", device_id
        )
    finally:
        await simulator.disconnect()

    assert ended["session_id"] == started["session_id"]
    assert ended["plugged_in_at"] == started["plugged_in_at"]
    assert ended["energy_kwh"] == pytest.approx(int(simulator.state.energy_import_wh) / 1000)
    assert await stack.pool.fetchval("SELECT count(*) FROM flux.mg_ev_sessions WHERE device_id = $1", device_id) == 1
