"""The gateway's fast paths agree with their reference paths (docs/architecture.md, "Fast paths").

The raw ASGI webhook route answers exactly as the Starlette route did, ``fast_path.parse_envelope`` accepts
exactly what ``load_document`` then ``forwarding.parse_event`` accept, and concurrent deliveries all land.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.responses import JSONResponse

from gridloop_common.contracts import UpstreamEvent
from gridloop_common.contracts.documents import MAX_DEPTH, load_document, may_hold_refused_values
from webhook_gateway import fast_path, forwarding

from .conftest import Gateway
from .test_webhooks import command, envelope, signed_headers


async def test_accepted_answer_is_what_json_response_renders(gateway: Gateway) -> None:
    body = envelope(command())
    headers = signed_headers(body)
    first = await gateway.client.post("/v1/webhooks", content=body, headers=headers)
    second_body = envelope(command())
    second = await gateway.client.post("/v1/webhooks", content=second_body, headers=signed_headers(second_body))
    expected = JSONResponse({"status": "accepted", "webhook_id": headers["webhook-id"]}, status_code=202)
    assert first.status_code == 202
    assert first.content == expected.body
    assert first.headers["content-type"] == "application/json"
    assert first.headers["content-length"] == str(len(expected.body))
    assert len(first.headers["x-correlation-id"]) == 32
    assert first.headers["x-correlation-id"] != second.headers["x-correlation-id"]


async def test_error_answers_carry_the_correlation_id_too(gateway: Gateway) -> None:
    body = envelope(command())
    response = await gateway.client.post(
        "/v1/webhooks", content=body, headers={**signed_headers(body), "content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.headers["x-correlation-id"]
    assert response.headers["content-type"] == "application/json"


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_chunked_upload_is_read_whole_and_a_too_large_one_is_refused(gateway: Gateway) -> None:
    body = envelope(command())
    headers = signed_headers(body)
    response = await gateway.client.post("/v1/webhooks", content=_chunks(body, 50), headers=headers)
    assert response.status_code == 202, response.text
    big = b"{" + b" " * (1024 * 1024 + 1) + b"}"
    response = await gateway.client.post("/v1/webhooks", content=_chunks(big, 65536), headers=signed_headers(big))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert await gateway.published() == [("command.created", headers["webhook-id"], body)]


async def test_utf16_json_is_still_accepted_through_the_original_path(gateway: Gateway) -> None:
    body = json.dumps(json.loads(envelope(command()))).encode("utf-16")
    response = await gateway.client.post("/v1/webhooks", content=body, headers=signed_headers(body))
    assert response.status_code == 202, response.text
    assert [key for key, _, _ in await gateway.published()] == ["command.created"]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _bodies() -> list[bytes]:
    good = json.loads(envelope(command()))
    return [
        envelope(command()),
        envelope({"id": "e-1", "name": "peak"}, event_type="event.created"),
        envelope({"anything": 1}, event_type="settings.apply"),
        # duplicate keys: the last one wins in both parsers
        b'{"event_type": "invoice.paid", "event_type": "event.x", "event_object": {}, "timestamp": "'
        + good["timestamp"].encode()
        + b'"}',
        json.dumps({**good, "event_object": {**good["event_object"], "duration_s": "1800"}}).encode(),
        json.dumps({**good, "event_object": {**good["event_object"], "is_preparatory_action": "true"}}).encode(),
        json.dumps({**good, "timestamp": 1767225600}).encode(),
        # many brackets, shallow: the fast path declines, the reference path accepts
        json.dumps({**good, "event_object": {**good["event_object"], "note": [[]] * 100}}).encode(),
        # refused anywhere in the body, also where the schema ignores a field (jsonb cannot store them)
        b'{"event_type": "event.x", "event_object": {"v": NaN}, "timestamp": "' + good["timestamp"].encode() + b'"}',
        json.dumps({**good, "extra": float("inf")}).encode(),
        json.dumps({**good, "event_object": {**good["event_object"], "note": 1e400}})
        .encode()
        .replace(b"Infinity", b"1e400"),
        json.dumps({**good, "event_object": {**good["event_object"], "note": "a\x00b"}}).encode(),
        json.dumps({**good, "event_object": {**good["event_object"], "note": "\ud800"}}).encode(),
        json.dumps({**good, "event_object": {**good["event_object"], "note": _nested(MAX_DEPTH)}}).encode(),
        json.dumps({**good, "event_object": {**good["event_object"], "note": 10**1200}}).encode(),
        json.dumps({**good, "event_type": "event." + "é" * 249}).encode(),
        # not valid: the fast path declines and the reference path decides
        envelope(command(setpoint_w=-5)),
        envelope({"anything": 1}, event_type="invoice.paid"),
        b"[1, 2]",
        b"not json",
    ]


def _original(raw: bytes) -> Any:
    try:
        return forwarding.parse_event(load_document(raw))
    except Exception as error:  # any refusal is what is compared
        return type(error)


@pytest.mark.parametrize("raw", _bodies())
def test_fast_validation_agrees_with_the_original_path(raw: bytes) -> None:
    fast = fast_path.parse_envelope(raw)
    original = _original(raw)
    if fast is None:
        # Declined only what the reference path refuses too, or a body whose bytes might hold a refused value.
        assert not isinstance(original, UpstreamEvent) or may_hold_refused_values(raw)
    else:
        assert isinstance(original, UpstreamEvent)
        assert fast.event_type == original.event_type
        assert fast.command() == original.command()
        assert fast.timestamp == original.timestamp


async def test_many_concurrent_deliveries_are_all_confirmed_and_published(gateway: Gateway) -> None:
    deliveries = []
    for _ in range(150):
        body = envelope(command())
        deliveries.append((body, signed_headers(body, webhook_id=f"msg_{uuid.uuid4().hex}")))
    responses = await asyncio.gather(
        *(gateway.client.post("/v1/webhooks", content=body, headers=headers) for body, headers in deliveries)
    )
    assert [response.status_code for response in responses] == [202] * len(deliveries)
    published = await gateway.published()
    assert sorted((message_id, body) for _, message_id, body in published) == sorted(
        (headers["webhook-id"], body) for body, headers in deliveries
    )
