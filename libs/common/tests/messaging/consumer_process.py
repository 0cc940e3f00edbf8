"""A consumer process for the SIGTERM test: it handles one message slowly and is terminated meanwhile.

Usage: python consumer_process.py AMQP_URL QUEUE MARKER_FILE
It touches MARKER_FILE when the handler starts, then blocks until cancelled.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gridloop_common.lifecycle import run_service
from gridloop_common.messaging import Consumer, Delivery, open_broker
from gridloop_common.observability import configure_logging
from gridloop_common.settings import AmqpSettings


async def main(url: str, queue: str, marker: Path) -> None:
    configure_logging(service="test-consumer", level="INFO")

    async def slow(delivery: Delivery) -> None:
        marker.write_text(delivery.message_id or "")
        await asyncio.Event().wait()  # a handler that would take forever

    async with (
        open_broker(AmqpSettings(amqp_url=url, amqp_prefetch=1), client_name="test-consumer", url=url) as broker,
        Consumer(
            channel=broker.channel,
            publisher=broker.publisher,
            queue_name=queue,
            handler=slow,
            drain_timeout_s=1.0,
        ),
    ):
        await asyncio.Event().wait()


if __name__ == "__main__":
    amqp_url, queue_name, marker_file = sys.argv[1:4]
    run_service(lambda: main(amqp_url, queue_name, Path(marker_file)), program="test-consumer")
