"""Fixtures of the optimizer's storage tests: a database of their own, emptied before each test.

Migrated as `gridloop-ingest migrate` and `gridloop-optimizer migrate` would: telemetry-ingest owns flux.mg_sites and
flux.mg_device_registry, which the optimizer reads.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from gridloop_common.contracts import routing
from gridloop_common.db import open_pool
from gridloop_common.messaging import Broker, open_broker
from gridloop_common.settings import AmqpSettings
from gridloop_common.testing import side_database

_TABLES = (
    "optimizer.run_details, optimizer.mpc_sessions, optimizer.plans, optimizer.runs, optimizer.tariffs,"
    " optimizer.external_forecasts, flux.mg_sites,"
    " flux.mg_device_registry, flux.mg_meter_readings, flux.mg_bess_readings, flux.meter_reading_rollups"
)


@pytest.fixture(scope="session")
def optimizer_database_url(database_url: str) -> Iterator[str]:
    """A fresh database beside the session's, with the flux and optimizer schemas."""
    with side_database(
        database_url, "optimizer", owners=(("telemetry-ingest", "telemetry_ingest"), ("optimizer", "optimizer"))
    ) as url:
        yield url


@pytest.fixture
async def pool(optimizer_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the optimizer tests' database, with the optimizer's tables, the sites and the registry empty."""
    async with open_pool(optimizer_database_url, min_size=1, max_size=4) as opened:
        await opened.execute(f"TRUNCATE {_TABLES}")
        yield opened


@pytest.fixture
async def plan_broker(amqp_url: str) -> AsyncIterator[tuple[Broker, str]]:
    """The test vhost's broker, and a queue bound to every device plan on gridloop.devices (what a scheduler reads)."""
    async with open_broker(AmqpSettings(amqp_url=amqp_url), client_name="test-optimizer", url=amqp_url) as broker:
        observed = f"test.plans.{uuid.uuid4().hex[:8]}"
        queue = await broker.channel.declare_queue(observed, exclusive=True)
        await queue.bind(routing.DEVICES_EXCHANGE, routing_key=routing.RoutingKeys.DEVICE_PLAN_ALL)
        yield broker, observed
