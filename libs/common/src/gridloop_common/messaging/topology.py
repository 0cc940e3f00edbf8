"""The whole RabbitMQ topology, declared in one place and idempotently by every service at start-up.

Every consumer queue is a durable quorum queue with an explicit ``x-delivery-limit`` and its own
dead-letter queue, bound on ``gridloop.dead-letter`` by the consumer queue's name. ``consume()``
dead-letters a message itself on its last allowed attempt (so the reason travels with it); the
broker's delivery limit is the safety net for a consumer that dies before it can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel

from gridloop_common.contracts import routing

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "EXCHANGES",
    "QUEUES",
    "ExchangeSpec",
    "QueueSpec",
    "declare_queue",
    "declare_topology",
    "queue_spec",
]

DEFAULT_DELIVERY_LIMIT: Final = 5


@dataclass(frozen=True)
class ExchangeSpec:
    """A durable exchange."""

    name: str
    kind: ExchangeType = ExchangeType.TOPIC


@dataclass(frozen=True)
class QueueSpec:
    """A durable quorum consumer queue, its bindings, and its delivery limit."""

    name: str
    bindings: tuple[tuple[str, str], ...] = ()
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def dead_letter_queue(self) -> str:
        return routing.dead_letter_queue(self.name)

    def queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": routing.DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": self.name,
            **self.arguments,
        }


EXCHANGES: Final[tuple[ExchangeSpec, ...]] = (
    ExchangeSpec(routing.UPSTREAM_EXCHANGE),
    ExchangeSpec(routing.DEVICES_EXCHANGE),
    ExchangeSpec(routing.TELEMETRY_EXCHANGE),
    ExchangeSpec(routing.RPC_EXCHANGE),
    ExchangeSpec(routing.DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT),
)

QUEUES: Final[tuple[QueueSpec, ...]] = (
    QueueSpec(
        routing.Queues.SCHEDULER_UPSTREAM,
        bindings=((routing.UPSTREAM_EXCHANGE, routing.RoutingKeys.ALL),),
    ),
    QueueSpec(
        routing.Queues.SCHEDULER_DEVICE_OUTCOMES,
        bindings=(
            (routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_OUTCOME),
            (routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_AVAILABILITY),
            (routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_RESYNC),
        ),
    ),
    QueueSpec(
        routing.Queues.SCHEDULER_PLANS,
        bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_PLAN_ALL),),
    ),
    QueueSpec(
        routing.Queues.AGENT_DEVICE_ACTIONS,
        bindings=((routing.DEVICES_EXCHANGE, routing.RoutingKeys.DEVICE_ACTION_ALL),),
    ),
    QueueSpec(
        routing.Queues.INGEST_READINGS,
        bindings=((routing.TELEMETRY_EXCHANGE, routing.RoutingKeys.TELEMETRY_ALL),),
    ),
    # Requests expire with their caller's timeout, so a stopped service does not face a backlog.
    QueueSpec(
        routing.Queues.OPTIMIZER_RPC,
        bindings=((routing.RPC_EXCHANGE, routing.RoutingKeys.OPTIMIZER_ALL),),
        delivery_limit=2,
    ),
    QueueSpec(
        routing.Queues.SCHEDULER_RPC,
        bindings=((routing.RPC_EXCHANGE, routing.RoutingKeys.SCHEDULER_RPC_ALL),),
        delivery_limit=2,
    ),
)


def queue_spec(name: str) -> QueueSpec:
    """The declared spec of queue ``name``."""
    for spec in QUEUES:
        if spec.name == name:
            return spec
    raise KeyError(f"no queue named {name!r} in the topology")


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> None:
    """Declare one consumer queue, its dead-letter queue and their bindings."""
    dead_letter_exchange = await channel.declare_exchange(
        routing.DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT, durable=True
    )
    dead_letters = await channel.declare_queue(
        spec.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_letters.bind(dead_letter_exchange, routing_key=spec.name)
    queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.queue_arguments())
    for exchange, routing_key in spec.bindings:
        await queue.bind(exchange, routing_key=routing_key)


async def declare_topology(channel: AbstractChannel, queues: tuple[QueueSpec, ...] = QUEUES) -> None:
    """Declare every exchange and queue of gridloop (idempotent)."""
    for exchange in EXCHANGES:
        await channel.declare_exchange(exchange.name, exchange.kind, durable=True)
    for spec in queues:
        await declare_queue(channel, spec)
