"""Robust broker connections and confirm-mode channels, opened as async context managers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.lifecycle import StartupError

__all__ = ["broker_ready", "open_channel", "open_connection"]

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_connection(
    url: str, *, client_name: str, startup_timeout_s: float = 60.0, clock: Clock | None = None
) -> AsyncIterator[AbstractRobustConnection]:
    """Connect (retrying with backoff until ``startup_timeout_s``); reconnects by itself afterwards."""
    clock = clock or SystemClock()
    deadline = clock.monotonic() + startup_timeout_s
    delay = 0.2
    while True:
        try:
            connection = await aio_pika.connect_robust(
                url, client_properties={"connection_name": client_name}, reconnect_interval=1.0
            )
            break
        except (OSError, aio_pika.exceptions.AMQPConnectionError) as error:
            if clock.monotonic() + delay > deadline:
                raise StartupError(f"RabbitMQ unreachable at {_redact(url)}: {error}") from error
            logger.warning("broker not reachable yet, retrying", extra={"error": str(error), "retry_in_s": delay})
            await clock.sleep(delay)
            delay = min(delay * 2, 5.0)
    logger.info("broker connected", extra={"url": _redact(url)})
    try:
        yield connection
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def open_channel(connection: AbstractRobustConnection, *, prefetch: int) -> AsyncIterator[AbstractRobustChannel]:
    """A channel with publisher confirms, mandatory-return errors and a prefetch limit."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    assert isinstance(channel, AbstractRobustChannel)
    await channel.set_qos(prefetch_count=prefetch)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            await channel.close()


def broker_ready(connection: AbstractRobustConnection) -> bool:
    """True while the connection is up (a readiness check)."""
    return not connection.is_closed and connection.connected.is_set()


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
