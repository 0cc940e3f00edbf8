"""Realtime with the clients users run today: supabase-js (serializer 2.0.0 by default), raw 2.0.0 frames, filters."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets

from .js_clients import NodeClients, node_clients_fixture  # noqa: F401  (fixture, found by pytest under its name)
from .pipeline_fixtures import (  # noqa: F401  (fixtures, found by pytest under their names)
    anon_key_fixture,
    api_server_fixture,
    realtime_hub_fixture,
    repository_fixture,
)

pytestmark = pytest.mark.connected

SEED_DEVICE = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")  # the device of the documented example


async def _insert_bess(
    pool: asyncpg.Pool,
    device: uuid.UUID,
    soe: float,
    *,
    moment: datetime | None = None,
    blocks: int | None = None,
    source: int | None = None,
) -> None:
    await pool.execute(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power, available_inverter_blocks,"
        " command_source) VALUES ($1, $2, $3, 1.5, $4, $5)",
        moment or datetime.now(UTC),
        device,
        soe,
        blocks,
        source,
    )


async def test_the_documented_supabase_js_example_works_unchanged(
    pool: asyncpg.Pool, api_server: str, anon_key: str, node_clients: NodeClients
) -> None:
    async with node_clients("seed_example.mjs", url=api_server, anon_key=anon_key) as example:
        # supabase-js chose its serializer: no vsn pinned anywhere.
        assert await example.line() == "JOINED vsn=2.0.0"
        await _insert_bess(pool, uuid.uuid4(), 11.0)  # another device: filtered out, and it commits first
        await _insert_bess(pool, SEED_DEVICE, 42.5)
        printed = [await example.line()]
        while printed[-1] != "}":  # console.log prints the row over several lines
            printed.append(await example.line())
        assert printed[0] == "New reading: {"
        assert "".join(printed).count("device_id") == 1
        assert f"device_id: '{SEED_DEVICE}'," in [line.strip() for line in printed]
        assert "soe: 42.5," in [line.strip() for line in printed]


async def test_supabase_js_filter_builder_and_select(
    pool: asyncpg.Pool, api_server: str, anon_key: str, node_clients: NodeClients
) -> None:
    device = uuid.uuid4()
    options = {
        "bindings": [
            {
                "event": "INSERT",
                "schema": "flux",
                "table": "mg_bess_readings",
                # device_id=eq.X,soe=gt.40,available_inverter_blocks=is.null,command_source=not.in.(1,2)
                "builder": [
                    ["eq", "device_id", str(device)],
                    ["gt", "soe", 40],
                    ["is", "available_inverter_blocks", None],
                    ["not", "command_source", "in", [1, 2]],
                ],
                "select": ["soe"],
            }
        ]
    }
    async with node_clients("subscribe.mjs", json.dumps(options), url=api_server, anon_key=anon_key) as client:
        subscribed = await client.json_line()
        assert subscribed == {"status": "SUBSCRIBED", "error": None, "vsn": "2.0.0"}
        system = await client.json_line()
        assert system["system"]["message"] == "Subscribed to PostgreSQL"
        start = datetime(2026, 5, 1, tzinfo=UTC)
        refused = [
            dict(soe=40.0, source=0),  # soe not > 40
            dict(soe=80.0, source=0, blocks=3),  # blocks is not null
            dict(soe=80.0, source=1),  # command_source in (1, 2)
            dict(soe=80.0, source=None),  # NOT (null IN ...) is unknown: not sent
        ]
        for offset, row in enumerate(refused):
            await _insert_bess(
                pool,
                device,
                row["soe"],
                moment=start + timedelta(seconds=offset),
                blocks=row.get("blocks"),
                source=row["source"],
            )  # type: ignore[arg-type]
        await _insert_bess(pool, uuid.uuid4(), 90.0, moment=start, source=0)  # another device
        passing = start + timedelta(minutes=1)
        await _insert_bess(pool, device, 77.0, moment=passing, source=5)
        message = await client.json_line()
        change: dict[str, Any] = message["change"]
        assert change["eventType"] == "INSERT"
        # select: the listed column and the row's key (device_id, time), nothing else.
        assert set(change["new"]) == {"soe", "device_id", "time"}
        assert change["new"]["soe"] == 77.0
        assert change["new"]["device_id"] == str(device)
        assert datetime.fromisoformat(change["new"]["time"]) == passing


async def test_supabase_js_hears_why_a_filter_is_refused(
    api_server: str, anon_key: str, node_clients: NodeClients
) -> None:
    options = {
        "bindings": [{"event": "INSERT", "schema": "flux", "table": "mg_bess_readings", "filter": "soe=match.^4"}]
    }
    async with node_clients("subscribe.mjs", json.dumps(options), url=api_server, anon_key=anon_key) as client:
        refused = await client.json_line()
        assert refused["status"] == "CHANNEL_ERROR"
        assert "operator 'match'" in refused["error"]


def _url(api_server: str, token: str, vsn: str | None) -> str:
    query = f"apikey={token}" + (f"&vsn={vsn}" if vsn is not None else "")
    return api_server.replace("http://", "ws://") + f"/realtime/v1/websocket?{query}"


async def test_serializer_2_frames_are_arrays_with_the_join_ref(
    pool: asyncpg.Pool, api_server: str, anon_key: str
) -> None:
    device = uuid.uuid4()
    async with websockets.connect(_url(api_server, anon_key, "2.0.0")) as socket:

        async def receive() -> list[Any]:
            frame: list[Any] = json.loads(await asyncio.wait_for(socket.recv(), 5))
            return frame

        await socket.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))
        assert await receive() == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]
        binding = {"event": "INSERT", "schema": "flux", "table": "mg_bess_readings", "filter": f"device_id=eq.{device}"}
        await socket.send(
            json.dumps(["4", "4", "realtime:bess", "phx_join", {"config": {"postgres_changes": [binding]}}])
        )
        join_ref, ref, topic, event, payload = await receive()
        assert (join_ref, ref, topic, event, payload["status"]) == ("4", "4", "realtime:bess", "phx_reply", "ok")
        binding_id = payload["response"]["postgres_changes"][0]["id"]
        system = await receive()
        assert system[:4] == ["4", None, "realtime:bess", "system"]
        await _insert_bess(pool, device, 55.0)
        change = await receive()
        assert change[:4] == ["4", None, "realtime:bess", "postgres_changes"]
        assert change[4]["ids"] == [binding_id]
        assert change[4]["data"]["record"]["soe"] == 55.0
        # A Broadcast push (realtime-js sends these as binary in 2.0.0) is answered, not fatal.
        topic_bytes = b"realtime:bess"
        push = bytes([3, 1, 1, len(topic_bytes), 4, 0, 1]) + b"4" + b"5" + topic_bytes + b"ping" + b"{}"
        await socket.send(push)
        reply = await receive()
        assert reply[:4] == ["4", "5", "realtime:bess", "phx_reply"]
        assert reply[4]["status"] == "error"
        await socket.send(json.dumps(["4", "6", "realtime:bess", "phx_leave", {}]))
        assert await receive() == ["4", "6", "realtime:bess", "phx_reply", {"status": "ok", "response": {}}]
        assert await receive() == ["4", "4", "realtime:bess", "phx_close", {}]


async def test_an_unknown_serializer_is_refused_with_the_reason(api_server: str, anon_key: str) -> None:
    async with websockets.connect(_url(api_server, anon_key, "3.0.0")) as socket:
        with pytest.raises(websockets.exceptions.ConnectionClosed) as refused:
            await asyncio.wait_for(socket.recv(), 5)
    assert refused.value.rcvd is not None
    assert refused.value.rcvd.code == 1008
    assert refused.value.rcvd.reason == "unsupported vsn '3.0.0': this server speaks 1.0.0 and 2.0.0"
    # No vsn at all is Phoenix's default, 1.0.0: object frames.
    async with websockets.connect(_url(api_server, anon_key, None)) as socket:
        await socket.send(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}))
        assert json.loads(await asyncio.wait_for(socket.recv(), 5))["event"] == "phx_reply"
