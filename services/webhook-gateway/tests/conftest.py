"""Fixtures: the gateway application on a real broker (test vhost), a queue that sees what it publishes, and
a stand-in for the optimizer answering the operator RPCs on the real ``optimizer.rpc`` queue."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gridloop_common.auth import issue_key
from gridloop_common.clock import Clock
from gridloop_common.contracts import routing
from gridloop_common.messaging import Broker, Delivery, RpcClient, open_broker, rpc_handler
from gridloop_common.observability import Health
from gridloop_common.settings import AmqpSettings
from webhook_gateway.routes import build_app
from webhook_gateway.settings import GatewaySettings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECOND_SECRET = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
JWT_SECRET = "gateway-test-secret-of-at-least-32-characters"


def key(role: str, **claims: Any) -> dict[str, str]:
    """Headers carrying a key for ``role`` signed with the gateway's secret."""
    return {"Authorization": f"Bearer {issue_key(JWT_SECRET, role, **claims)}"}


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
        jwt_secret=JWT_SECRET,
        amqp=AmqpSettings(amqp_url=amqp_url, amqp_confirm_timeout_s=1.0),
        **overrides,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def gateway_application(
    settings: GatewaySettings, broker: Broker, *, clock: Clock | None = None
) -> AsyncIterator[Any]:
    """The gateway's ASGI application on ``broker``, with its RPC client open."""
    async with RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="test-gateway") as rpc:
        yield build_app(
            settings=settings, publisher=broker.publisher, rpc=rpc, health=Health(service="test"), clock=clock
        )


@pytest.fixture
async def gateway(amqp_url: str) -> AsyncIterator[Gateway]:
    settings = gateway_settings(amqp_url)
    async with open_broker(settings.amqp, client_name="test-gateway", url=amqp_url) as broker:
        observed = f"test.observe.{uuid.uuid4().hex[:8]}"
        queue = await broker.channel.declare_queue(observed, exclusive=True)
        await queue.bind(routing.UPSTREAM_EXCHANGE, routing_key="#")
        async with gateway_application(settings, broker) as application:
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield Gateway(client=client, broker=broker, observed_queue=observed)


def echo(routing_key: str, request: Any) -> bytes:
    """The stand-in's default reply: 200 with what it was asked and on which routing key."""
    return json.dumps({"status": 200, "body": {"routing_key": routing_key, "request": request}}).encode()


@dataclass
class Responder:
    """Serves the optimizer's RPC queue: records each request, answers with ``reply(routing_key, request)``."""

    reply: Callable[[str, Any], bytes] = echo
    requests: list[tuple[str, Any]] = field(default_factory=list)

    async def serve(self, delivery: Delivery) -> bytes:
        request = delivery.json()
        self.requests.append((delivery.routing_key, request))
        return self.reply(delivery.routing_key, request)


@pytest.fixture
async def responder(amqp_url: str) -> AsyncIterator[Responder]:
    """A stand-in for the optimizer, consuming the real optimizer.rpc queue on its own connection."""
    standing_in = Responder()
    settings = AmqpSettings(amqp_url=amqp_url)
    async with (
        open_broker(settings, client_name="test-optimizer", url=amqp_url) as broker,
        broker.consumer(
            routing.Queues.OPTIMIZER_RPC, rpc_handler(broker.publisher, standing_in.serve), drain_timeout_s=2.0
        ),
    ):
        yield standing_in
