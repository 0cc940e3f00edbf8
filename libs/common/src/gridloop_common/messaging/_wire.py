"""The publisher's fast path below aio-pika: AMQP 0-9-1 frames built here, registered in aiormq's channel.

``Publisher`` does not go through ``aio_pika.Exchange.publish`` (or ``aiormq.Channel.basic_publish``): that
path cost about twice the CPU per confirmed publish (docs/architecture.md, "Fast paths"). Instead it encodes
the method, content header and body frames itself (this module) and registers each publish in aiormq's
channel as ``basic_publish`` would (``publisher._PendingWrite``). Both halves are fenced by
``libs/common/tests/messaging/test_wire.py``: the bytes must equal what aio-pika, aiormq and pamqp send
for the same message, and every private attribute of aiormq listed in ``CHANNEL_INTERNALS`` and
``WRITE_INTERNALS`` must still be there and mean what it meant in aiormq 7.2.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import aiormq
import pamqp.encode
import pamqp.frame

__all__ = [
    "CHANNEL_INTERNALS",
    "WRITE_INTERNALS",
    "encode_body",
    "encode_content_header",
    "encode_publish_method",
    "missing_internals",
]

# What the publisher reads or writes on an ``aiormq.Channel`` beyond its public API, and why.
CHANNEL_INTERNALS: dict[str, str] = {
    "delivery_tag": "the last delivery tag given on the channel; the publisher takes the next ones itself",
    "confirmations": "delivery tag -> future aiormq settles on the broker's ack, nack or return",
    "message_id_delivery_tag": "message id -> delivery tag, how aiormq finds the publish a basic.return names",
    "write_queue": "the connection's write queue the publisher puts its own write object into",
    "lock": "orders the publisher's writes with aiormq's own basic_publish on the channel",
    "max_content_size": "the body frame size aiormq splits a body at",
}
# What aiormq's connection writer reads from an object it takes from the write queue (``aiormq.abc.ChannelFrame``);
# ``publisher._PendingWrite`` has the same.
WRITE_INTERNALS: tuple[str, ...] = ("payload", "should_close", "should_drain", "drain")

_FRAME_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_FRAME_END = b"\xce"
_FRAME_HEADER = 2
_FRAME_BODY = 3
_HEADER_FRAME_PREFIX = struct.Struct(">HHQH")  # class id, weight, body size, property flags
_BASIC_CLASS_ID = 60
_TIMESTAMP = struct.Struct(">Q")
_LONG = struct.Struct(">I")
# Property flags of the AMQP 0-9-1 basic class (the bits pamqp sets for the same properties).
_CONTENT_TYPE = 0x8000
_HEADERS = 0x2000
_DELIVERY_MODE = 0x1000
_CORRELATION_ID = 0x0400
_REPLY_TO = 0x0200
_EXPIRATION = 0x0100
_MESSAGE_ID = 0x0080
_TIMESTAMP_FLAG = 0x0040
_APP_ID = 0x0008


def missing_internals(obj: object, names: Mapping[str, str] | tuple[str, ...]) -> list[str]:
    """The names among ``names`` that ``obj`` (or its class, for properties) does not have."""
    return [name for name in names if not hasattr(obj, name) and not hasattr(type(obj), name)]


def encode_publish_method(channel_number: int, exchange: str, routing_key: str) -> bytes:
    """The ``basic.publish`` method frame (mandatory), marshalled by pamqp, which validates both names."""
    return pamqp.frame.marshal(
        aiormq.spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True), channel_number
    )


def _short_string(value: str) -> bytes:
    encoded = value.encode("utf-8")
    if len(encoded) > 255:
        raise TypeError("string exceeds maximum length of 255 bytes")  # as pamqp says it
    return bytes((len(encoded),)) + encoded


def encode_content_header(
    *,
    channel_number: int,
    body_size: int,
    content_type: str | None,
    headers: Mapping[str, Any] | None,
    delivery_mode: int | None,
    correlation_id: str | None,
    reply_to: str | None,
    expiration: str | None,
    message_id: str | None,
    timestamp: int | None,
    app_id: str | None,
) -> bytes:
    """The content header frame pamqp would marshal for these basic properties, without its per-field dispatch.

    Empty strings are left out, as pamqp leaves them out; the headers table is encoded by pamqp itself.
    """
    flags = 0
    parts: list[bytes] = []
    if content_type:
        flags |= _CONTENT_TYPE
        parts.append(_short_string(content_type))
    if headers is not None:
        flags |= _HEADERS
        parts.append(_field_table(headers))
    if delivery_mode is not None:
        flags |= _DELIVERY_MODE
        parts.append(bytes((delivery_mode,)))
    if correlation_id:
        flags |= _CORRELATION_ID
        parts.append(_short_string(correlation_id))
    if reply_to:
        flags |= _REPLY_TO
        parts.append(_short_string(reply_to))
    if expiration:
        flags |= _EXPIRATION
        parts.append(_short_string(expiration))
    if message_id:
        flags |= _MESSAGE_ID
        parts.append(_short_string(message_id))
    if timestamp is not None:
        flags |= _TIMESTAMP_FLAG
        parts.append(_TIMESTAMP.pack(timestamp))
    if app_id:
        flags |= _APP_ID
        parts.append(_short_string(app_id))
    payload = _HEADER_FRAME_PREFIX.pack(_BASIC_CLASS_ID, 0, body_size, flags) + b"".join(parts)
    return _FRAME_HEAD.pack(_FRAME_HEADER, channel_number, len(payload)) + payload + _FRAME_END


def _field_table(headers: Mapping[str, Any]) -> bytes:
    """pamqp's field table encoding; all-``str`` tables (the usual ones) without its per-value dispatch."""
    parts = []
    for key, value in sorted(headers.items()):
        if type(value) is not str:
            return pamqp.encode.field_table(dict(headers))
        encoded_key = key.encode("utf-8")
        if len(encoded_key) > 128:  # pamqp truncates such keys (and says so)
            return pamqp.encode.field_table(dict(headers))
        encoded = value.encode("utf-8")
        parts.append(bytes((len(encoded_key),)) + encoded_key + b"S" + _LONG.pack(len(encoded)) + encoded)
    table = b"".join(parts)
    return _LONG.pack(len(table)) + table


def encode_body(channel_number: int, body: bytes, max_content_size: int) -> bytes:
    """The content body frames of ``body``, split as aiormq splits them."""
    if not body:
        return b""
    if len(body) < max_content_size:
        return _FRAME_HEAD.pack(_FRAME_BODY, channel_number, len(body)) + body + _FRAME_END
    chunks = [body[start : start + max_content_size] for start in range(0, len(body), max_content_size)]
    return b"".join(_FRAME_HEAD.pack(_FRAME_BODY, channel_number, len(chunk)) + chunk + _FRAME_END for chunk in chunks)
