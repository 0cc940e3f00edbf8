"""Request/reply over RabbitMQ with a timeout: a caller never waits forever for a service that is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from gridloop_common.contracts import routing
from gridloop_common.messaging.consumer import Delivery
from gridloop_common.messaging.errors import PoisonMessage, RpcError, RpcTimeout
from gridloop_common.messaging.publisher import Publisher

__all__ = ["RPC_ERROR_HEADER", "RpcClient", "rpc_handler"]

logger = logging.getLogger(__name__)

RPC_ERROR_HEADER = "x-gridloop-rpc-error"


class RpcClient:
    """Calls ``gridloop.rpc`` routing keys and waits for the reply on a private reply queue."""

    def __init__(self, *, channel: AbstractRobustChannel, publisher: Publisher, client_name: str) -> None:
        self._channel = channel
        self._publisher = publisher
        # A fixed, client-chosen name survives reconnects (the robust channel re-declares it).
        self._reply_queue_name = f"rpc.reply.{client_name}.{uuid.uuid4().hex[:12]}"
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._consumer_tag: str | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, *, channel: AbstractRobustChannel, publisher: Publisher, client_name: str
    ) -> AsyncIterator[RpcClient]:
        client = cls(channel=channel, publisher=publisher, client_name=client_name)
        queue = await channel.declare_queue(client._reply_queue_name, exclusive=True, auto_delete=True)
        client._consumer_tag = await queue.consume(client._on_reply, no_ack=True)
        try:
            yield client
        finally:
            for future in client._pending.values():
                future.cancel()
            with contextlib.suppress(Exception):
                await queue.cancel(client._consumer_tag)
                await queue.delete(if_unused=False, if_empty=False)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is None or future.done():
            return
        error = (message.headers or {}).get(RPC_ERROR_HEADER)
        if error:
            future.set_exception(RpcError(str(error)))
        else:
            future.set_result(message.body)

    async def call(self, routing_key: str, body: bytes, *, timeout_s: float = 5.0) -> bytes:
        """Send a request and return the reply body.

        Raises:
            RpcTimeout: no reply within ``timeout_s`` (the service is down, slow, or lost the request).
            RpcError: the service replied with an error.
            UnroutableError: nothing serves this routing key at all.
        """
        request_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._publisher.publish(
                exchange=routing.RPC_EXCHANGE,
                routing_key=routing_key,
                body=body,
                correlation_id=request_id,
                reply_to=self._reply_queue_name,
                # A request nobody picks up in time is worthless: let the broker drop it.
                expiration_s=timeout_s,
                persistent=False,
            )
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError as error:
            raise RpcTimeout(
                f"no reply to {routing_key!r} within {timeout_s:g} s: is the serving service running?"
            ) from error
        finally:
            self._pending.pop(request_id, None)


def rpc_handler(
    publisher: Publisher, serve: Callable[[Delivery], Awaitable[bytes]]
) -> Callable[[Delivery], Awaitable[None]]:
    """Turn ``serve`` (request -> reply body) into a Consumer handler that publishes the reply.

    A ``PoisonMessage`` from ``serve`` is sent back to the caller as an error reply, then acked.
    """

    async def handle(delivery: Delivery) -> None:
        if not delivery.reply_to:
            raise PoisonMessage("rpc request without reply_to")
        headers: dict[str, str] = {}
        try:
            reply = await serve(delivery)
        except PoisonMessage as error:
            reply, headers = b"", {RPC_ERROR_HEADER: str(error)[:1000]}
        await publisher.publish(
            exchange="",
            routing_key=delivery.reply_to,
            body=reply,
            correlation_id=delivery.correlation_id,
            headers=headers,
            persistent=False,
        )

    return handle
