"""Composition root of the scheduler: every resource opened here, in order, and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
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
from scheduler import handlers, repository
from scheduler.acknowledgements import AckSender
from scheduler.commands import CommandReceiver
from scheduler.dispatch import Dispatcher
from scheduler.settings import SchedulerSettings

__all__ = ["SERVICE", "migrate", "run"]

SERVICE = "scheduler"
logger = logging.getLogger(__name__)


async def migrate(settings: SchedulerSettings) -> None:
    """Create the database if needed and apply the scheduler's migrations, then return."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    applied = await migrate_database(
        str(settings.database.database_url),
        owner=SERVICE,
        package="scheduler",
        startup_timeout_s=settings.observability.startup_timeout_s,
    )
    logger.info("migrations done", extra={"applied": [migration.label for migration in applied]})


async def run(settings: SchedulerSettings, *, clock: Clock | None = None) -> None:
    """Run the scheduler until cancelled (SIGTERM)."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    clock = clock or SystemClock()
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
        await apply_migrations(pool, owner=SERVICE, migrations=load_migrations("scheduler"))
        health.add_check("database", lambda: database_ready(pool))
        broker = await stack.enter_async_context(
            open_broker(settings.amqp, client_name=SERVICE, startup_timeout_s=startup_timeout_s, clock=clock)
        )
        health.add_check("broker", broker.ready)
        await stack.enter_async_context(
            serve_http(
                Starlette(routes=health_routes(health)),
                host=settings.scheduler_host,
                port=settings.scheduler_port,
                settings=settings.http,
            )
        )
        upstream = settings.upstream
        token = upstream.upstream_token.get_secret_value()
        # aiohttp rather than httpx for the PATCHes: about a third of the client CPU per request
        # (performance-anchors.md G-WH-1; bench/commands.py e2e has the scheduler's CPU per command).
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10.0),
                headers={"Authorization": f"Bearer {token}"} if token else {},
            )
        )
        events = repository.EventRepository(pool)
        commands = repository.CommandRepository(pool)
        receiver = CommandReceiver(repository=commands, clock=clock)
        dispatcher = Dispatcher(
            repository=commands,
            publisher=broker.publisher,
            clock=clock,
            revert_timeout_s=settings.agent_revert_timeout_s,
        )
        acks = AckSender(
            repository=commands,
            session=session,
            upstream_url=upstream.upstream_url,
            path_template=settings.upstream_ack_path,
            clock=clock,
        )
        # NOTIFY from a commit wakes the loops at once; polling is the fallback.
        listener = await stack.enter_async_context(pool.acquire())
        await listener.add_listener("scheduler_timers", dispatcher.wake)
        await listener.add_listener("scheduler_acks", acks.wake)
        # The pool sends no reset on release (gridloop_common.db), so the connection stops listening here.
        stack.push_async_callback(listener.remove_listener, "scheduler_acks", acks.wake)
        stack.push_async_callback(listener.remove_listener, "scheduler_timers", dispatcher.wake)
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        for queue_name, handler in (
            (
                routing.Queues.SCHEDULER_UPSTREAM,
                handlers.upstream_event_handler(
                    events, receiver, commands, max_envelope_bytes=settings.upstream_max_envelope_bytes
                ),
            ),
            (routing.Queues.SCHEDULER_DEVICE_OUTCOMES, handlers.device_report_handler(commands, dispatcher)),
            (routing.Queues.SCHEDULER_PLANS, handlers.device_plan_handler(commands, clock)),
            (routing.Queues.SCHEDULER_RPC, rpc_handler(broker.publisher, handlers.rpc_server(commands))),
        ):
            await stack.enter_async_context(
                broker.consumer(queue_name, handler, drain_timeout_s=settings.observability.shutdown_timeout_s)
            )
        loops = [
            tasks.create_task(dispatcher.run_forever(), name="timers"),
            tasks.create_task(acks.run_forever(), name="acks"),
        ]
        stack.callback(setattr, health, "shutting_down", True)
        logger.info("scheduler ready")
        try:
            await asyncio.Event().wait()
        finally:
            for loop in loops:
                loop.cancel()
