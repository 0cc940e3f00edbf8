"""Consuming with manual acks: the handler's outcome decides ack, retry or dead-letter, never a silent drop.

``Consumer`` is an async context manager. Inside it, deliveries are handled concurrently up to the
channel's prefetch. On exit (SIGTERM) it stops taking deliveries, gives in-flight handlers
``drain_timeout_s`` to finish, and requeues whatever is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from pydantic import BaseModel, ValidationError

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import routing
from gridloop_common.messaging.errors import PoisonMessage, PublishError
from gridloop_common.messaging.metrics import CONSUMED, HANDLER_SECONDS
from gridloop_common.messaging.publisher import CORRELATION_HEADER, Publisher
from gridloop_common.messaging.topology import DEFAULT_DELIVERY_LIMIT
from gridloop_common.observability.logging import correlation_id

__all__ = [
    "DEAD_LETTER_ATTEMPTS_HEADER",
    "DEAD_LETTER_EXCEPTION_HEADER",
    "DEAD_LETTER_REASON_HEADER",
    "Consumer",
    "Delivery",
    "model_handler",
]

logger = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "x-gridloop-dead-letter-reason"
DEAD_LETTER_EXCEPTION_HEADER = "x-gridloop-dead-letter-exception"
DEAD_LETTER_ATTEMPTS_HEADER = "x-gridloop-attempts"

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class Delivery:
    """One message as a handler sees it."""

    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    exchange: str
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    attempt: int
    redelivered: bool

    def json(self) -> Any:
        """The body parsed as JSON; a body that is not JSON is poison."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PoisonMessage(f"body is not JSON: {error}") from error
        except ValueError as error:  # an integer beyond Python's digit limit: the same next time
            raise PoisonMessage(f"body is not readable JSON: {error}") from error
        except RecursionError as error:
            raise PoisonMessage("body is not readable JSON: nested too deeply") from error


Handler = Callable[[Delivery], Awaitable[None]]


def model_handler(model: type[ModelT], handle: Callable[[ModelT, Delivery], Awaitable[None]]) -> Handler:
    """Wrap ``handle`` so it receives the body parsed as ``model``; an invalid body is dead-lettered."""

    async def parse_then_handle(delivery: Delivery) -> None:
        try:
            parsed = model.model_validate_json(delivery.body)
        except ValidationError as error:
            raise PoisonMessage(_validation_reason(error)) from error
        await handle(parsed, delivery)

    return parse_then_handle


def _validation_reason(error: ValidationError) -> str:
    parts = []
    for detail in error.errors()[:5]:
        location = ".".join(str(part) for part in detail["loc"]) or "body"
        parts.append(f"{location}: {detail['msg']}")
    return "invalid message: " + "; ".join(parts)


def _attempt_of(message: AbstractIncomingMessage) -> int:
    """This delivery's attempt number, counting only what the broker wrote.

    Quorum queues count failed deliveries in ``x-delivery-count`` and write it into a redelivered message,
    replacing whatever the producer put there; on a first delivery RabbitMQ 3.12+ adds nothing, so a
    header seen then is the producer's and must not dead-letter its message early. So a first delivery is
    attempt 1 whatever its headers say. From RabbitMQ 4.3 a redelivery that was not a failure (a requeue
    on shutdown is a nack) leaves the failed count at 0 and the header out, but the broker then writes
    ``x-acquired-count`` (at least 1, never below the failed count): the smaller of the two bounds a
    forged value. Earlier brokers write ``x-delivery-count`` on every redelivery.
    """
    if not message.redelivered:
        return 1
    headers = message.headers or {}
    failed = _count(headers.get("x-delivery-count")) or 0  # absent: no failed delivery recorded
    acquired = _count(headers.get("x-acquired-count"))
    return (failed if acquired is None else min(failed, acquired)) + 1


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Consumer:
    """Consume ``queue_name`` with ``handler`` until the context exits.

    Outcomes:
      * handler returns -> ack;
      * ``PoisonMessage`` (or a pydantic ``ValidationError``) -> dead-letter now, with the reason;
      * any other exception -> requeue after a short backoff, until ``delivery_limit`` attempts, then
        dead-letter with the last error as the reason.
    A message is acked only after its dead-letter copy is confirmed, so nothing is lost in between.
    """

    def __init__(
        self,
        *,
        channel: AbstractRobustChannel,
        publisher: Publisher,
        queue_name: str,
        handler: Handler,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        retry_backoff_s: float = 0.2,
        drain_timeout_s: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self._channel = channel
        self._clock: Clock = clock or SystemClock()
        self._publisher = publisher
        self._queue_name = queue_name
        self._handler = handler
        self._delivery_limit = delivery_limit
        self._retry_backoff_s = retry_backoff_s
        self._drain_timeout_s = drain_timeout_s
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def __aenter__(self) -> Consumer:
        self._queue = await self._channel.get_queue(self._queue_name, ensure=True)
        self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)
        logger.info("consuming", extra={"queue": self._queue_name})
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping = True
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._queue.cancel(self._consumer_tag))
        if self._in_flight:
            logger.info(
                "waiting for in-flight messages",
                extra={"queue": self._queue_name, "count": len(self._in_flight)},
            )
            _, pending = await asyncio.wait(set(self._in_flight), timeout=self._drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            await _settle(message.nack(requeue=True))
            return
        task = asyncio.create_task(self._process(message))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        delivery = Delivery(
            body=message.body,
            headers=headers,
            routing_key=message.routing_key or "",
            exchange=message.exchange or "",
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            attempt=_attempt_of(message),
            redelivered=bool(message.redelivered),
        )
        trace = headers.get(CORRELATION_HEADER)
        with correlation_id(str(trace) if trace else None):
            started = time.perf_counter()
            try:
                await self._handler(delivery)
            except asyncio.CancelledError:
                # Shutdown overran the drain timeout: hand the message back for another consumer.
                CONSUMED.labels(self._queue_name, "requeued_on_shutdown").inc()
                logger.warning("requeueing in-flight message on shutdown", extra={"queue": self._queue_name})
                await _settle(message.nack(requeue=True))
                raise
            except (PoisonMessage, ValidationError) as error:
                reason = _validation_reason(error) if isinstance(error, ValidationError) else str(error)
                await self._dead_letter(message, delivery, reason=reason, error=error)
            except Exception as error:
                if delivery.attempt >= self._delivery_limit:
                    reason = f"gave up after {delivery.attempt} attempts: {type(error).__name__}: {error}"
                    await self._dead_letter(message, delivery, reason=reason, error=error)
                else:
                    CONSUMED.labels(self._queue_name, "retry").inc()
                    logger.warning(
                        "handler failed, will retry",
                        extra={
                            "queue": self._queue_name,
                            "attempt": delivery.attempt,
                            "error": f"{type(error).__name__}: {error}",
                        },
                    )
                    backoff = min(self._retry_backoff_s * 2 ** (delivery.attempt - 1), 5.0)
                    await asyncio.sleep(backoff)
                    # reject, not nack: from RabbitMQ 4.3 only reject counts towards the delivery limit.
                    await _settle(message.reject(requeue=True))
            else:
                CONSUMED.labels(self._queue_name, "ack").inc()
                await _settle(message.ack())
            finally:
                HANDLER_SECONDS.labels(self._queue_name).observe(time.perf_counter() - started)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, delivery: Delivery, *, reason: str, error: BaseException
    ) -> None:
        headers = {
            **delivery.headers,
            DEAD_LETTER_REASON_HEADER: reason[:1000],
            DEAD_LETTER_EXCEPTION_HEADER: "".join(traceback.format_exception_only(error)).strip()[:1000],
            DEAD_LETTER_ATTEMPTS_HEADER: delivery.attempt,
            "x-gridloop-original-exchange": delivery.exchange,
            "x-gridloop-original-routing-key": delivery.routing_key,
            "x-gridloop-dead-lettered-at": self._clock.now().isoformat(),
        }
        try:
            await self._publisher.publish(
                exchange=routing.DEAD_LETTER_EXCHANGE,
                routing_key=self._queue_name,
                body=delivery.body,
                message_id=delivery.message_id,
                headers=headers,
                correlation_id=delivery.correlation_id,
            )
        except PublishError as publish_error:
            # Never drop: if the dead-letter copy is not confirmed, the original goes back to the queue.
            logger.error(
                "could not dead-letter, requeueing",
                extra={"queue": self._queue_name, "error": str(publish_error)},
            )
            await _settle(message.nack(requeue=True))
            return
        CONSUMED.labels(self._queue_name, "dead_letter").inc()
        logger.error(
            "message dead-lettered",
            extra={"queue": self._queue_name, "reason": reason, "message_id": delivery.message_id},
        )
        await _settle(message.ack())


async def _settle(operation: Awaitable[None]) -> None:
    # If the channel died meanwhile, the broker has already returned the message to the queue and
    # will deliver it again; the transport raises assorted exception types for that, all benign here.
    try:
        await operation
    except Exception as error:
        logger.debug("could not settle a delivery on a lost channel", extra={"error": repr(error)})
