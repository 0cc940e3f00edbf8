"""Fixtures: the gateway application on a real broker (test vhost), and a queue that sees what it publishes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from gridloop_common.contracts import routing
from gridloop_common.messaging import Broker, open_broker
from gridloop_common.observability import Health
from gridloop_common.settings import AmqpSettings
from webhook_gateway.routes import build_app
from webhook_gateway.settings import GatewaySettings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECOND_SECRET = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="


@dataclass
class Gateway:
    client: httpx.AsyncClient
    broker: Broker
    observed_queue: str

    async def published(self) -> list[tuple[str, str | None, bytes]]:
        """Everything published to gridloop.upstream since the test began: (routing key, message id, body)."""
        queue = await self.broker.channel.get_queue(self.observed_queue)
        found = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            found.append((message.routing_key or "", message.message_id, message.body))
        return found


def gateway_settings(amqp_url: str, **overrides: object) -> GatewaySettings:
    return GatewaySettings(
        webhook_secret=f"{SECRET} {SECOND_SECRET}",
        amqp=AmqpSettings(amqp_url=amqp_url, amqp_confirm_timeout_s=1.0),
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
async def gateway(amqp_url: str) -> AsyncIterator[Gateway]:
    settings = gateway_settings(amqp_url)
    async with open_broker(settings.amqp, client_name="test-gateway", url=amqp_url) as broker:
        observed = f"test.observe.{uuid.uuid4().hex[:8]}"
        queue = await broker.channel.declare_queue(observed, exclusive=True)
        await queue.bind(routing.UPSTREAM_EXCHANGE, routing_key="#")
        application = build_app(settings=settings, publisher=broker.publisher, health=Health(service="test"))
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(client=client, broker=broker, observed_queue=observed)
