"""POST /v1/webhooks on the real broker: accepted after the confirm; bad input is a 4xx and publishes nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from gridloop_common.messaging import open_broker
from gridloop_common.testing import TcpProxy
from webhook_gateway.signatures import sign

from .conftest import SECOND_SECRET, SECRET, Gateway, gateway_application, gateway_settings


def command(**battery: Any) -> dict[str, Any]:
    now = datetime.now(tz=UTC)
    return {
        "id": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "device_id": "battery-1",
        "starts_at": (now + timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(minutes=31)).isoformat(),
        "duration_s": 1800,
        "is_preparatory_action": False,
        "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000, **battery},
        "status": "OK",
        "device_status": "PENDING",
        "device_status_reason": None,
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }


def envelope(event_object: dict[str, Any], event_type: str = "command.created") -> bytes:
    return json.dumps(
        {"event_type": event_type, "event_object": event_object, "timestamp": datetime.now(tz=UTC).isoformat()}
    ).encode()


def signed_headers(
    body: bytes, *, secret: str = SECRET, webhook_id: str | None = None, at: int | None = None
) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = at if at is not None else int(time.time())
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret=secret, webhook_id=webhook_id, timestamp=timestamp, body=body),
    }


async def test_signed_by_the_standardwebhooks_library_is_accepted_and_published(gateway: Gateway) -> None:
    body = envelope(command())
    webhook_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(tz=UTC)
    signature = Webhook(SECRET).sign(webhook_id, now, body.decode())
    response = await gateway.client.post(
        "/v1/webhooks",
        content=body,
        headers={
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        },
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "webhook_id": webhook_id}
    assert response.headers["x-correlation-id"]
    assert await gateway.published() == [("command.created", webhook_id, body)]


async def test_a_rotated_secret_is_accepted_too(gateway: Gateway) -> None:
    body = envelope(command())
    response = await gateway.client.post(
        "/v1/webhooks", content=body, headers=signed_headers(body, secret=SECOND_SECRET)
    )
    assert response.status_code == 202
    assert len(await gateway.published()) == 1


def _bad_cases() -> list[tuple[str, int, str]]:
    return [
        ("missing webhook-id", 400, "missing_headers"),
        ("missing webhook-timestamp", 400, "missing_headers"),
        ("missing webhook-signature", 400, "missing_headers"),
        ("timestamp not a number", 400, "malformed_header"),
        ("webhook-id longer than an AMQP message id", 400, "malformed_header"),
        ("signature without comma", 401, "invalid_signature"),
        ("signature bad base64", 401, "invalid_signature"),
        ("wrong secret", 401, "invalid_signature"),
        ("tampered body", 401, "invalid_signature"),
        ("timestamp too old", 401, "timestamp_out_of_range"),
        ("timestamp too new", 401, "timestamp_out_of_range"),
        ("wrong content type", 415, "unsupported_media_type"),
        ("body over 1 MiB", 413, "payload_too_large"),
        ("not JSON", 400, "invalid_json"),
        ("negative setpoint", 422, "invalid_event"),
        ("unknown mode", 422, "invalid_event"),
        ("missing device_id", 422, "invalid_event"),
        ("envelope without timestamp", 422, "invalid_event"),
    ]


def _request_for(case: str) -> tuple[bytes, dict[str, str]]:
    good = envelope(command())
    headers = signed_headers(good)
    if case.startswith("missing webhook-"):
        del headers[case.removeprefix("missing ")]
        return good, headers
    if case == "timestamp not a number":
        return good, {**headers, "webhook-timestamp": "hello"}
    if case == "webhook-id longer than an AMQP message id":
        return good, {**headers, "webhook-id": "a" * 256}  # refused before the signature is looked at
    if case == "signature without comma":
        return good, {**headers, "webhook-signature": "v1" + headers["webhook-signature"][3:]}
    if case == "signature bad base64":
        return good, {**headers, "webhook-signature": "v1,!!!not-base64!!!"}
    if case == "wrong secret":
        return good, signed_headers(good, secret="whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==")
    if case == "tampered body":
        return good.replace(b"3000", b"4000"), headers
    if case == "timestamp too old":
        return good, signed_headers(good, at=int(time.time()) - 301)
    if case == "timestamp too new":
        return good, signed_headers(good, at=int(time.time()) + 301)
    if case == "wrong content type":
        return good, {**headers, "content-type": "text/plain"}
    if case == "body over 1 MiB":
        big = b"{" + b" " * (1024 * 1024 + 1) + b"}"
        return big, signed_headers(big)
    if case == "not JSON":
        body = b"event_type=command.created"
        return body, signed_headers(body)
    bodies = {
        "negative setpoint": envelope(command(setpoint_w=-5)),
        "unknown mode": envelope(command(mode="TURBO")),
        "missing device_id": envelope({key: value for key, value in command().items() if key != "device_id"}),
        "envelope without timestamp": json.dumps({"event_type": "command.created", "event_object": command()}).encode(),
    }
    body = bodies[case]
    return body, signed_headers(body)


@pytest.mark.parametrize(("case", "status", "code"), _bad_cases())
async def test_bad_input_gets_its_4xx_and_publishes_nothing(
    gateway: Gateway, case: str, status: int, code: str
) -> None:
    body, headers = _request_for(case)
    response = await gateway.client.post("/v1/webhooks", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert await gateway.published() == []


async def test_schema_errors_name_the_field(gateway: Gateway) -> None:
    body = envelope(command(setpoint_w=-5))
    response = await gateway.client.post("/v1/webhooks", content=body, headers=signed_headers(body))
    assert response.status_code == 422
    fields = [error["field"] for error in response.json()["errors"]]
    assert "event_object.battery_commands.setpoint_w" in fields


async def test_unknown_event_type_is_acknowledged_and_ignored(gateway: Gateway) -> None:
    body = envelope({"anything": 1}, event_type="invoice.paid")
    response = await gateway.client.post("/v1/webhooks", content=body, headers=signed_headers(body))
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert await gateway.published() == []


async def test_non_command_events_are_routed_not_dropped(gateway: Gateway) -> None:
    body = envelope({"id": "e-1", "name": "peak"}, event_type="event.created")
    response = await gateway.client.post("/v1/webhooks", content=body, headers=signed_headers(body))
    assert response.status_code == 202
    assert [key for key, _, _ in await gateway.published()] == ["event.created"]


async def test_no_redirect_for_a_trailing_slash(gateway: Gateway) -> None:
    body = envelope(command())
    response = await gateway.client.post("/v1/webhooks/", content=body, headers=signed_headers(body))
    assert response.status_code == 404
    assert (await gateway.client.get("/v1/webhooks")).status_code == 405


async def test_503_with_retry_after_when_the_broker_cannot_confirm(amqp_url: str, gateway: Gateway) -> None:
    settings = gateway_settings(amqp_url)
    async with TcpProxy(upstream_host="127.0.0.1", upstream_port=5672) as proxy:
        proxied = amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        async with (
            open_broker(settings.amqp, client_name="test-gateway-cut", url=proxied) as broker,
            gateway_application(settings, broker) as application,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://g") as client,
        ):
            proxy.refusing = True
            proxy.cut()
            async with asyncio.timeout(10):
                while broker.connection.connected.is_set():
                    await asyncio.sleep(0.02)
            body = envelope(command())
            started = time.monotonic()
            response = await client.post("/v1/webhooks", content=body, headers=signed_headers(body))
            elapsed = time.monotonic() - started
            proxy.refusing = False
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "broker_unavailable"
    assert elapsed < 5
    assert await gateway.published() == []


async def test_a_content_length_of_non_ascii_digits_is_a_413_not_a_500(gateway: Gateway) -> None:
    # httptools refuses such a header before the app sees it; the app must not rely on that (another server).
    body = envelope(command())
    headers = {**signed_headers(body), "content-length": "²".encode("latin-1")}
    response = await gateway.client.post("/v1/webhooks", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
    assert await gateway.published() == []
