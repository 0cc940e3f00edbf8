"""A site's load and PV history read from schema flux, and external forecasts that win over it, against the
real database (telemetry-ingest's tables and rollup triggers, the optimizer's migration 0002)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gridloop_common.contracts import routing
from gridloop_common.contracts.forecasts import ForecastQuantity
from gridloop_common.messaging import Delivery, PoisonMessage, RpcClient, RpcError, open_broker, rpc_handler
from gridloop_common.settings import AmqpSettings
from optimizer.forecasts import ForecastMethod
from optimizer.handlers import put_external_forecast
from optimizer.repository import ForecastRepository
from optimizer.site_forecasts import site_forecasts

pytestmark = pytest.mark.connected

SITE = "FCAST"
BASE = datetime(2026, 6, 1, tzinfo=UTC)
MINUTES = 120
END = BASE + timedelta(minutes=MINUTES)
BATTERY_GAP = range(30, 45)  # minutes without a battery reading
MINUTE = timedelta(minutes=1)


def grid_kw(minute: int) -> float:
    """The grid meter's import: 1 kW, rising by 0.25 kW every quarter hour."""
    return 1.0 + 0.25 * (minute // 15)


BATTERY_KW = 0.5  # charging
PV_METER_KW = -1.5  # a PV meter reads generation as export


async def register(
    pool: asyncpg.Pool, name: str, device_type: str, site: str, metadata: dict[str, object]
) -> uuid.UUID:
    device_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, $2, $3, $4) RETURNING id",
        name,
        device_type,
        site,
        metadata,
    )
    return device_id


async def meter_readings(pool: asyncpg.Pool, device_id: uuid.UUID, power_at: dict[int, float]) -> None:
    # One statement, as the ingest's COPY is one: the rollup triggers run once per statement.
    await pool.execute(
        "INSERT INTO flux.mg_meter_readings (time, device_id, power_total_active)"
        " SELECT reading.time, $1, reading.power FROM unnest($2::timestamptz[], $3::real[]) AS reading (time, power)",
        device_id,
        [BASE + MINUTE * minute for minute in power_at],
        list(power_at.values()),
    )


@pytest.fixture
async def site(pool: asyncpg.Pool) -> None:
    """A site with a grid meter (named by its battery), a PV meter, a sub-meter, and another site's meter."""
    grid = await register(pool, "fcast-grid", "meter", SITE, {})
    pv = await register(pool, "fcast-pv", "meter", SITE, {"meter_role": "pv"})
    submeter = await register(pool, "fcast-heat-pump", "meter", SITE, {"meter_role": "submeter"})
    elsewhere = await register(pool, "other-grid", "meter", "OTHER", {})
    battery = await register(pool, "fcast-battery", "bess", SITE, {"site_meter": "fcast-grid", "max_power_kw": 5})
    minutes = range(MINUTES)
    await meter_readings(pool, grid, {minute: grid_kw(minute) for minute in minutes})
    await meter_readings(pool, pv, dict.fromkeys(minutes, PV_METER_KW))
    await meter_readings(pool, submeter, dict.fromkeys(minutes, 100.0))
    await meter_readings(pool, elsewhere, dict.fromkeys(minutes, 100.0))
    await pool.executemany(
        "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power) VALUES ($1, $2, 50, $3)",
        [(BASE + MINUTE * minute, battery, BATTERY_KW) for minute in minutes if minute not in BATTERY_GAP],
    )


def expected_load(first_minute: int, last_minute: int) -> float | None:
    """load = grid - battery + pv over minutes [first, last), as the repository derives it."""
    minutes = range(first_minute, last_minute)
    if all(minute in BATTERY_GAP for minute in minutes):
        return None
    grid = sum(grid_kw(minute) for minute in minutes) / len(minutes)
    return grid - BATTERY_KW - PV_METER_KW


@pytest.mark.parametrize(
    "step_minutes",
    [
        15,  # from the 5-minute rollups
        60,  # from the 30-minute rollups
        8,  # not a whole number of buckets: from the readings
    ],
)
async def test_history_is_grid_minus_battery_plus_pv_per_step(
    pool: asyncpg.Pool, site: None, step_minutes: int
) -> None:
    steps = MINUTES // step_minutes

    history = await ForecastRepository(pool).site_history(
        SITE, end=END, step=timedelta(minutes=step_minutes), steps=steps
    )

    assert history.devices.grid_meters == ("fcast-grid",)
    assert history.devices.pv_meters == ("fcast-pv",)
    assert history.devices.batteries == ("fcast-battery",)
    expected = [expected_load(index * step_minutes, (index + 1) * step_minutes) for index in range(steps)]
    assert history.load.values == pytest.approx(expected)
    assert history.pv.values == pytest.approx([1.5] * steps)
    assert history.load.start == BASE


async def test_a_step_without_a_reading_of_every_device_has_no_load(pool: asyncpg.Pool, site: None) -> None:
    history = await ForecastRepository(pool).site_history(SITE, end=END, step=timedelta(minutes=15), steps=12)

    # Four steps before any reading, then the 30-45 minute battery gap.
    assert history.load.values[:4] == (None,) * 4
    assert history.load.values[4 + 2] is None
    assert history.pv.values[4 + 2] == pytest.approx(1.5)


async def test_a_site_without_meters_has_an_empty_history(pool: asyncpg.Pool, site: None) -> None:
    history = await ForecastRepository(pool).site_history("NOWHERE", end=END, step=timedelta(minutes=15), steps=8)

    assert history.load.values == (None,) * 8
    assert not history.pv_measured


def put_delivery(body: dict[str, object]) -> Delivery:
    return Delivery(
        body=json.dumps(body).encode(),
        headers={},
        routing_key=routing.RoutingKeys.OPTIMIZER_FORECASTS_PUT,
        exchange=routing.RPC_EXCHANGE,
        message_id=None,
        correlation_id="1",
        reply_to="amq.rabbitmq.reply-to",
        attempt=1,
        redelivered=False,
    )


async def test_an_external_forecast_wins_where_it_covers_and_until_it_expires(pool: asyncpg.Pool, site: None) -> None:
    repository = ForecastRepository(pool)
    now = END - timedelta(minutes=5)
    reply = await put_external_forecast(
        put_delivery(
            {
                "site": SITE,
                "quantity": "load",
                "start": (END + timedelta(minutes=30)).isoformat(),
                "step": 30,
                "values": [9.0],
                "source": "site EMS",
            }
        ),
        repository,
        now=now,
    )
    await put_external_forecast(
        put_delivery(
            {
                "site": SITE,
                "quantity": "pv",
                "start": (END - timedelta(minutes=60)).isoformat(),
                "step": 60,
                "values": [4.0, 4.0],
                "expires_at": (END + timedelta(minutes=10)).isoformat(),
            }
        ),
        repository,
        now=now,
    )

    stored = json.loads(reply)
    forecasts = await site_forecasts(
        repository, SITE, start=END, step=timedelta(minutes=15), steps=6, now=now, history_days=1
    )

    assert stored["steps"] == 1
    assert stored["end"] == (END + timedelta(minutes=60)).isoformat()
    assert forecasts.load.values[2:4] == (9.0, 9.0)
    assert forecasts.load.methods[2:4] == (ForecastMethod.EXTERNAL, ForecastMethod.EXTERNAL)
    assert ForecastMethod.EXTERNAL not in forecasts.load.methods[:2] + forecasts.load.methods[4:]
    assert forecasts.load.values[0] == pytest.approx(expected_load(105, 120))  # persistence of the last step
    assert forecasts.pv.values == pytest.approx([4.0] * 4 + [1.5] * 2)
    assert forecasts.pv.methods[:4] == (ForecastMethod.EXTERNAL,) * 4
    # Once the PV forecast has expired, what was measured holds again.
    later = await site_forecasts(
        repository,
        SITE,
        start=END,
        step=timedelta(minutes=15),
        steps=6,
        now=END + timedelta(minutes=10),
        history_days=1,
    )
    assert ForecastMethod.EXTERNAL not in later.pv.methods
    assert later.pv.values == pytest.approx([1.5] * 6)
    assert later.load.values[2:4] == (9.0, 9.0)


async def test_storing_a_forecast_drops_the_expired_ones_of_its_site_and_quantity(
    pool: asyncpg.Pool, site: None
) -> None:
    repository = ForecastRepository(pool)
    body = {"site": SITE, "quantity": "load", "start": END.isoformat(), "step": 15, "values": [1.0, 2.0]}
    await put_external_forecast(put_delivery(body), repository, now=END)
    await put_external_forecast(put_delivery({**body, "quantity": "pv"}), repository, now=END)

    await put_external_forecast(put_delivery(body), repository, now=END + timedelta(hours=1))

    rows = await pool.fetch("SELECT quantity, received_at FROM optimizer.external_forecasts ORDER BY id")
    assert [(row["quantity"], row["received_at"]) for row in rows] == [
        ("pv", END),
        ("load", END + timedelta(hours=1)),
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"step": 3}, "step"),
        ({"step": 15.5}, "step"),
        ({"quantity": "wind"}, "quantity"),
        ({"site": ""}, "site"),
        ({"start": "2026-06-01T02:00:00"}, "start"),
        ({"values": []}, "values"),
        ({"values": [1.0, "NaN"]}, "values.1"),
        ({"quantity": "pv", "values": [1.0, -0.5]}, "values"),
        ({"expires_at": "2026-06-01T01:00:00Z"}, "expires_at"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_a_bad_forecast_is_refused_naming_the_field(
    pool: asyncpg.Pool, change: dict[str, object], field: str
) -> None:
    body = {"site": SITE, "quantity": "load", "start": END.isoformat(), "step": 15, "values": [1.0], **change}

    with pytest.raises(PoisonMessage, match=rf"invalid forecast: .*\b{field}: "):
        await put_external_forecast(put_delivery(body), ForecastRepository(pool), now=END)

    assert await pool.fetchval("SELECT count(*) FROM optimizer.external_forecasts") == 0


async def test_a_forecast_for_a_site_with_no_device_is_refused(pool: asyncpg.Pool, site: None) -> None:
    body = {"site": "NOWHERE", "quantity": "load", "start": END.isoformat(), "step": 15, "values": [1.0]}

    with pytest.raises(PoisonMessage, match=r"invalid forecast: site: no device is registered at site 'NOWHERE'"):
        await put_external_forecast(put_delivery(body), ForecastRepository(pool), now=END)

    assert await pool.fetchval("SELECT count(*) FROM optimizer.external_forecasts") == 0


async def test_the_put_travels_as_an_rpc_and_a_refusal_reaches_the_caller(
    pool: asyncpg.Pool, site: None, amqp_url: str
) -> None:
    """Over the real broker: the optimizer's RPC queue, gridloop_common's rpc_handler, and a caller's RpcClient."""
    repository = ForecastRepository(pool)

    async def serve(delivery: Delivery) -> bytes:
        if delivery.routing_key == routing.RoutingKeys.OPTIMIZER_FORECASTS_PUT:
            return await put_external_forecast(delivery, repository, now=END)
        raise PoisonMessage(f"unknown optimizer request {delivery.routing_key!r}")

    body = {"site": SITE, "quantity": "pv", "start": END.isoformat(), "step": 30, "values": [2.0, 3.0]}
    settings = AmqpSettings(amqp_url=amqp_url)
    async with (
        open_broker(settings, client_name="optimizer-test", url=amqp_url) as broker,
        broker.consumer(routing.Queues.OPTIMIZER_RPC, rpc_handler(broker.publisher, serve), drain_timeout_s=5.0),
        RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="test") as client,
    ):
        reply = json.loads(
            await client.call(routing.RoutingKeys.OPTIMIZER_FORECASTS_PUT, json.dumps(body).encode(), timeout_s=10)
        )
        with pytest.raises(RpcError, match=r"invalid forecast: values: Value error, PV power must not be negative"):
            await client.call(
                routing.RoutingKeys.OPTIMIZER_FORECASTS_PUT,
                json.dumps({**body, "values": [2.0, -1.0]}).encode(),
                timeout_s=10,
            )

    assert (reply["site"], reply["quantity"], reply["steps"]) == (SITE, "pv", 2)
    stored = await repository.live_external(SITE, ForecastQuantity.PV, now=END, start=END, end=END + timedelta(hours=1))
    assert [forecast.values for forecast in stored] == [(2.0, 3.0)]
