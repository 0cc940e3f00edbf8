"""Composition root of the optimizer: database (schema optimizer), broker, RPC consumer, health server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.applications import Starlette

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
from gridloop_common.messaging import open_broker, rpc_handler
from gridloop_common.observability import Health, configure_logging, health_routes, serve_http
from optimizer.handlers import Handlers
from optimizer.mpc import MpcService
from optimizer.planning_runs import PlanningRun
from optimizer.repository import ForecastRepository, OptimizerRepository, PlanningRepository
from optimizer.settings import OptimizerSettings

__all__ = ["SERVICE", "migrate", "run"]

SERVICE = "optimizer"
logger = logging.getLogger(__name__)


async def migrate(settings: OptimizerSettings) -> None:
    """Create the database if needed and apply the optimizer's migrations (schema optimizer), then return."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    applied = await migrate_database(
        str(settings.database.database_url),
        owner=SERVICE,
        package="optimizer",
        startup_timeout_s=settings.observability.startup_timeout_s,
    )
    logger.info("migrations done", extra={"applied": [migration.label for migration in applied]})


async def run(settings: OptimizerSettings, *, clock: Clock | None = None) -> None:
    """Run the optimizer until cancelled (SIGTERM); ``clock`` is the time every part of it reads."""
    clock = clock or SystemClock()
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    health = Health(service=SERVICE)
    async with contextlib.AsyncExitStack() as stack:
        database_url = str(settings.database.database_url)
        await ensure_database(database_url)
        pool = await stack.enter_async_context(
            open_pool(
                database_url,
                min_size=settings.database.database_pool_min,
                max_size=settings.database.database_pool_max,
                startup_timeout_s=settings.observability.startup_timeout_s,
                application_name=SERVICE,
                clock=clock,
            )
        )
        await apply_migrations(pool, owner=SERVICE, migrations=load_migrations("optimizer"))
        health.add_check("database", lambda: database_ready(pool))
        broker = await stack.enter_async_context(
            open_broker(
                settings.amqp,
                client_name=SERVICE,
                startup_timeout_s=settings.observability.startup_timeout_s,
                clock=clock,
            )
        )
        health.add_check("broker", broker.ready)
        await stack.enter_async_context(
            serve_http(
                Starlette(routes=health_routes(health)),
                host=settings.optimizer_host,
                port=settings.optimizer_port,
                settings=settings.http,
            )
        )
        forecasts = ForecastRepository(pool)
        planning = PlanningRun(
            optimizer=OptimizerRepository(pool),
            planning=PlanningRepository(pool),
            forecasts=forecasts,
            publisher=broker.publisher,
            time_limit_s=settings.optimizer_time_limit_s,
        )
        mpc = MpcService(planning, clock)
        stack.push_async_callback(mpc.close)
        # The MPCs the previous process ran carry on (mpc.py: what a restart does).
        resumed = await mpc.resume(now=clock.now())
        if resumed:
            logger.info("MPCs resumed", extra={"sessions": [str(session) for session in resumed]})
        handlers = Handlers(planning=planning, mpc=mpc, forecasts=forecasts, clock=clock)
        await stack.enter_async_context(
            broker.consumer(
                routing.Queues.OPTIMIZER_RPC,
                rpc_handler(broker.publisher, handlers.serve),
                drain_timeout_s=settings.observability.shutdown_timeout_s,
            )
        )
        stack.callback(setattr, health, "shutting_down", True)
        logger.info("optimizer ready")
        await asyncio.Event().wait()
