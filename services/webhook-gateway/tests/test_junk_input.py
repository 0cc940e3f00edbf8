"""Hypothesis-generated junk on every route of the gateway, served by uvicorn on the real broker: never a 5xx.

Signed junk (the signature is right, so the body reaches the JSON and envelope checks), unsigned junk
with junk headers, junk bodies with a valid operator key on every operator endpoint (a stand-in optimizer
answers what passes), and junk methods and paths beside /v1/webhooks, /healthz, /readyz, /metrics and the
operator paths. Each answer must be below 500 (501 for an endpoint not built yet is the one exception),
and nothing may be logged at ERROR or with a traceback while the junk runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gridloop_common.messaging import open_broker
from gridloop_common.observability import serve_http
from webhook_gateway.operator_endpoints import ENDPOINTS, NOT_BUILT
from webhook_gateway.signatures import sign

from .conftest import SECRET, Responder, gateway_application, gateway_settings, key

pytestmark = pytest.mark.connected

JUNK_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ErrorRecords(logging.Handler):
    """Every log record at ERROR or above, or carrying a traceback, from any logger and thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def take(self) -> list[str]:
        found = [f"{record.name}: {record.getMessage()} {record.exc_info!r}" for record in self.records]
        self.records.clear()
        return found


@pytest.fixture
def error_records() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # records with a traceback at INFO or WARNING count too
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


@dataclass
class Served:
    client: httpx.AsyncClient
    errors: ErrorRecords

    async def check(self, response: httpx.Response) -> None:
        not_built = response.status_code == 501 and response.json()["error"] == "not_implemented"
        assert response.status_code < 500 or not_built, (response.status_code, response.text)
        assert self.errors.take() == []


@pytest.fixture
async def served(amqp_url: str, error_records: ErrorRecords, responder: Responder) -> AsyncIterator[Served]:
    """The gateway's application served by uvicorn on 127.0.0.1 on the test vhost, a stand-in optimizer behind it."""
    configured = gateway_settings(amqp_url)
    async with open_broker(configured.amqp, client_name="test-gateway-junk", url=amqp_url) as broker:
        async with (
            gateway_application(configured, broker) as application,
            serve_http(application, host="127.0.0.1", port=0) as server,
        ):
            port = server.servers[0].sockets[0].getsockname()[1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
                yield Served(client=client, errors=error_records)
        assert error_records.take() == []


# JSON values of every shape, including what PostgreSQL refuses (NaN, ±Infinity, NUL, lone surrogates).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["command.created", "command.updated", "event.created", "x" * 300, "é" * 200, ""])
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_command_keys = st.sampled_from(
    [
        "id",
        "event_id",
        "device_id",
        "starts_at",
        "ends_at",
        "duration_s",
        "is_preparatory_action",
        "battery_commands",
        "status",
        "device_status",
        "device_status_reason",
        "created_at",
        "updated_at",
    ]
)
_event_types = st.sampled_from(["command.created", "command.updated", "command.deleted", "event.created"]) | st.text(
    max_size=300
)
# Envelope-shaped junk: the right keys, junk values (so the envelope and Command checks see it).
envelopes = st.fixed_dictionaries(
    {
        "event_type": _event_types | json_values,
        "event_object": st.dictionaries(_command_keys, json_values, max_size=13) | json_values,
        "timestamp": st.text(max_size=40) | json_values,
    },
    optional={"extra": json_values},
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")


_GIANT_NUMBER_PREFIX = b'{"event_type": "event.created", "event_object": '
signed_bodies = (
    envelopes.map(_dump)
    | json_values.map(_dump)
    | st.binary(max_size=400)
    | st.builds(lambda depth, opener: opener * depth, st.integers(0, 20_000), st.sampled_from([b"[", b'{"a":']))
    | st.integers(0, 6000).map(
        lambda digits: b'{"event_type": "event.created", "event_object": ' + b"9" * digits + b"}"
    )
)
# Printable ASCII without the surrounding whitespace HTTP/1.1 clients strip or refuse.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "text/plain",
            "",
            "application/json;;",
        ]
    )
    | header_text
)


def _signed(body: bytes, webhook_id: str, at: int) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(at),
        "webhook-signature": sign(secret=SECRET, webhook_id=webhook_id, timestamp=at, body=body),
    }


@given(
    body=signed_bodies,
    content_type=content_types,
    webhook_id=st.from_regex(r"[A-Za-z0-9_\-:+=/]{1,255}", fullmatch=True),
    skew=st.just(0) | st.integers(-400, 400),
)
@example(body=b"[" * 10_000 + b"]" * 10_000, content_type="application/json", webhook_id="msg_deep", skew=0)
@example(
    body=b'{"event_type": "event.created", "event_object": ' + b"9" * 5000 + b"}",
    content_type="application/json",
    webhook_id="msg_digits",
    skew=0,
)
@example(
    body=_dump({"event_type": "é" * 255, "event_object": {}}), content_type="application/json", webhook_id="m", skew=0
)
@JUNK_SETTINGS
async def test_signed_junk_webhooks_get_no_server_error(
    served: Served, body: bytes, content_type: str, webhook_id: str, skew: int
) -> None:
    headers = {"content-type": content_type, **_signed(body, webhook_id, int(time.time()) + skew)}
    await served.check(await served.client.post("/v1/webhooks", content=body, headers=headers))


webhook_headers = st.dictionaries(
    st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-encoding"])
    | st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A) | st.just("-"), min_size=1, max_size=20),
    header_text
    | st.sampled_from(["v1,", "v1,AAAA", "v1,!!!", "v2,abc", "v1," + "A" * 5000, "9" * 40, "-1", "1e9", "msg_x"])
    # Bytes past ASCII, read as latin-1 by the server: "\xb2" is "²", which str.isdigit() takes and int() refuses.
    | st.sampled_from(["\xb2", "1\xb2", "\xb9\xb2\xb3"])
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=20),
    max_size=6,
).map(lambda headers: {name: value.encode("latin-1") for name, value in headers.items()})


@given(body=st.binary(max_size=600) | json_values.map(_dump), headers=webhook_headers)
@JUNK_SETTINGS
async def test_unsigned_junk_webhooks_get_no_server_error(
    served: Served, body: bytes, headers: dict[str, bytes]
) -> None:
    await served.check(await served.client.post("/v1/webhooks", content=body, headers=headers))


_paths = st.sampled_from(
    [
        "/v1/webhooks",
        "/v1/webhooks/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/v1/commands",
        "/v1/events",
        "//",
        "/openapi.json",
        *(endpoint.path for endpoint in ENDPOINTS),
        *(each.path for each in NOT_BUILT),
    ]
) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"), max_size=40).map(
    lambda tail: "/" + tail
)
_methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"])


@given(
    method=_methods,
    path=_paths,
    query=st.lists(st.tuples(header_text, header_text), max_size=4),
    headers=webhook_headers,
    body=st.binary(max_size=200),
)
@JUNK_SETTINGS
async def test_junk_requests_on_every_path_get_no_server_error(
    served: Served,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, bytes],
    body: bytes,
) -> None:
    content = body if method not in ("GET", "HEAD", "OPTIONS", "TRACE") else None
    response = await served.client.request(method, path, params=query, headers=headers, content=content)
    await served.check(response)


# Operator-shaped junk: the contracts' field names with junk values, times of every shape among them.
_operator_fields = st.sampled_from(sorted({name for each in ENDPOINTS for name in each.request.model_fields}))
_times = (
    st.sampled_from(
        [
            "2026-06-01T19:00:00-04:00",
            "2026-06-01T19:00:00",
            "2026-06-01",
            "tomorrow",
            "9999-12-31T23:59:59+14:00",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+14:00",
            "2026-13-01T00:00:00Z",
        ]
    )
    | st.integers()
)
_operator_values = json_values | _times | st.dictionaries(_times.map(str), json_values, max_size=4)
operator_bodies = (
    st.dictionaries(_operator_fields, _operator_values, max_size=10).map(_dump)
    | json_values.map(_dump)
    | st.binary(max_size=300)
    | st.just(b"")
)


@given(
    path=st.sampled_from([endpoint.path for endpoint in ENDPOINTS]),
    body=operator_bodies,
    content_type=content_types,
    query=st.lists(st.tuples(st.sampled_from(["site", "run_id"]) | header_text, header_text), max_size=3),
    role=st.sampled_from(["grid_operator", "service_role"]),
)
@example(
    path="/calculate_mpc",
    body=_dump(
        {
            "prices": {"2026-06-01T19:00:00Z": 1},
            "power_limit": {"2026-06-01T19:00:00Z": 1},
            "start": "9999-12-31T23:59:59+00:00",  # its default stop would be past the last date
        }
    ),
    content_type="application/json",
    query=[],
    role="grid_operator",
)
@JUNK_SETTINGS
async def test_junk_operator_bodies_with_a_valid_key_get_no_server_error(
    served: Served, path: str, body: bytes, content_type: str, query: list[tuple[str, str]], role: str
) -> None:
    headers = {**key(role), "content-type": content_type}
    await served.check(await served.client.post(path, content=body, params=query, headers=headers))
