"""Benchmark of the fast paths' own work beside their reference paths, in one process, without I/O.

docs/architecture.md ("Fast paths") lists each fast path with its reference. This measures the CPU per call
of the part that differs, with the inputs the gateway handles most (a signed command.created webhook):

- envelope validation: ``webhook_gateway.fast_path.parse_envelope`` against ``load_document`` then
  ``forwarding.parse_event``;
- publish encoding: ``gridloop_common.messaging._wire`` (the method frame cached per routing key, as the
  publisher caches it) against aio-pika's ``Message`` properties marshalled by aiormq's ``ChannelFrame``
  with pamqp, as ``Exchange.publish`` marshals them. Only the bytes: the confirm bookkeeping and the
  coalesced writes are measured end to end by bench/commands.py.

Each figure is the best of five rounds of CPU time (``time.process_time``) per call. Figures are printed and
written to bench/results/fast_paths.json. Run: `uv run python bench/fast_paths.py`.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from gridloop_common.contracts.documents import load_document
from gridloop_common.messaging._wire import encode_body, encode_content_header, encode_publish_method
from webhook_gateway import fast_path, forwarding

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fast_paths.json"
ROUNDS = 5
CALLS = 5_000
CHANNEL = 1
MAX_CONTENT_SIZE = 131_072 - 8  # RabbitMQ's default frame_max, less a body frame's overhead
EXCHANGE = "gridloop.upstream"
ROUTING_KEY = "command.created"


def webhook_body() -> bytes:
    """A command.created envelope the fast path takes (about one in five random UUIDs holds a digit, ``e`` and
    three digits, which the fast path declines as a possible overflowing number: docs/architecture.md)."""
    now = datetime.now(tz=UTC).replace(microsecond=0)
    command = {
        "id": "3f2a6c1d-8b4a-4a7f-9c2d-5a6f7a8b9c0d",
        "event_id": "b7d1c2a3-6f4b-4c8d-a1e2-0f9a8b7c6d5a",
        "device_id": "battery-1",
        "starts_at": (now + timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(minutes=31)).isoformat(),
        "duration_s": 1800,
        "is_preparatory_action": False,
        "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000},
        "status": "OK",
        "device_status": "PENDING",
        "device_status_reason": None,
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }
    return json.dumps({"event_type": ROUTING_KEY, "event_object": command, "timestamp": now.isoformat()}).encode()


def cpu_per_call_us(call: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(CALLS):
            call()
        best = min(best, time.process_time() - started)
    return best / CALLS * 1e6


def main() -> None:
    body = webhook_body()
    fast_event = fast_path.parse_envelope(body)
    reference_event = forwarding.parse_event(load_document(body))
    assert fast_event is not None, "the fast path declined the benchmark's body"
    assert fast_event.command() == reference_event.command()

    headers = {"x-source": "webhook-gateway", "x-gridloop-intake": "webhook", "x-correlation-id": "0" * 32}
    message_id = f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time())
    method_frames = {(CHANNEL, EXCHANGE, ROUTING_KEY): encode_publish_method(CHANNEL, EXCHANGE, ROUTING_KEY)}

    def wire() -> bytes:
        return (
            method_frames[(CHANNEL, EXCHANGE, ROUTING_KEY)]
            + encode_content_header(
                channel_number=CHANNEL,
                body_size=len(body),
                content_type="application/json",
                headers=headers,
                delivery_mode=2,
                correlation_id=None,
                reply_to=None,
                expiration=None,
                message_id=message_id,
                timestamp=stamp,
                app_id="webhook-gateway",
            )
            + encode_body(CHANNEL, body, MAX_CONTENT_SIZE)
        )

    def aio_pika_marshalled() -> bytes:
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            timestamp=datetime.fromtimestamp(stamp, tz=UTC),
            app_id="webhook-gateway",
        )
        message.priority = None  # the publisher sends none (test_wire.py)
        frames = [
            aiormq.spec.Basic.Publish(exchange=EXCHANGE, routing_key=ROUTING_KEY, mandatory=True),
            ContentHeader(properties=message.properties, body_size=len(body)),
            ContentBody(body),
        ]
        return ChannelFrame.marshall(channel_number=CHANNEL, frames=frames).payload

    assert wire() == aio_pika_marshalled()
    results: dict[str, Any] = {
        "measured_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "body_bytes": len(body),
        "envelope_validation_us": {
            "fast_path": cpu_per_call_us(lambda: fast_path.parse_envelope(body)),
            "reference": cpu_per_call_us(lambda: forwarding.parse_event(load_document(body))),
        },
        "publish_encoding_us": {
            "fast_path": cpu_per_call_us(wire),
            "reference": cpu_per_call_us(aio_pika_marshalled),
        },
    }
    for name in ("envelope_validation_us", "publish_encoding_us"):
        figures = results[name]
        print(
            f"{name[:-3]:<22} fast path {figures['fast_path']:7.1f} us/call, reference {figures['reference']:7.1f} "
            f"us/call ({figures['reference'] / figures['fast_path']:.1f}x)"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
