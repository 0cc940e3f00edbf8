"""Signed bodies the scheduler could never store, or that break a parser, are refused at the door.

PostgreSQL's jsonb refuses NaN, ±Infinity (also as an overflowing number), U+0000 and lone surrogates;
accepting such a body with 202 meant it was lost later without an acknowledgement. Deep nesting and
giant integers made the parser raise (a 500); an event type of at most 255 characters but more than
255 bytes broke the publish (the AMQP routing key). Each is a 4xx naming the place, and nothing is
published, on the fast path and on the original one alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Gateway
from .test_webhooks import command, envelope, signed_headers


def _command_with(note: bytes) -> bytes:
    """A valid command.created whose command carries ``note`` (raw JSON) in a field the schema ignores."""
    body = envelope(command())
    return body.replace(b'"device_status_reason": null', b'"device_status_reason": null, "note": ' + note)


def _event_with(value: bytes) -> bytes:
    body = envelope({"name": "peak", "value": 0}, event_type="event.created")
    return body.replace(b'"value": 0', b'"value": ' + value)


CASES: list[tuple[str, bytes, int, str]] = [
    ("NaN in a command", _command_with(b"NaN"), 400, "event_object.note"),
    ("Infinity in an event", _event_with(b"Infinity"), 400, "event_object.value"),
    ("-Infinity in a list", _event_with(b"[1, -Infinity]"), 400, "event_object.value[1]"),
    ("a number overflowing to infinity", _command_with(b"1e400"), 400, "event_object.note"),
    ("an escaped NUL", _command_with(b'"a\\u0000b"'), 400, "event_object.note"),
    ("an escaped NUL in a key", _event_with(b'{"k\\u0000": 1}'), 400, "event_object.value.k\\u0000"),
    ("a lone surrogate", _event_with(b'"\\ud800"'), 400, "event_object.value"),
    ("10,000-deep JSON", _event_with(b"[" * 10_000 + b"]" * 10_000), 400, "body"),
    ("a 5,000-digit integer", _command_with(b"9" * 5000), 400, "event_object.note"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), CASES, ids=[case for case, *_ in CASES])
async def test_unstorable_json_is_refused_and_nothing_is_published(
    gateway: Gateway, case: str, body: bytes, status: int, field: str
) -> None:
    response = await gateway.client.post("/v1/webhooks", content=body, headers=signed_headers(body))
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] == "invalid_json"
    assert [error["field"] for error in answer["errors"]] == [field]
    assert answer["message"]
    assert await gateway.published() == []


async def test_an_event_type_longer_than_a_routing_key_in_bytes_is_a_422(gateway: Gateway) -> None:
    event_type = "event." + "é" * 249  # 255 characters, 504 bytes
    body = envelope({"name": "peak"}, event_type=event_type)
    response = await gateway.client.post("/v1/webhooks", content=body, headers=signed_headers(body))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_event"
    (error,) = response.json()["errors"]
    assert error["field"] == "event_type"
    assert "504 bytes" in error["message"]
    assert await gateway.published() == []


async def test_what_only_looks_like_a_refused_value_is_accepted(gateway: Gateway) -> None:
    event_object: dict[str, Any] = {"name": "NaN and Infinity", "text": "\\u0000", "emoji": "\U0001f600"}
    body = json.dumps(
        json.loads(envelope(event_object, event_type="event.created")), ensure_ascii=True
    ).encode()  # the emoji travels as an escaped surrogate pair
    response = await gateway.client.post("/v1/webhooks", content=body, headers=signed_headers(body))
    assert response.status_code == 202, response.text
    assert [(key, published) for key, _, published in await gateway.published()] == [("event.created", body)]
