"""Composition root of telemetry-ingest: database, broker, readings consumer, Flux API, realtime, upload."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import routing
from gridloop_common.db import (
    apply_migrations,
    database_ready,
    ensure_database,
    load_migrations,
    migrate_database,
    open_pool,
)
from gridloop_common.messaging import open_broker
from gridloop_common.observability import Health, configure_logging, serve_http
from telemetry_ingest.api import routes
from telemetry_ingest.api.auth import Authenticator
from telemetry_ingest.api.device_status import DeviceFreshness, device_status_route
from telemetry_ingest.api.postgrest import load_catalogue
from telemetry_ingest.ingest.consumer import readings_handler
from telemetry_ingest.ingest.group_commit import GroupCommitter
from telemetry_ingest.ingest.repository import ReadingsRepository
from telemetry_ingest.realtime import RealtimeHub, RealtimeLimits, realtime_route
from telemetry_ingest.settings import IngestSettings
from telemetry_ingest.upkeep.partitions import PartitionKeeper
from telemetry_ingest.upkeep.reorder import DayReorderer
from telemetry_ingest.upkeep.rollups import RollupRefresher
from telemetry_ingest.upload.uploader import TelemetryUploader

__all__ = ["SERVICE", "migrate", "realtime_limits", "reorder", "run"]

SERVICE = "telemetry-ingest"
logger = logging.getLogger(__name__)


async def migrate(settings: IngestSettings) -> None:
    """Create the database if needed and apply the flux schema migrations, then return."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    applied = await migrate_database(
        str(settings.database.database_url),
        owner=SERVICE,
        package="telemetry_ingest",
        startup_timeout_s=settings.observability.startup_timeout_s,
    )
    logger.info("migrations done", extra={"applied": [migration.label for migration in applied]})


async def reorder(settings: IngestSettings, *, clock: Clock | None = None) -> None:
    """Rewrite every closed day of readings in device order now (after a backfill, say), then return."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    clock = clock or SystemClock()
    async with open_pool(str(settings.database.database_url), min_size=1, max_size=2, clock=clock) as pool:
        moved = await DayReorderer(pool=pool, after_s=settings.reorder_after_s, clock=clock).reorder_once()
    logger.info("reordering done", extra={"rows": moved})


def realtime_limits(settings: IngestSettings) -> RealtimeLimits:
    """The realtime endpoint's limits from the settings."""
    return RealtimeLimits(
        bindings_per_join=settings.realtime_max_bindings_per_join,
        bindings_per_socket=settings.realtime_max_bindings_per_socket,
        channels_per_socket=settings.realtime_max_channels_per_socket,
        sockets_per_key=settings.realtime_max_sockets_per_key,
        sockets_per_address=settings.realtime_max_sockets_per_address,
        joins_per_second=settings.realtime_joins_per_second,
        frame_bytes=settings.realtime_max_frame_bytes,
    )


async def run(settings: IngestSettings, *, clock: Clock | None = None) -> None:
    """Run telemetry-ingest until cancelled (SIGTERM); ``clock`` is the time every part of it reads."""
    clock = clock or SystemClock()
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    health = Health(service=SERVICE)
    startup_timeout_s = settings.observability.startup_timeout_s
    async with contextlib.AsyncExitStack() as stack:
        database_url = str(settings.database.database_url)
        await ensure_database(database_url)
        pool = await stack.enter_async_context(
            open_pool(
                database_url,
                min_size=settings.database.database_pool_min,
                max_size=settings.database.database_pool_max,
                startup_timeout_s=startup_timeout_s,
                application_name=SERVICE,
                clock=clock,
            )
        )
        await apply_migrations(pool, owner=SERVICE, migrations=load_migrations("telemetry_ingest"))
        health.add_check("database", lambda: database_ready(pool))
        async with pool.acquire() as connection:
            catalogue = await load_catalogue(connection)
        broker = await stack.enter_async_context(
            open_broker(settings.consumer_amqp, client_name=SERVICE, startup_timeout_s=startup_timeout_s, clock=clock)
        )
        health.add_check("broker", broker.ready)
        repository = ReadingsRepository(pool)
        # Stale = no reading for three agent poll intervals (the agent's default interval is 5 s).
        freshness = DeviceFreshness(pool, repository, poll_interval_s=5.0, stale_after_intervals=3, clock=clock)
        hub = await stack.enter_async_context(RealtimeHub(database_url))
        health.add_check("realtime", hub.ready)
        application = routes.build_app(
            pool=pool,
            catalogue=catalogue,
            settings=settings,
            health=health,
            extra_routes=[
                device_status_route(
                    freshness, authenticator=Authenticator(settings.jwt_secret.get_secret_value(), clock=clock)
                ),
                realtime_route(
                    hub, settings.jwt_secret.get_secret_value(), limits=realtime_limits(settings), clock=clock
                ),
            ],
            clock=clock,
        )
        await stack.enter_async_context(
            serve_http(application, host=settings.ingest_host, port=settings.ingest_port, settings=settings.http)
        )
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        partition_task = tasks.create_task(PartitionKeeper(pool=pool, clock=clock).run_forever(), name="partitions")
        stack.callback(partition_task.cancel)
        rollup_task = tasks.create_task(
            RollupRefresher(pool=pool, settle_s=settings.rollup_settle_s).run_forever(), name="rollups"
        )
        stack.callback(rollup_task.cancel)
        if settings.reorder:
            reorderer = DayReorderer(
                pool=pool, after_s=settings.reorder_after_s, interval_s=settings.reorder_interval_s, clock=clock
            )
            reorder_task = tasks.create_task(reorderer.run_forever(), name="reorder")
            stack.callback(reorder_task.cancel)
        if settings.telemetry_upload:
            token = settings.upstream.upstream_token.get_secret_value()
            upstream_client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=settings.upstream.upstream_url,
                    timeout=15.0,
                    headers={"Authorization": f"Bearer {token}"} if token else {},
                )
            )
            uploader = TelemetryUploader(
                pool=pool,
                client=upstream_client,
                interval_s=settings.telemetry_upload_interval_s,
                batch_size=settings.telemetry_upload_batch_size,
                max_batches=settings.telemetry_upload_max_batches,
                clock=clock,
            )
            upload_task = tasks.create_task(uploader.run_forever(), name="telemetry-upload")
            stack.callback(upload_task.cancel)
            logger.info("uploading telemetry upstream", extra={"interval_s": settings.telemetry_upload_interval_s})
        # Entered last, so on SIGTERM it is the first to stop taking work.
        await stack.enter_async_context(
            broker.consumer(
                routing.Queues.INGEST_READINGS,
                readings_handler(
                    repository,
                    broker.publisher,
                    writer=GroupCommitter(repository.insert_records, max_rows=settings.ingest_batch_size),
                    clock=clock,
                ),
                drain_timeout_s=settings.observability.shutdown_timeout_s,
            )
        )
        stack.callback(setattr, health, "shutting_down", True)
        logger.info("telemetry-ingest ready", extra={"port": settings.ingest_port})
        await asyncio.Event().wait()
