"""Phoenix channel frames in both serializers realtime clients speak: vsn 1.0.0 (objects) and 2.0.0 (arrays).

vsn 1.0.0: ``{"join_ref", "ref", "topic", "event", "payload"}`` (realtime-py, older realtime-js).
vsn 2.0.0: ``[join_ref, ref, topic, event, payload]`` (realtime-js's default since early 2026, supabase-js
PR #2034). Its binary frames carry only Broadcast, which this server does not offer: a user broadcast push is
answered with an error reply on its channel, any other binary frame closes the socket with 1003.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED_DATA",
    "PHOENIX_TOPIC",
    "SERIALIZERS",
    "Frame",
    "FrameError",
    "close_reason",
    "decode_binary",
    "decode_text",
    "encode",
]

SERIALIZERS: Final = ("1.0.0", "2.0.0")
PHOENIX_TOPIC: Final = "phoenix"
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_INVALID_PAYLOAD: Final = 1007
CLOSE_TOO_BIG: Final = 1009
# realtime-js's serializer: kind byte 3 is a user broadcast push, followed by six header bytes.
_USER_BROADCAST_PUSH: Final = 3
_PUSH_HEADER_LENGTH: Final = 7
# A close frame is a control frame: at most 125 bytes of payload, two of them the code (RFC 6455, 5.5).
_CLOSE_REASON_BYTES: Final = 123


@dataclass(frozen=True)
class Frame:
    """One Phoenix message, whichever serializer carried it."""

    topic: str
    event: str
    payload: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None
    join_ref: str | None = None


class FrameError(ValueError):
    """A frame that cannot be read; the socket closes with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry; a longer reason (e.g. one quoting a client's junk vsn)
    made the websocket layer raise instead of closing, and the client saw the socket drop."""
    return text.encode("utf-8", "replace")[:_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def decode_text(text: str, vsn: str) -> Frame:
    """A text frame as a Frame; FrameError (1007) when it is not a Phoenix message of this serializer."""
    try:
        message = json.loads(text)
    except RecursionError as error:
        raise FrameError(CLOSE_INVALID_PAYLOAD, "frame nested too deeply") from error
    except ValueError as error:
        raise FrameError(CLOSE_INVALID_PAYLOAD, f"frame is not JSON: {error}") from error
    if vsn == "2.0.0":
        if not isinstance(message, list) or len(message) != 5:
            raise FrameError(CLOSE_INVALID_PAYLOAD, "vsn 2.0.0 frames are [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = message
    else:
        if not isinstance(message, dict):
            raise FrameError(CLOSE_INVALID_PAYLOAD, "vsn 1.0.0 frames are JSON objects")
        join_ref, ref, topic, event = (message.get(key) for key in ("join_ref", "ref", "topic", "event"))
        payload = message.get("payload")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise FrameError(CLOSE_INVALID_PAYLOAD, "topic and event must be strings")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise FrameError(CLOSE_INVALID_PAYLOAD, "payload must be an object")
    return Frame(topic, event, payload, _optional_text(ref), _optional_text(join_ref))


def decode_binary(data: bytes, vsn: str) -> Frame:
    """A binary frame: realtime-js 2.0.0's user broadcast push (topic and refs only), else FrameError (1003)."""
    if vsn != "2.0.0" or len(data) < _PUSH_HEADER_LENGTH or data[0] != _USER_BROADCAST_PUSH:
        raise FrameError(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
    join_ref_length, ref_length, topic_length = data[1], data[2], data[3]
    offset = _PUSH_HEADER_LENGTH
    fields = []
    for length in (join_ref_length, ref_length, topic_length):
        fields.append(data[offset : offset + length].decode("utf-8", errors="replace"))
        offset += length
    if offset > len(data):
        raise FrameError(CLOSE_UNSUPPORTED_DATA, "truncated binary frame")
    join_ref, ref, topic = fields
    return Frame(topic, "broadcast", {}, ref or None, join_ref or None)


def encode(frame: Frame, vsn: str) -> str:
    if vsn == "2.0.0":
        return json.dumps(
            [frame.join_ref, frame.ref, frame.topic, frame.event, frame.payload], separators=(",", ":"), default=str
        )
    message = {"event": frame.event, "topic": frame.topic, "payload": frame.payload, "ref": frame.ref}
    return json.dumps(message, separators=(",", ":"), default=str)
