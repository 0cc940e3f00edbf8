"""Fixtures for messaging tests against the real broker (a private vhost per session)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from gridloop_common.messaging import Broker, QueueSpec, declare_queue, open_broker
from gridloop_common.settings import AmqpSettings

TEST_EXCHANGE = "gridloop.devices"


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    settings = AmqpSettings(amqp_url=amqp_url, amqp_prefetch=50, amqp_confirm_timeout_s=5.0)
    async with open_broker(settings, client_name=f"test-{uuid.uuid4().hex[:6]}", url=amqp_url) as opened:
        yield opened


@pytest.fixture
async def queue(broker: Broker) -> AsyncIterator[QueueSpec]:
    """A fresh quorum queue (delivery limit 3) bound on gridloop.devices by its own name."""
    name = f"test.{uuid.uuid4().hex[:10]}"
    spec = QueueSpec(name, bindings=((TEST_EXCHANGE, name),), delivery_limit=3)
    await declare_queue(broker.channel, spec)
    yield spec
