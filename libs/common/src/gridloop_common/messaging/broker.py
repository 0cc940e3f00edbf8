"""One call to get a service onto the broker: connection, confirm channel, declared topology, publisher."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.messaging.connection import broker_ready, open_channel, open_connection
from gridloop_common.messaging.consumer import Consumer, Handler
from gridloop_common.messaging.publisher import Publisher
from gridloop_common.messaging.topology import declare_topology, queue_spec
from gridloop_common.settings import AmqpSettings

__all__ = ["Broker", "open_broker"]


@dataclass(frozen=True)
class Broker:
    """A service's broker resources."""

    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    publisher: Publisher
    clock: Clock = field(default_factory=SystemClock)

    async def ready(self) -> bool:
        """Readiness check: the connection is up."""
        return broker_ready(self.connection)

    def consumer(self, queue_name: str, handler: Handler, *, drain_timeout_s: float) -> Consumer:
        """A Consumer of one topology queue, with that queue's declared delivery limit."""
        return Consumer(
            channel=self.channel,
            publisher=self.publisher,
            queue_name=queue_name,
            handler=handler,
            delivery_limit=queue_spec(queue_name).delivery_limit,
            drain_timeout_s=drain_timeout_s,
            clock=self.clock,
        )


@contextlib.asynccontextmanager
async def open_broker(
    settings: AmqpSettings,
    *,
    client_name: str,
    startup_timeout_s: float = 60.0,
    url: str | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Broker]:
    """Connect, open a confirm channel with the configured prefetch, declare the topology.

    ``clock`` stamps what the broker resources write (message timestamps, dead-letter times).
    """
    clock = clock or SystemClock()
    async with (
        open_connection(
            url or str(settings.amqp_url), client_name=client_name, startup_timeout_s=startup_timeout_s, clock=clock
        ) as connection,
        open_channel(connection, prefetch=settings.amqp_prefetch) as channel,
    ):
        await declare_topology(channel)
        publisher = Publisher(
            connection=connection,
            channel=channel,
            source=client_name,
            confirm_timeout_s=settings.amqp_confirm_timeout_s,
            clock=clock,
        )
        yield Broker(connection=connection, channel=channel, publisher=publisher, clock=clock)
