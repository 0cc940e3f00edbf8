"""The flux schema on the real PostgreSQL: migrations, keys, partitions, rollups, RPCs and roles."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gridloop_common.db import apply_migrations, load_migrations
from telemetry_ingest.api.postgrest import error_from_database

pytestmark = pytest.mark.connected

OWNER = "telemetry-ingest"

BASE = datetime(2026, 1, 15, 0, 0, tzinfo=UTC)  # a bucket boundary of both widths
METER_COLUMNS = ("device_id", "time", "power_total_active", "energy_imported_active")


def meter_rows(device: uuid.UUID, minutes: range, *, start: datetime = BASE) -> list[tuple[Any, ...]]:
    """One reading a minute: power 10 + minute, counter rising 0.5 kWh a minute from 100."""
    return [(device, start + timedelta(minutes=minute), 10.0 + minute, 100.0 + 0.5 * minute) for minute in minutes]


async def insert_meter(pool: asyncpg.Pool, rows: list[tuple[Any, ...]], *, ignore_duplicates: bool = False) -> None:
    conflict = " ON CONFLICT DO NOTHING" if ignore_duplicates else ""
    await pool.executemany(
        f"INSERT INTO flux.mg_meter_readings ({', '.join(METER_COLUMNS)}) VALUES ($1, $2, $3, $4){conflict}", rows
    )


async def buckets(
    pool: asyncpg.Pool, width: int, device: uuid.UUID, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    rows = await pool.fetch(f"SELECT * FROM flux.get_meter_readings_{width}m($1, $2, $3)", start, end, [device])
    return [dict(row) for row in rows]


async def test_migrations_apply_once_and_reapply_as_a_no_op(pool: asyncpg.Pool) -> None:
    assert await apply_migrations(pool, owner=OWNER, migrations=load_migrations("telemetry_ingest")) == []
    tables = {
        row["table_name"]
        for row in await pool.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'flux'")
    }
    assert {"mg_device_registry", "mg_bess_readings", "mg_meter_readings", "market_data", "market_data_types"} <= tables
    types = await pool.fetch("SELECT id, name, unit FROM flux.market_data_types ORDER BY id")
    assert [(row["id"], row["name"], row["unit"]) for row in types] == [
        (1, "niv_estimate", "MW"),
        (2, "wholesale_price", "£/MWh"),
        (3, "imbalance_price", "£/MWh"),
        (4, "axle_dispatch", "kW"),
    ]
    roles = await pool.fetch(
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')"
    )
    assert sorted((row["rolname"], row["rolcanlogin"]) for row in roles) == [
        ("anon", False),
        ("authenticated", False),
        ("service_role", False),
    ]


async def test_unique_device_time_rejects_a_duplicate_as_409(pool: asyncpg.Pool) -> None:
    device = uuid.uuid4()
    insert = "INSERT INTO flux.mg_bess_readings (device_id, time, soe, target_power) VALUES ($1, $2, 50, -2.5)"
    await pool.execute(insert, device, BASE)
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await pool.execute(insert, device, BASE)
    error = error_from_database(caught.value)
    assert (error.status, error.code) == (409, "23505")
    assert error.details is not None and "already exists" in error.details
    with pytest.raises(asyncpg.CheckViolationError) as out_of_range:
        await pool.execute(insert.replace("50", "150"), device, BASE + timedelta(minutes=1))
    assert error_from_database(out_of_range.value).status == 400


async def test_readings_of_any_date_are_accepted_and_moved_into_a_new_partition(pool: asyncpg.Pool) -> None:
    device = uuid.uuid4()
    far = datetime(2031, 3, 10, tzinfo=UTC)  # beyond the partitions the migration created
    await pool.execute(
        "INSERT INTO flux.mg_bess_readings (device_id, time, soe, target_power) VALUES ($1, $2, 10, 0)", device, far
    )
    assert await pool.fetchval("SELECT count(*) FROM flux.mg_bess_readings_default WHERE device_id = $1", device) == 1
    assert await pool.fetchval("SELECT flux.ensure_reading_partitions('2031-03-01', 0)") == 2
    assert await pool.fetchval("SELECT flux.ensure_reading_partitions('2031-03-01', 0)") == 0
    assert await pool.fetchval("SELECT count(*) FROM flux.mg_bess_readings_y2031m03 WHERE device_id = $1", device) == 1
    assert await pool.fetchval("SELECT count(*) FROM flux.mg_bess_readings_default WHERE device_id = $1", device) == 0


async def test_rollups_average_and_interpolate_counter_deltas(pool: asyncpg.Pool) -> None:
    device = uuid.uuid4()
    await insert_meter(pool, meter_rows(device, range(60)))
    five = await buckets(pool, 5, device, BASE, BASE + timedelta(hours=1))
    assert [row["time_b"] for row in five] == [BASE + timedelta(minutes=5 * index) for index in range(12)]
    assert [row["power_total_active_avg"] for row in five] == [12.0 + 5 * index for index in range(12)]
    assert [row["energy_imported_active_min"] for row in five] == [100.0 + 2.5 * index for index in range(12)]
    # Each bucket's own readings rise 2.0; the step to the next bucket's first reading adds 0.5,
    # except for the last bucket, which has no next reading yet.
    assert [row["energy_imported_active_delta"] for row in five] == [2.5] * 11 + [2.0]
    assert five[0]["energy_exported_active_delta"] is None
    thirty = await buckets(pool, 30, device, BASE, BASE + timedelta(hours=1))
    assert [(row["power_total_active_avg"], row["energy_imported_active_delta"]) for row in thirty] == [
        (24.5, 15.0),
        (54.5, 14.5),
    ]
    assert sum(row["energy_imported_active_delta"] for row in five) == pytest.approx(59 * 0.5)


async def test_late_and_duplicate_readings_give_the_same_rollups_as_in_order_ones(pool: asyncpg.Pool) -> None:
    in_order, shuffled = uuid.uuid4(), uuid.uuid4()
    await insert_meter(pool, meter_rows(in_order, range(45)))
    await insert_meter(pool, meter_rows(shuffled, range(0, 10)))
    await insert_meter(pool, meter_rows(shuffled, range(30, 45)))
    await insert_meter(pool, meter_rows(shuffled, range(10, 30)))  # late: fills the gap
    duplicates = [(device, time, 999.0, 999.0) for device, time, _, _ in meter_rows(shuffled, range(5, 40))]
    await insert_meter(pool, duplicates, ignore_duplicates=True)
    for width in (5, 30):
        expected = await buckets(pool, width, in_order, BASE, BASE + timedelta(hours=1))
        actual = await buckets(pool, width, shuffled, BASE, BASE + timedelta(hours=1))
        assert [{**row, "device_id": None} for row in actual] == [{**row, "device_id": None} for row in expected]


async def test_copy_into_a_staging_table_then_insert_refreshes_the_rollups(pool: asyncpg.Pool) -> None:
    device = uuid.uuid4()
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "CREATE TEMP TABLE staged_meter (LIKE flux.mg_meter_readings INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await connection.copy_records_to_table(
            "staged_meter", records=meter_rows(device, range(30)), columns=METER_COLUMNS
        )
        # Two rows already stored, with other values: the stored ones are kept.
        await connection.execute(
            "INSERT INTO flux.mg_meter_readings (device_id, time, power_total_active) VALUES ($1, $2, 0), ($1, $3, 0)",
            device,
            BASE,
            BASE + timedelta(minutes=1),
        )
        await connection.execute(
            "INSERT INTO flux.mg_meter_readings SELECT * FROM staged_meter ON CONFLICT (device_id, time) DO NOTHING"
        )
    five = await buckets(pool, 5, device, BASE, BASE)
    assert five[0]["power_total_active_avg"] == pytest.approx((0 + 0 + 12 + 13 + 14) / 5)
    # The first two readings carry no counter now, so the bucket's counter starts at minute 2.
    assert five[0]["energy_imported_active_min"] == 101.0
    # COPY straight into the partitioned table fires the statement trigger as well.
    direct = uuid.uuid4()
    async with pool.acquire() as connection:
        await connection.copy_records_to_table(
            "mg_meter_readings", schema_name="flux", records=meter_rows(direct, range(10)), columns=METER_COLUMNS
        )
    assert len(await buckets(pool, 5, direct, BASE, BASE + timedelta(hours=1))) == 2


async def test_counter_resets_and_deleted_readings_keep_rollups_right(pool: asyncpg.Pool) -> None:
    device = uuid.uuid4()
    values = [100.0, 101.0, 102.0, 1.0, 2.0]  # the meter was replaced after the third reading
    await insert_meter(
        pool, [(device, BASE + timedelta(minutes=minute), 1.0, value) for minute, value in enumerate(values)]
    )
    (bucket,) = await buckets(pool, 5, device, BASE, BASE)
    assert bucket["energy_imported_active_delta"] == pytest.approx(4.0)
    await pool.execute(
        "DELETE FROM flux.mg_meter_readings WHERE device_id = $1 AND time >= $2", device, BASE + timedelta(minutes=3)
    )
    (bucket,) = await buckets(pool, 5, device, BASE, BASE)
    assert bucket["energy_imported_active_delta"] == pytest.approx(2.0)
    await pool.execute("DELETE FROM flux.mg_meter_readings WHERE device_id = $1", device)
    assert await buckets(pool, 5, device, BASE, BASE) == []


async def test_rpc_bounds_are_inclusive_and_deltas_do_not_depend_on_the_window(pool: asyncpg.Pool) -> None:
    device, other = uuid.uuid4(), uuid.uuid4()
    await insert_meter(pool, meter_rows(device, range(60)) + meter_rows(other, range(60)))
    window = await buckets(pool, 5, device, BASE + timedelta(minutes=10), BASE + timedelta(minutes=20))
    assert [row["time_b"] for row in window] == [BASE + timedelta(minutes=minute) for minute in (10, 15, 20)]
    whole = await buckets(pool, 5, device, BASE, BASE + timedelta(hours=1))
    assert [row["energy_imported_active_delta"] for row in window] == [
        row["energy_imported_active_delta"] for row in whole[2:5]
    ]
    both = await pool.fetch(
        "SELECT DISTINCT device_id FROM flux.get_meter_readings_30m($1, $2, NULL)", BASE, BASE + timedelta(hours=1)
    )
    assert {device, other} <= {row["device_id"] for row in both}


async def test_rpc_defaults_to_the_last_24_hours(pool: asyncpg.Pool) -> None:
    device = uuid.uuid4()
    now = datetime.now(UTC)
    recent, old = now - timedelta(hours=2), now - timedelta(hours=30)
    await insert_meter(pool, [(device, recent, 1.0, 1.0), (device, old, 1.0, 1.0)])
    for width in (5, 30):
        rows = await pool.fetch(f"SELECT * FROM flux.get_meter_readings_{width}m(device_ids => $1)", [device])
        assert len(rows) == 1 and rows[0]["time_b"] <= recent < rows[0]["time_b"] + timedelta(minutes=width)
        columns = list(rows[0].keys())
        assert columns[:3] == ["time_b", "device_id", "frequency_avg"]
        assert "energy_exported_active_delta" in columns and "energy_imported_active_min" in columns


async def allowed(pool: asyncpg.Pool, role: str, statement: str, *arguments: Any) -> bool:
    """Whether ``role`` may run ``statement``; nothing it does is kept."""
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute(f"SET LOCAL ROLE {role}")
            await connection.execute(statement, *arguments)
            return True
        except asyncpg.InsufficientPrivilegeError:
            return False
        finally:
            await transaction.rollback()


@pytest.mark.parametrize(
    ("role", "may_write_readings", "may_register"),
    [("anon", False, False), ("authenticated", True, False), ("service_role", True, True)],
)
async def test_role_grants(pool: asyncpg.Pool, role: str, may_write_readings: bool, may_register: bool) -> None:
    device = uuid.uuid4()
    assert await allowed(pool, role, "SELECT * FROM flux.mg_bess_readings LIMIT 1")
    assert await allowed(pool, role, "SELECT * FROM flux.get_meter_readings_5m()")
    reading = "INSERT INTO flux.mg_meter_readings (device_id, time) VALUES ($1, now())"
    assert await allowed(pool, role, reading, device) is may_write_readings
    register = "INSERT INTO flux.mg_device_registry (name, type, site) VALUES ($1, 'bess', 'X')"
    assert await allowed(pool, role, register, f"device-{device}") is may_register
    partitions = "SELECT flux.ensure_reading_partitions('2030-01-01', 0)"
    assert await allowed(pool, role, partitions) is (role == "service_role")
