"""RPC handlers of the optimizer."""

from __future__ import annotations

import json

from gridloop_common.messaging import Delivery, PoisonMessage

__all__ = ["serve_request"]


async def serve_request(delivery: Delivery) -> bytes:
    """Answer one RPC request, chosen by routing key."""
    if delivery.routing_key == "optimizer.status":
        return json.dumps({"service": "optimizer", "status": "idle"}).encode()
    raise PoisonMessage(f"unknown optimizer request {delivery.routing_key!r}")
