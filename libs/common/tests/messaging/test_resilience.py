"""Failure promises against the real broker: restart, dropped connections, SIGTERM mid-message."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from gridloop_common.messaging import (
    Broker,
    BrokerUnavailable,
    Consumer,
    Delivery,
    QueueSpec,
    declare_queue,
    open_broker,
)
from gridloop_common.settings import AmqpSettings
from gridloop_common.testing import TcpProxy

TEST_EXCHANGE = "gridloop.devices"


async def _rabbitmqctl(*arguments: str) -> None:
    executable = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    process = await asyncio.create_subprocess_exec(
        executable, "-q", *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, error = await process.communicate()
    assert process.returncode == 0, f"rabbitmqctl {' '.join(arguments)} failed: {error.decode()}"


@pytest.fixture
async def restartable_broker() -> AsyncIterator[None]:
    """Whatever a test does to the broker, it is running again afterwards."""
    try:
        yield
    finally:
        await _rabbitmqctl("start_app")
        await _rabbitmqctl("await_startup")


async def test_confirmed_message_survives_a_broker_restart_and_consumers_resume(
    broker: Broker, queue: QueueSpec, restartable_broker: None
) -> None:
    parked = QueueSpec(f"test.parked.{uuid.uuid4().hex[:8]}", bindings=((TEST_EXCHANGE, "parked." + queue.name),))
    await declare_queue(broker.channel, parked)
    received: list[bytes] = []
    arrived = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        received.append(delivery.body)
        arrived.set()

    async with Consumer(channel=broker.channel, publisher=broker.publisher, queue_name=queue.name, handler=handle):
        await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key="parked." + queue.name, body=b"before")

        await _rabbitmqctl("stop_app")
        async with asyncio.timeout(10):
            while broker.connection.connected.is_set():
                await asyncio.sleep(0.05)
        await _rabbitmqctl("start_app")
        await _rabbitmqctl("await_startup")
        async with asyncio.timeout(30):
            await broker.connection.connected.wait()

        # The consumer registered before the restart receives what is published after it.
        async with asyncio.timeout(30):
            while True:
                try:
                    await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"after")
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.2)  # channels are still being restored
            await arrived.wait()
    assert received == [b"after"]

    survivor = await (await broker.channel.get_queue(parked.name)).get(no_ack=True)
    assert survivor.body == b"before"


def _through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}"))


async def test_connection_dropped_under_load_is_recovered_and_nothing_is_lost(
    amqp_url: str, broker: Broker, queue: QueueSpec
) -> None:
    total = 3000
    seen: dict[str, int] = {}
    all_seen = asyncio.Event()
    quarter_seen = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        assert delivery.message_id is not None
        seen[delivery.message_id] = seen.get(delivery.message_id, 0) + 1
        await asyncio.sleep(0.002)  # some work, so messages are in flight when the link is cut
        if len(seen) >= total // 4:
            quarter_seen.set()
        if len(seen) == total:
            all_seen.set()

    async with TcpProxy(upstream_host="127.0.0.1", upstream_port=5672) as proxy:
        url = _through(proxy, amqp_url)
        settings = AmqpSettings(amqp_url=url, amqp_prefetch=100)
        async with (
            open_broker(settings, client_name="test-cut-consumer", url=url) as consumer_broker,
            Consumer(
                channel=consumer_broker.channel,
                publisher=consumer_broker.publisher,
                queue_name=queue.name,
                handler=handle,
            ),
        ):
            cut_connections: list[tuple[int, int]] = []

            async def cut_at_a_quarter() -> None:
                await quarter_seen.wait()
                cut_connections.append((proxy.cut(), len(seen)))

            cutter = asyncio.create_task(cut_at_a_quarter())
            published: list[str] = []
            for batch_start in range(0, total, 250):
                ids = await asyncio.gather(
                    *(
                        broker.publisher.publish(
                            exchange=TEST_EXCHANGE, routing_key=queue.name, body=str(number).encode()
                        )
                        for number in range(batch_start, batch_start + 250)
                    )
                )
                published.extend(ids)
            async with asyncio.timeout(60):
                await cutter
                await all_seen.wait()
            ((dropped, seen_at_cut),) = cut_connections
            assert dropped >= 2  # both directions of the consumer's connection
            assert seen_at_cut < total  # the cut really happened mid-stream
            assert proxy.connections_accepted >= 2  # it really reconnected
    assert set(seen) == set(published)
    # At-least-once: a message in flight at the cut may be seen twice, never zero times.
    assert all(count >= 1 for count in seen.values())


async def test_publishing_through_a_dropped_connection_loses_no_confirmed_message(
    amqp_url: str, broker: Broker, queue: QueueSpec
) -> None:
    confirmed: list[str] = []
    failures = 0
    async with TcpProxy(upstream_host="127.0.0.1", upstream_port=5672) as proxy:
        url = _through(proxy, amqp_url)
        settings = AmqpSettings(amqp_url=url, amqp_confirm_timeout_s=5.0)
        async with open_broker(settings, client_name="test-cut-publisher", url=url) as publishing_broker:
            for number in range(600):
                if number == 300:
                    proxy.cut()
                while True:
                    try:
                        confirmed.append(
                            await publishing_broker.publisher.publish(
                                exchange=TEST_EXCHANGE, routing_key=queue.name, body=str(number).encode()
                            )
                        )
                        break
                    except BrokerUnavailable:
                        failures += 1
                        await asyncio.sleep(0.1)
    queued = await broker.channel.get_queue(queue.name)
    stored: set[str] = set()
    while (message := await queued.get(fail=False, no_ack=True)) is not None:
        stored.add(message.message_id or "")
    assert set(confirmed) <= stored
    assert len(confirmed) == 600


async def test_sigterm_during_handling_requeues_the_message(
    amqp_url: str, broker: Broker, queue: QueueSpec, tmp_path: Path
) -> None:
    marker = tmp_path / "handling"
    script = Path(__file__).with_name("consumer_process.py")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        amqp_url,
        queue.name,
        str(marker),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        message_id = await broker.publisher.publish(exchange=TEST_EXCHANGE, routing_key=queue.name, body=b"slow")
        async with asyncio.timeout(30):
            while not marker.exists():
                await asyncio.sleep(0.05)
        assert marker.read_text() == message_id
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()
        stopped_in = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert stopped_in < 20
    requeued = await (await broker.channel.get_queue(queue.name)).get(no_ack=True)
    assert requeued.message_id == message_id
    assert requeued.redelivered
