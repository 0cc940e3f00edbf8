"""EV charging sessions through the readings consumer, on the real broker and database: the start and end messages
of a session merge into one row in either order, and an invalid session is dead-lettered with its reason."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from gridloop_common.contracts import routing
from gridloop_common.messaging import DEAD_LETTER_REASON_HEADER

from .pipeline_fixtures import (  # noqa: F401  (fixtures, found by pytest under their names)
    DeadLetters,
    HandledMessages,
    broker_fixture,
    dead_letters_fixture,
    ingest_consumer_fixture,
    publish_batch_fixture,
    repository_fixture,
)

pytestmark = pytest.mark.connected

Publish = Callable[[str, list[object], str], Awaitable[None]]


def _session(session_id: uuid.UUID, device_id: uuid.UUID, **end: object) -> dict[str, object]:
    return {
        "session_id": str(session_id),
        "device_id": str(device_id),
        "transaction_id": "7",
        "plugged_in_at": "2026-12-08T17:30:00Z",
        **end,
    }


@pytest.mark.parametrize("end_first", [False, True])
async def test_a_sessions_start_and_end_make_one_row_in_either_order(
    pool: asyncpg.Pool, ingest_consumer: HandledMessages, publish_batch: Publish, end_first: bool
) -> None:
    session_id, device_id = uuid.uuid4(), uuid.uuid4()
    start = _session(session_id, device_id, initial_soc_pct=35.0)
    end = _session(
        session_id,
        device_id,
        plugged_out_at="2026-12-08T19:00:00Z",
        energy_kwh=12.5,
        initial_soc_pct=36.0,  # the first SoC seen, which the start message may have lacked: the start's wins
        final_soc_pct=80.0,
        stop_reason="EVDisconnected",
    )
    for index, message in enumerate([end, start] if end_first else [start, end]):
        message_id = f"session-{session_id}-{index}"
        await publish_batch(routing.RoutingKeys.TELEMETRY_EV_SESSION, [message], message_id)
        await ingest_consumer.wait_for(message_id)

    rows = await pool.fetch("SELECT * FROM flux.mg_ev_sessions WHERE device_id = $1", device_id)
    assert len(rows) == 1
    row = rows[0]
    assert row["session_id"] == session_id
    assert row["plugged_out_at"].isoformat() == "2026-12-08T19:00:00+00:00"
    assert (row["energy_kwh"], row["final_soc_pct"], row["stop_reason"]) == (12.5, 80.0, "EVDisconnected")
    assert row["initial_soc_pct"] == (36.0 if end_first else 35.0)


async def test_an_invalid_session_is_dead_lettered_and_the_rest_stored(
    pool: asyncpg.Pool, ingest_consumer: HandledMessages, dead_letters: DeadLetters, publish_batch: Publish
) -> None:
    device_id = uuid.uuid4()
    good = _session(uuid.uuid4(), device_id)
    bad = _session(uuid.uuid4(), device_id, final_soc_pct=140.0)
    message_id = f"sessions-{uuid.uuid4()}"
    await publish_batch(routing.RoutingKeys.TELEMETRY_EV_SESSION, [good, bad], message_id)

    dead = await dead_letters.find(f"{message_id}:1")
    reason = (dead.headers or {}).get(DEAD_LETTER_REASON_HEADER)
    assert isinstance(reason, str) and reason.startswith("invalid session: final_soc_pct")
    await ingest_consumer.wait_for(message_id)
    assert await pool.fetchval("SELECT count(*) FROM flux.mg_ev_sessions WHERE device_id = $1", device_id) == 1
