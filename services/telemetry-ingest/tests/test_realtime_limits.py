"""Realtime against abuse and bad input: limits, malformed frames, and channels ending with their token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from telemetry_ingest.api.auth import issue_key
from telemetry_ingest.realtime import RealtimeLimits

from .pipeline_fixtures import (  # noqa: F401  (fixtures, found by pytest under their names)
    JWT_SECRET,
    anon_key_fixture,
    api_server_fixture,
    realtime_hub_fixture,
    repository_fixture,
)

pytestmark = pytest.mark.connected

LIMITS = RealtimeLimits()  # the defaults the service runs with


def _url(api_server: str, token: str) -> str:
    return api_server.replace("http://", "ws://") + f"/realtime/v1/websocket?apikey={token}&vsn=1.0.0"


async def _receive(socket: ClientConnection, *, timeout_s: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout_s))
    return message


def _join(topic: str, ref: str, bindings: list[dict[str, Any]], **payload: Any) -> str:
    return json.dumps(
        {
            "topic": topic,
            "event": "phx_join",
            "ref": ref,
            "join_ref": ref,
            "payload": {"config": {"postgres_changes": bindings}, **payload},
        }
    )


def _bess_binding(filter_text: str) -> dict[str, Any]:
    return {"event": "INSERT", "schema": "flux", "table": "mg_bess_readings", "filter": filter_text}


async def _joined(
    socket: ClientConnection, topic: str, ref: str, bindings: list[dict[str, Any]], **payload: Any
) -> dict[str, Any]:
    """Join and return the reply; a successful join with bindings is followed by its system message."""
    await socket.send(_join(topic, ref, bindings, **payload))
    reply = await _receive(socket)
    if reply["payload"]["status"] == "ok" and bindings:
        assert (await _receive(socket))["event"] == "system"
    return reply


@contextlib.asynccontextmanager
async def _sockets(api_server: str, token: str, count: int) -> AsyncIterator[list[ClientConnection]]:
    async with contextlib.AsyncExitStack() as stack:
        # max_queue=None: the test reads none of their messages, and closing must not wait on a full queue.
        yield [
            await stack.enter_async_context(websockets.connect(_url(api_server, token), max_queue=None))
            for _ in range(count)
        ]


async def test_one_abusive_client_is_bounded_and_others_stay_served(
    pool: asyncpg.Pool, api_server: str, anon_key: str
) -> None:
    device = uuid.uuid4()
    # The probe's attack: one join of 150,000 bindings (a 13.5 MB frame); the socket is closed, unread.
    async with websockets.connect(_url(api_server, anon_key), max_size=None) as attacker:
        huge = [_bess_binding(f"soe=gt.{index % 100}") for index in range(150_000)]
        await attacker.send(_join("realtime:flood", "1", huge))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await _receive(attacker, timeout_s=30)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert f"frame larger than {LIMITS.frame_bytes} bytes" in closed.value.rcvd.reason

    async with (
        websockets.connect(_url(api_server, anon_key)) as watcher,
        _sockets(api_server, anon_key, LIMITS.sockets_per_address - 1) as attackers,
    ):
        watched = await _joined(watcher, "realtime:mine", "1", [_bess_binding(f"device_id=eq.{device}")])
        assert watched["payload"]["status"] == "ok"
        # One address holds at most sockets_per_address connections (the watcher is one of them).
        async with websockets.connect(_url(api_server, anon_key)) as one_too_many:
            with pytest.raises(websockets.exceptions.ConnectionClosed) as refused:
                await _receive(one_too_many)
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == 1013
        assert (
            f"too many connections from this address (limit {LIMITS.sockets_per_address})" == refused.value.rcvd.reason
        )

        too_many = [_bess_binding(f"soe=gt.{index}") for index in range(LIMITS.bindings_per_join + 1)]
        reply = await _joined(attackers[0], "realtime:too-many", "1", too_many)
        assert reply["payload"]["status"] == "error"
        assert f"(limit {LIMITS.bindings_per_join})" in reply["payload"]["response"]["reason"]

        # Every socket fills itself with distinct filters the index cannot narrow (soe=gt.X: checked for each row;
        # soe is at most 100, so none matches and the cost measured is the matching, as in the probe).
        joins_per_socket = LIMITS.bindings_per_socket // LIMITS.bindings_per_join
        for number, socket in enumerate(attackers):
            for channel in range(joins_per_socket):
                thresholds = (
                    100 + ((number * joins_per_socket + channel) * 100 + index) / 1000 for index in range(100)
                )
                full_join = [_bess_binding(f"soe=gt.{threshold}") for threshold in thresholds]
                reply = await _joined(socket, f"realtime:fill-{channel}", str(channel + 2), full_join)
                assert reply["payload"]["status"] == "ok"
        reply = await _joined(attackers[0], "realtime:one-more", "99", [_bess_binding("soe=gt.1")])
        assert reply["payload"]["status"] == "error"
        assert f"(limit {LIMITS.bindings_per_socket})" in reply["payload"]["response"]["reason"]

        # Ingest goes on, and the watcher hears of its device's rows promptly, while 9,500 filters are checked
        # for each inserted row. The bound is generous: this is not a benchmark.
        for batch in range(5):
            start = datetime(2026, 6, 1, tzinfo=UTC) + timedelta(minutes=batch)
            began = time.perf_counter()
            await pool.execute(
                "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power)"
                " SELECT $1::timestamptz + make_interval(secs => step), $2, 50 + step, 1"
                " FROM generate_series(0, 19) AS step",
                start,
                device,
            )
            inserted = time.perf_counter() - began
            assert inserted < 3.0, f"a 20-row insert took {inserted:.1f} s"
            for step in range(20):
                change = await _receive(watcher, timeout_s=5.0)
                assert change["payload"]["data"]["record"]["soe"] == 50 + step
            assert time.perf_counter() - began < 5.0
            # The attackers' queues are not read here; the server keeps them, bounded, and the watcher is served.


async def test_malformed_frames_get_an_error_or_a_close_code_never_a_traceback(
    api_server: str, anon_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with websockets.connect(_url(api_server, anon_key)) as socket:
        await socket.send(
            json.dumps(
                {"topic": "realtime:x", "event": "phx_join", "ref": "1", "payload": {"config": {"postgres_changes": 5}}}
            )
        )
        reply = await _receive(socket)
        assert reply["payload"]["status"] == "error"
        assert "postgres_changes" in reply["payload"]["response"]["reason"]
        await socket.send(
            json.dumps({"topic": "realtime:y", "event": "phx_join", "ref": "2", "payload": {"config": []}})
        )
        assert (await _receive(socket))["payload"]["status"] == "error"
        await socket.send(
            _join(
                "realtime:z", "3", [{"event": "INSERT", "schema": "flux", "table": "mg_bess_readings", "filter": [1]}]
            )
        )
        assert (await _receive(socket))["payload"]["response"]["reason"].startswith("filter is a string")
        # The connection is still served.
        await socket.send(json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "3"}))
        assert (await _receive(socket))["ref"] == "3"

    for frame, code in (("[" * 100_000 + "]" * 100_000, 1007), (b"\x00\x01binary", 1003), ("not json", 1007)):
        async with websockets.connect(_url(api_server, anon_key)) as socket:
            await socket.send(frame)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await _receive(socket)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == code
            assert closed.value.rcvd.reason
    assert [
        record.getMessage() for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR
    ] == []


async def test_a_channel_ends_when_its_token_expires_unless_refreshed(
    pool: asyncpg.Pool, api_server: str, anon_key: str
) -> None:
    device = uuid.uuid4()
    short_lived = issue_key(JWT_SECRET, "authenticated", lifetime_seconds=2)
    binding = [_bess_binding(f"device_id=eq.{device}")]
    async with websockets.connect(_url(api_server, anon_key)) as socket:
        assert (await _joined(socket, "realtime:lapsing", "1", binding, access_token=short_lived))["payload"][
            "status"
        ] == "ok"
        assert (await _joined(socket, "realtime:renewed", "2", binding, access_token=short_lived))["payload"][
            "status"
        ] == "ok"
        renewed = issue_key(JWT_SECRET, "authenticated", lifetime_seconds=3600)
        await socket.send(
            json.dumps(
                {"topic": "realtime:renewed", "event": "access_token", "ref": "3", "payload": {"access_token": renewed}}
            )
        )
        # Supabase Realtime's order: a system message saying why, then phx_close (realtime-js: CLOSED).
        system = await _receive(socket, timeout_s=10)
        assert system["event"] == "system"
        assert system["topic"] == "realtime:lapsing"
        assert system["payload"]["status"] == "error"
        assert "expired" in system["payload"]["message"]
        assert await _receive(socket) == {"event": "phx_close", "topic": "realtime:lapsing", "payload": {}, "ref": "1"}

        # Both tokens expired at the same moment; the refreshed channel still delivers.
        await pool.execute(
            "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES (now(), $1, 33, 1)", device
        )
        change = await _receive(socket)
        assert (change["event"], change["topic"]) == ("postgres_changes", "realtime:renewed")
        assert change["payload"]["data"]["record"]["soe"] == 33
