"""Composition root of the device agent: broker, registry access, device loops, OCPP central system, health server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.applications import Starlette

from device_agent import handlers
from device_agent.chargers.central_system import CentralSystem
from device_agent.fleet import Fleet
from device_agent.modbus.bus import ModbusBus
from device_agent.registry_feed import listen_for_registry_changes
from device_agent.repository import charger_named, find_charger
from device_agent.settings import DeviceAgentSettings
from device_agent.telemetry import TelemetryPoller
from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import routing
from gridloop_common.db import database_ready, open_pool
from gridloop_common.messaging import open_broker
from gridloop_common.observability import Health, configure_logging, health_routes, serve_http

__all__ = ["SERVICE", "migrate", "run"]

SERVICE = "device-agent"
logger = logging.getLogger(__name__)


async def migrate(settings: DeviceAgentSettings) -> None:
    """The agent owns no tables (it reads flux.mg_device_registry); nothing to migrate."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    logger.info("migrations done", extra={"applied": []})


async def run(settings: DeviceAgentSettings, *, clock: Clock | None = None) -> None:
    """Run the device agent until cancelled (SIGTERM); ``clock`` is the time every part of it reads."""
    clock = clock or SystemClock()
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    health = Health(service=SERVICE)
    startup_timeout_s = settings.observability.startup_timeout_s
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(
                str(settings.database.database_url),
                min_size=settings.database.database_pool_min,
                max_size=settings.database.database_pool_max,
                startup_timeout_s=startup_timeout_s,
                application_name=SERVICE,
                clock=clock,
            )
        )
        health.add_check("database", lambda: database_ready(pool))
        broker = await stack.enter_async_context(
            open_broker(settings.amqp, client_name=SERVICE, startup_timeout_s=startup_timeout_s, clock=clock)
        )
        health.add_check("broker", broker.ready)
        await stack.enter_async_context(
            serve_http(
                Starlette(routes=health_routes(health)),
                host=settings.agent_host,
                port=settings.agent_port,
                settings=settings.http,
            )
        )
        bus = await stack.enter_async_context(ModbusBus(timeout_s=2.0, clock=clock))
        fleet = Fleet(
            pool=pool,
            bus=bus,
            publisher=broker.publisher,
            revert_timeout_s=settings.agent_revert_timeout_s,
            refresh_interval_s=settings.agent_registry_refresh_s,
            clock=clock,
        )
        tasks = await stack.enter_async_context(asyncio.TaskGroup())
        fleet_task = tasks.create_task(fleet.run_forever(), name="fleet")
        stack.callback(fleet_task.cancel)
        # Registry changes (telemetry-ingest's trigger) wake the fleet at once; the period stays as a safety net.
        listener_task = tasks.create_task(
            listen_for_registry_changes(
                str(settings.database.database_url),
                fleet.registry_changed,
                probe_interval_s=settings.agent_registry_refresh_s,
            ),
            name="registry-listen",
        )
        stack.callback(listener_task.cancel)
        # Telemetry: every registered battery and meter, polled on the interval grid through the fleet's
        # device coordinators (the objects the control loops use); it starts after the first registry load
        # and shares the bus at poll priority.
        poller = TelemetryPoller(
            publisher=broker.publisher,
            devices=fleet.coordinators,
            interval_s=settings.agent_poll_interval_s,
            clock=clock,
        )
        poller_task = tasks.create_task(poller.run_forever(ready=fleet.loaded), name="telemetry")
        stack.callback(poller_task.cancel)
        chargers = None
        if settings.ocpp_port:
            # EV chargers dial in over OCPP-J; each connection is checked against the registry as it arrives.
            # Their profiles hold for the revert timeout, as a battery's revert timer does.
            central_system = CentralSystem(
                find_charger=lambda ocpp_id: find_charger(pool, ocpp_id),
                publisher=broker.publisher,
                clock=clock,
                heartbeat_interval_s=settings.ocpp_heartbeat_interval_s,
                offline_margin_s=settings.ocpp_offline_margin_s,
                profile_hold_s=settings.agent_revert_timeout_s,
            )
            await stack.enter_async_context(central_system.serving(settings.agent_host, settings.ocpp_port))
            chargers = (central_system, lambda name: charger_named(pool, name))
        await stack.enter_async_context(
            broker.consumer(
                routing.Queues.AGENT_DEVICE_ACTIONS,
                handlers.device_action_handler(fleet, broker.publisher, clock, chargers),
                drain_timeout_s=settings.observability.shutdown_timeout_s,
            )
        )
        stack.callback(setattr, health, "shutting_down", True)
        logger.info("device-agent ready")
        await asyncio.Event().wait()
