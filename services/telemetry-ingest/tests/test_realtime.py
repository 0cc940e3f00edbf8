"""The real `realtime` client against the realtime route under uvicorn: filtered INSERT changes, heartbeat, auth."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets
from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent, RealtimeSubscribeStates
from realtime.types import PostgresChangesPayload

from gridloop_common.observability import configure_logging
from telemetry_ingest.api.auth import issue_key

from .pipeline_fixtures import (  # noqa: F401  (fixtures, found by pytest under their names)
    JWT_SECRET,
    anon_key_fixture,
    api_server_fixture,
    realtime_hub_fixture,
    repository_fixture,
)

pytestmark = pytest.mark.connected


def _websocket_url(api_server: str, token: str) -> str:
    return api_server.replace("http://", "ws://") + f"/realtime/v1/websocket?apikey={token}&vsn=1.0.0"


async def _insert_meter_reading(
    pool: asyncpg.Pool, device: uuid.UUID, moment: datetime, power_kw: float
) -> tuple[float, float]:
    """Insert one reading in its own transaction; returns perf_counter() before sending it and after its commit."""
    sent_at = time.perf_counter()
    await pool.execute(
        "INSERT INTO flux.mg_meter_readings (time, device_id, power_total_active, frequency) VALUES ($1, $2, $3, 50)",
        moment,
        device,
        power_kw,
    )
    return sent_at, time.perf_counter()


async def test_filtered_insert_subscription_receives_only_its_device(
    pool: asyncpg.Pool, api_server: str, anon_key: str
) -> None:
    device, other_device = uuid.uuid4(), uuid.uuid4()
    arrivals: asyncio.Queue[tuple[float, PostgresChangesPayload]] = asyncio.Queue()
    states: list[RealtimeSubscribeStates] = []
    client = AsyncRealtimeClient(f"{api_server}/realtime/v1", token=anon_key, auto_reconnect=False)
    channel = client.channel("meter-realtime")
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert,
        lambda payload: arrivals.put_nowait((time.perf_counter(), payload)),
        table="mg_meter_readings",
        schema="flux",
        filter=f"device_id=eq.{device}",
    )
    try:
        await channel.subscribe(lambda state, error: states.append(state))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        binding_id = channel.postgres_changes_callbacks[0].id
        assert binding_id is not None

        start = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
        # The other device's row commits first: notifications arrive in commit order on one connection,
        # so if the first arrival is ours, the other device's row was filtered out.
        await _insert_meter_reading(pool, other_device, start, 9.0)
        sent_at, committed_at = await _insert_meter_reading(pool, device, start, 1.25)
        arrived_at, payload = await asyncio.wait_for(arrivals.get(), 5)

        data: dict[str, Any] = dict(payload["data"])
        assert payload["ids"] == [binding_id]
        assert data["schema"] == "flux"
        assert data["table"] == "mg_meter_readings"
        assert data["type"] == RealtimePostgresChangesListenEvent.Insert
        assert data["errors"] is None
        record = data["record"]
        assert record is not None
        assert record["device_id"] == str(device)
        assert record["power_total_active"] == 1.25
        assert record["frequency"] == 50
        assert datetime.fromisoformat(record["time"]) == start
        assert {"name": "device_id", "type": "uuid"} in data["columns"]
        assert {"name": "power_total_active", "type": "float4"} in data["columns"]
        assert datetime.fromisoformat(data["commit_timestamp"]) > datetime.now(UTC) - timedelta(minutes=1)
        after_commit = [arrived_at - committed_at]
        after_send = [arrived_at - sent_at]

        # Latency, one row at a time: from the committing client's ack (INSERT returned; the LISTEN side
        # often hears of the commit first, so this can be negative) and from sending the INSERT.
        for index in range(1, 30):
            await _insert_meter_reading(pool, other_device, start + timedelta(seconds=index), 9.0)
            sent_at, committed_at = await _insert_meter_reading(
                pool, device, start + timedelta(seconds=index), float(index)
            )
            arrived_at, payload = await asyncio.wait_for(arrivals.get(), 5)
            assert payload["data"]["record"]["power_total_active"] == float(index)  # type: ignore[index]
            after_commit.append(arrived_at - committed_at)
            after_send.append(arrived_at - sent_at)
        assert arrivals.empty()
        for label, latencies in (("commit ack", after_commit), ("INSERT sent", after_send)):
            milliseconds = sorted(latency * 1000 for latency in latencies)
            print(
                f"\nrealtime delivery after {label}, {len(milliseconds)} inserts: "
                f"p50 {statistics.median(milliseconds):.2f} ms, "
                f"p95 {milliseconds[int(len(milliseconds) * 0.95) - 1]:.2f} ms, max {milliseconds[-1]:.2f} ms"
            )
    finally:
        await client.close()


async def test_a_bulk_insert_larger_than_one_notification_arrives_whole(
    pool: asyncpg.Pool, api_server: str, anon_key: str
) -> None:
    device = uuid.uuid4()
    arrivals: asyncio.Queue[PostgresChangesPayload] = asyncio.Queue()
    client = AsyncRealtimeClient(f"{api_server}/realtime/v1", token=anon_key, auto_reconnect=False)
    channel = client.channel("bess-bulk")
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert,
        arrivals.put_nowait,
        table="mg_bess_readings",
        schema="flux",
        filter="soe=gte.50",
    )
    try:
        await channel.subscribe()
        start = datetime(2026, 4, 2, tzinfo=UTC)
        # 300 rows in one statement: several NOTIFY chunks; soe 0..99.67, so 150 rows pass soe >= 50.
        await pool.execute(
            "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power)"
            " SELECT $1::timestamptz + make_interval(secs => step), $2, step / 3.0, 1"
            " FROM generate_series(0, 299) AS step",
            start,
            device,
        )
        received = [await asyncio.wait_for(arrivals.get(), 5) for _ in range(150)]
        soes = sorted(payload["data"]["record"]["soe"] for payload in received)  # type: ignore[index]
        assert soes[0] == 50.0
        assert len(soes) == 150
        assert all(soe >= 50 for soe in soes)
    finally:
        await client.close()


async def test_heartbeat_join_errors_and_leave_follow_the_phoenix_protocol(api_server: str, anon_key: str) -> None:
    async with websockets.connect(_websocket_url(api_server, anon_key)) as socket:

        async def exchange(message: dict[str, Any]) -> dict[str, Any]:
            await socket.send(json.dumps(message))
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), 5))
            return reply

        heartbeat = await exchange({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "7"})
        assert heartbeat == {
            "event": "phx_reply",
            "topic": "phoenix",
            "payload": {"status": "ok", "response": {}},
            "ref": "7",
        }
        bad_filter = await exchange(
            {
                "topic": "realtime:bad",
                "event": "phx_join",
                "ref": "8",
                "join_ref": "8",
                "payload": {
                    "config": {
                        "postgres_changes": [
                            {"event": "INSERT", "schema": "flux", "table": "mg_bess_readings", "filter": "soe=like.5"}
                        ]
                    }
                },
            }
        )
        assert bad_filter["payload"]["status"] == "error"
        assert "operator 'like'" in bad_filter["payload"]["response"]["reason"]
        joined = await exchange(
            {
                "topic": "realtime:good",
                "event": "phx_join",
                "ref": "9",
                "join_ref": "9",
                "payload": {"config": {"postgres_changes": [{"event": "*", "schema": "flux"}]}},
            }
        )
        assert joined["payload"]["status"] == "ok"
        assert joined["payload"]["response"]["postgres_changes"][0]["schema"] == "flux"
        system = json.loads(await asyncio.wait_for(socket.recv(), 5))
        assert system["event"] == "system"
        assert system["payload"]["status"] == "ok"
        left = await exchange({"topic": "realtime:good", "event": "phx_leave", "payload": {}, "ref": "10"})
        assert left["payload"] == {"status": "ok", "response": {}}
        closed = json.loads(await asyncio.wait_for(socket.recv(), 5))
        assert closed == {"event": "phx_close", "topic": "realtime:good", "payload": {}, "ref": "9"}


async def test_an_invalid_api_key_is_refused(api_server: str) -> None:
    forged = issue_key("not-the-secret-" + "x" * 32, "anon")
    client = AsyncRealtimeClient(f"{api_server}/realtime/v1", token=forged, auto_reconnect=False, max_retries=1)
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await client.connect()
    assert refused.value.response.status_code == 403

    with pytest.raises(websockets.exceptions.InvalidStatus):
        await websockets.connect(_websocket_url(api_server, issue_key(JWT_SECRET, "postgres")))
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await websockets.connect(api_server.replace("http://", "ws://") + "/realtime/v1/websocket?vsn=1.0.0")


async def test_realtime_py_filters_with_and_not_is_and_select(
    pool: asyncpg.Pool, api_server: str, anon_key: str
) -> None:
    device = uuid.uuid4()
    arrivals: asyncio.Queue[PostgresChangesPayload] = asyncio.Queue()
    states: list[RealtimeSubscribeStates] = []
    client = AsyncRealtimeClient(f"{api_server}/realtime/v1", token=anon_key, auto_reconnect=False)
    channel = client.channel("bess-conditions")
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert,
        arrivals.put_nowait,
        table="mg_bess_readings",
        schema="flux",
        # As realtime-py documents it: conditions joined by commas are an AND.
        filter=f"device_id=eq.{device},soe=gt.40,available_inverter_blocks=is.null,target_power=not.in.(0,9)",
        select=["soe", "target_power"],
    )
    try:
        await channel.subscribe(lambda state, error: states.append(state))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        start = datetime(2026, 7, 1, tzinfo=UTC)
        rows = [
            (device, 40.0, 1.0, None),  # soe not > 40
            (device, 60.0, 9.0, None),  # target_power in (0, 9)
            (device, 60.0, 1.0, 2),  # blocks not null
            (uuid.uuid4(), 60.0, 1.0, None),  # another device
            (device, 61.5, 2.5, None),  # the one that passes
        ]
        for offset, (row_device, soe, target_power, blocks) in enumerate(rows):
            await pool.execute(
                "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power, available_inverter_blocks)"
                " VALUES ($1, $2, $3, $4, $5)",
                start + timedelta(seconds=offset),
                row_device,
                soe,
                target_power,
                blocks,
            )
        payload = await asyncio.wait_for(arrivals.get(), 5)
        record = payload["data"]["record"]
        assert record is not None
        # select: the listed columns and the row's key (device_id, time) only.
        assert dict(record) == {
            "soe": 61.5,
            "target_power": 2.5,
            "device_id": str(device),
            "time": record["time"],
        }
        assert datetime.fromisoformat(str(record["time"])) == start + timedelta(seconds=4)
        assert {column["name"] for column in payload["data"]["columns"]} == {"soe", "target_power", "device_id", "time"}
        assert arrivals.empty()
    finally:
        await client.close()


async def test_the_handshake_log_holds_no_part_of_the_key(
    api_server: str, anon_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="telemetry-ingest", level="INFO")
    try:
        async with websockets.connect(_websocket_url(api_server, anon_key)) as socket:
            await socket.send(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}))
            await asyncio.wait_for(socket.recv(), 5)
    finally:
        logging.getLogger().handlers.clear()
    text = capsys.readouterr().err
    # uvicorn logged the handshake (so the test looks at the line that held the key), without the key.
    assert "/realtime/v1/websocket?apikey=[redacted]" in text
    for part in anon_key.split("."):
        assert part not in text
