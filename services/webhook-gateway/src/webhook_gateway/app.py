"""Composition root of the webhook gateway: broker, RPC client, HTTP server and (optionally) the upstream poller."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.messaging import RpcClient, open_broker
from gridloop_common.observability import Health, configure_logging, serve_http
from webhook_gateway import routes
from webhook_gateway.poller import CommandPoller
from webhook_gateway.settings import GatewaySettings

__all__ = ["SERVICE", "migrate", "run"]

SERVICE = "webhook-gateway"
logger = logging.getLogger(__name__)


async def migrate(settings: GatewaySettings) -> None:
    """The gateway owns no tables; nothing to migrate."""
    configure_logging(service=SERVICE, level=settings.observability.log_level)
    logger.info("migrations done", extra={"applied": []})


async def run(settings: GatewaySettings, *, clock: Clock | None = None) -> None:
    """Run the gateway until cancelled (SIGTERM); ``clock`` is the time every part of it reads."""
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
        rpc = await stack.enter_async_context(
            RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name=SERVICE)
        )
        application = routes.build_app(
            settings=settings, publisher=broker.publisher, rpc=rpc, health=health, clock=clock
        )
        await stack.enter_async_context(
            serve_http(application, host=settings.gateway_host, port=settings.gateway_port, settings=settings.http)
        )
        if settings.upstream_poll == "on":
            token = settings.upstream.upstream_token.get_secret_value()
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=settings.upstream.upstream_url,
                    timeout=15.0,
                    headers={"Authorization": f"Bearer {token}"} if token else {},
                )
            )
            poller = CommandPoller(
                client=client, publisher=broker.publisher, interval_s=settings.upstream_poll_interval_s, clock=clock
            )
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            poll_task = tasks.create_task(poller.run_forever(), name="poller")
            stack.callback(poll_task.cancel)
            logger.info("polling upstream", extra={"interval_s": settings.upstream_poll_interval_s})
        stack.callback(setattr, health, "shutting_down", True)
        logger.info("gateway ready", extra={"port": settings.gateway_port})
        await asyncio.Event().wait()
