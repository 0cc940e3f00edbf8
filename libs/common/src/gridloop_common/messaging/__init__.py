"""Thin aio-pika helpers: topology, connections, confirmed publishing, consuming, request/reply."""

from gridloop_common.messaging.broker import Broker, open_broker
from gridloop_common.messaging.connection import broker_ready, open_channel, open_connection
from gridloop_common.messaging.consumer import (
    DEAD_LETTER_ATTEMPTS_HEADER,
    DEAD_LETTER_EXCEPTION_HEADER,
    DEAD_LETTER_REASON_HEADER,
    Consumer,
    Delivery,
    model_handler,
)
from gridloop_common.messaging.errors import (
    BrokerUnavailable,
    HandlerError,
    MessagingError,
    PoisonMessage,
    PublishError,
    RetryableError,
    RpcError,
    RpcTimeout,
    UnroutableError,
)
from gridloop_common.messaging.publisher import CORRELATION_HEADER, Publisher
from gridloop_common.messaging.rpc import RpcClient, rpc_handler
from gridloop_common.messaging.topology import (
    EXCHANGES,
    QUEUES,
    QueueSpec,
    declare_queue,
    declare_topology,
    queue_spec,
)

__all__ = [
    "CORRELATION_HEADER",
    "DEAD_LETTER_ATTEMPTS_HEADER",
    "DEAD_LETTER_EXCEPTION_HEADER",
    "DEAD_LETTER_REASON_HEADER",
    "EXCHANGES",
    "QUEUES",
    "Broker",
    "BrokerUnavailable",
    "Consumer",
    "Delivery",
    "HandlerError",
    "MessagingError",
    "PoisonMessage",
    "PublishError",
    "Publisher",
    "QueueSpec",
    "RetryableError",
    "RpcClient",
    "RpcError",
    "RpcTimeout",
    "UnroutableError",
    "broker_ready",
    "declare_queue",
    "declare_topology",
    "model_handler",
    "open_broker",
    "open_channel",
    "open_connection",
    "queue_spec",
    "rpc_handler",
]
