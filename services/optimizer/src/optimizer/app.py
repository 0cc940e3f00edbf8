"""Composition root of the optimizer: broker, RPC consumer, health server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.applications import Starlette

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import routing
from gridloop_common.messaging import open_broker, rpc_handler
from gridloop_common.observability import Health, configure_logging, health_routes, serve_http
from optimizer import handlers
from optimizer.settings import OptimizerSettings

__all__ = ["SERVICE", "migrate", "run"]

SERVICE = "optimizer"
logger = logging.getLogger(__name__)


async def migrate(settings: OptimizerSettings) -> None:
    """The optimizer owns no tables; nothing to migrate."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    logger.info("migrations done", extra={"applied": []})


async def run(settings: OptimizerSettings, *, clock: Clock | None = None) -> None:
    """Run the optimizer until cancelled (SIGTERM); ``clock`` is the time every part of it reads."""
    clock = clock or SystemClock()
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    health = Health(service=SERVICE)
    async with contextlib.AsyncExitStack() as stack:
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
        await stack.enter_async_context(
            broker.consumer(
                routing.Queues.OPTIMIZER_RPC,
                rpc_handler(broker.publisher, handlers.serve_request),
                drain_timeout_s=settings.observability.shutdown_timeout_s,
            )
        )
        stack.callback(setattr, health, "shutting_down", True)
        logger.info("optimizer ready")
        await asyncio.Event().wait()
