"""The queue producer's RabbitMQ user, made by deploy/rabbitmq/producer-user.sh on the real broker.

The script runs against this session's vhost; the user it makes may publish an upstream envelope to
gridloop.upstream and nothing else: publishing to gridloop.devices, declaring and consuming are refused
with 403 ACCESS_REFUSED. The user is removed afterwards.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import aio_pika
import aiormq
import pytest

from gridloop_common.contracts import routing
from gridloop_common.messaging.topology import declare_topology

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "producer-user.sh"


def _rabbitmqctl(*arguments: str, check: bool = True) -> None:
    executable = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([executable, "-q", *arguments], check=check, capture_output=True, timeout=60)


@pytest.fixture(name="producer_url")
def producer_url_fixture(amqp_url: str) -> Iterator[str]:
    """The script's user on this session's vhost, as an AMQP URL; deleted after the test."""
    parts = urlsplit(amqp_url)
    vhost = parts.path.lstrip("/")
    user, password = f"gridloop-producer-test-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    environment = {**os.environ, "PRODUCER_USER": user, "PRODUCER_PASSWORD": password, "RABBITMQ_VHOST": vhost}
    environment["PATH"] = f"{environment.get('PATH', '')}:/usr/sbin"
    try:
        made = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=environment)
        assert made.returncode == 0, f"{SCRIPT.name} failed: {made.stderr or made.stdout}"
        yield f"amqp://{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port or 5672}/{vhost}"
    finally:
        # A user the script did not get to create has nothing to delete.
        _rabbitmqctl("delete_user", user, check=False)


@pytest.fixture(name="services_channel")
async def services_channel_fixture(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """The services' user (configure/write/read), with the topology declared as the services declare it."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel)
        await (await channel.get_queue(routing.Queues.SCHEDULER_UPSTREAM)).purge()
        yield channel


def _envelope() -> bytes:
    event_object = {"id": "producer-user-test", "device_id": "battery-1", "mode": "DISCHARGE"}
    payload = {
        "event_type": "command.created",
        "event_object": event_object,
        "timestamp": datetime.now(tz=UTC).isoformat(),
    }
    return json.dumps(payload).encode()


async def test_the_producer_may_publish_to_gridloop_upstream_and_nothing_else(
    producer_url: str, services_channel: aio_pika.abc.AbstractChannel
) -> None:
    message = aio_pika.Message(_envelope(), message_id="producer-user-1", content_type="application/json")
    connection = await aio_pika.connect(producer_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        upstream = await channel.get_exchange(routing.UPSTREAM_EXCHANGE, ensure=False)
        await upstream.publish(message, routing_key="command.created")

        channel = await connection.channel(publisher_confirms=True)
        devices = await channel.get_exchange(routing.DEVICES_EXCHANGE, ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match=re.escape(routing.DEVICES_EXCHANGE)):
            await devices.publish(message, routing_key=f"{routing.RoutingKeys.DEVICE_ACTION_PREFIX}.battery-1")

        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_queue("producer-owned", auto_delete=True)

        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_exchange(routing.UPSTREAM_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

        async def never_called(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            raise AssertionError("the producer consumed a message")

        channel = await connection.channel()
        queue = await channel.get_queue(routing.Queues.SCHEDULER_UPSTREAM, ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match=re.escape(routing.Queues.SCHEDULER_UPSTREAM)):
            await queue.consume(never_called)

    # The one allowed publish reached the scheduler's queue as it was sent.
    queue = await services_channel.get_queue(routing.Queues.SCHEDULER_UPSTREAM)
    delivered = await queue.get(no_ack=True, fail=False, timeout=5)
    assert delivered is not None and delivered.message_id == "producer-user-1"
    assert delivered.body == message.body
