"""Storing reading records: COPY straight into the table, and the idempotent path when rows exist already."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from telemetry_ingest.ingest.repository import ReadingKind, ReadingsRepository, table_columns

pytestmark = pytest.mark.connected


def _record(device: uuid.UUID, moment: datetime, power_kw: float) -> tuple[object, ...]:
    return (moment, device, 100.0, power_kw, 1, None)


async def test_new_rows_go_in_and_a_partly_stored_batch_adds_only_its_new_rows(pool: asyncpg.Pool) -> None:
    repository = ReadingsRepository(pool)
    device = uuid.uuid4()
    start = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
    first = [_record(device, start + timedelta(seconds=5 * index), float(index)) for index in range(4)]

    assert await repository.insert_records(ReadingKind.BESS, first) == 4

    # Two of these exist (a redelivery overlapping new readings): the COPY fails on the key, the retry skips them.
    second = [
        _record(device, start + timedelta(seconds=5 * index), 99.0 if index < 4 else float(index))
        for index in (2, 3, 4, 5)
    ]
    assert await repository.insert_records(ReadingKind.BESS, second) == 2

    rows = await pool.fetch(
        "SELECT time, target_power FROM flux.mg_bess_readings WHERE device_id = $1 ORDER BY time", device
    )
    # The stored rows keep their first values: a redelivery never overwrites.
    assert [(row["time"], row["target_power"]) for row in rows] == [
        (start + timedelta(seconds=5 * index), float(index)) for index in range(6)
    ]


async def test_duplicates_within_one_batch_are_stored_once(pool: asyncpg.Pool) -> None:
    repository = ReadingsRepository(pool)
    device = uuid.uuid4()
    moment = datetime(2026, 4, 1, 13, 0, tzinfo=UTC)
    assert await repository.insert_records(ReadingKind.BESS, [_record(device, moment, 1.0)] * 3) == 1
    assert await pool.fetchval("SELECT count(*) FROM flux.mg_bess_readings WHERE device_id = $1", device) == 1


async def test_both_paths_mark_the_touched_periods_for_the_rollup_refresher(pool: asyncpg.Pool) -> None:
    repository = ReadingsRepository(pool)
    device = uuid.uuid4()
    start = datetime(2026, 4, 1, 14, 0, tzinfo=UTC)
    meter_columns = len(table_columns(ReadingKind.METER)) - 2  # the measures, after time and device_id
    fresh = [(start, device, *([1.0] * meter_columns))]
    assert await repository.insert_records(ReadingKind.METER, fresh) == 1
    later = start + timedelta(minutes=30)
    assert await repository.insert_records(ReadingKind.METER, [*fresh, (later, device, *([2.0] * meter_columns))]) == 1
    marked = await pool.fetch(
        "SELECT period_start FROM ingest.meter_rollup_dirty WHERE device_id = $1 ORDER BY period_start", device
    )
    assert [row["period_start"] for row in marked] == [start, later]


async def test_a_value_its_column_cannot_hold_stores_nothing(pool: asyncpg.Pool) -> None:
    repository = ReadingsRepository(pool)
    device = uuid.uuid4()
    moment = datetime(2026, 4, 1, 15, 0, tzinfo=UTC)
    with pytest.raises((ValueError, asyncpg.DataError)):
        await repository.insert_records(
            ReadingKind.BESS, [_record(device, moment, 1.0), _record(device, moment + timedelta(seconds=5), 1e39)]
        )
    assert await pool.fetchval("SELECT count(*) FROM flux.mg_bess_readings WHERE device_id = $1", device) == 0
