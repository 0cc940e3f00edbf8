"""Fixtures of the readings pipeline and realtime tests: broker, running consumer, realtime server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage
from starlette.applications import Starlette

from gridloop_common.contracts import routing
from gridloop_common.messaging import Broker, Consumer, Delivery, open_broker, queue_spec
from gridloop_common.observability import serve_http
from gridloop_common.settings import AmqpSettings
from telemetry_ingest.api.auth import Authenticator, issue_key
from telemetry_ingest.api.device_status import DeviceFreshness, device_status_route
from telemetry_ingest.ingest.consumer import readings_handler
from telemetry_ingest.ingest.repository import ReadingsRepository
from telemetry_ingest.realtime import RealtimeHub, realtime_route

__all__ = [
    "JWT_SECRET",
    "DeadLetters",
    "HandledMessages",
    "anon_key_fixture",
    "api_server_fixture",
    "broker_fixture",
    "dead_letters_fixture",
    "ingest_consumer_fixture",
    "publish_batch_fixture",
    "realtime_hub_fixture",
    "repository_fixture",
]

JWT_SECRET = "pipeline-tests-secret-at-least-32-characters-long"


@pytest.fixture(name="broker")
async def broker_fixture(amqp_url: str) -> AsyncIterator[Broker]:
    async with open_broker(AmqpSettings(), client_name="ingest-pipeline-test", url=amqp_url) as opened:
        yield opened


@pytest.fixture(name="repository")
def repository_fixture(pool: asyncpg.Pool) -> ReadingsRepository:
    return ReadingsRepository(pool)


@dataclass
class HandledMessages:
    """Message ids the consumer has finished with (acked), in order, so a test can await one."""

    finished: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for(self, message_id: str, *, times: int = 1, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: self.finished.count(message_id) >= times)


@pytest.fixture(name="ingest_consumer")
async def ingest_consumer_fixture(broker: Broker, repository: ReadingsRepository) -> AsyncIterator[HandledMessages]:
    """The readings consumer as the service runs it, reporting each message it has handled."""
    handled = HandledMessages()
    handle = readings_handler(repository, broker.publisher)

    async def handle_and_report(delivery: Delivery) -> None:
        await handle(delivery)
        async with handled.changed:
            handled.finished.append(delivery.message_id or "")
            handled.changed.notify_all()

    spec = queue_spec(routing.Queues.INGEST_READINGS)
    async with Consumer(
        channel=broker.channel,
        publisher=broker.publisher,
        queue_name=spec.name,
        handler=handle_and_report,
        delivery_limit=spec.delivery_limit,
    ):
        yield handled


@dataclass
class DeadLetters:
    """Messages arriving on the readings dead-letter queue."""

    arrived: asyncio.Queue[AbstractIncomingMessage]

    async def find(self, message_id: str, *, timeout_s: float = 10.0) -> AbstractIncomingMessage:
        """The dead-lettered message with this id (others, e.g. from other tests, are skipped)."""
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.arrived.get()
                if message.message_id == message_id:
                    return message


@pytest.fixture(name="dead_letters")
async def dead_letters_fixture(broker: Broker) -> AsyncIterator[DeadLetters]:
    arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    channel = await broker.connection.channel()
    queue = await channel.get_queue(routing.dead_letter_queue(routing.Queues.INGEST_READINGS))

    async def on_message(message: AbstractIncomingMessage) -> None:
        await message.ack()
        arrived.put_nowait(message)

    tag = await queue.consume(on_message)
    try:
        yield DeadLetters(arrived)
    finally:
        with contextlib.suppress(Exception):
            await queue.cancel(tag)
        await channel.close()


@pytest.fixture(name="publish_batch")
def publish_batch_fixture(broker: Broker) -> Callable[[str, list[object], str], Awaitable[None]]:
    """Publish a readings batch as the device agent does: JSON list body, kind in the routing key."""

    async def publish(routing_key: str, readings: list[object], message_id: str) -> None:
        await broker.publisher.publish(
            exchange=routing.TELEMETRY_EXCHANGE,
            routing_key=routing_key,
            body=json.dumps(readings).encode(),
            message_id=message_id,
        )

    return publish


@pytest.fixture(name="realtime_hub")
async def realtime_hub_fixture(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[RealtimeHub]:
    """A hub on the migrated session database (``pool`` applies the migrations first)."""
    async with RealtimeHub(database_url) as hub:
        yield hub


@pytest.fixture(name="api_server")
async def api_server_fixture(
    pool: asyncpg.Pool, realtime_hub: RealtimeHub, repository: ReadingsRepository
) -> AsyncIterator[str]:
    """The realtime and status routes served by uvicorn on 127.0.0.1; yields the base URL."""
    app = Starlette(
        routes=[
            realtime_route(realtime_hub, JWT_SECRET),
            device_status_route(
                DeviceFreshness(pool, repository, poll_interval_s=5.0), authenticator=Authenticator(JWT_SECRET)
            ),
        ]
    )
    async with serve_http(app, host="127.0.0.1", port=0) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(name="anon_key")
def anon_key_fixture() -> str:
    return issue_key(JWT_SECRET, "anon", lifetime_seconds=3600)
