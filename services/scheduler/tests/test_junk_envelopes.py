"""Hypothesis-generated junk envelopes published to gridloop.upstream, consumed by the real intake; junk on
the health port the scheduler (and the optimizer and device agent alike) serves.

Each junk message (junk body, junk routing key, junk headers, a forged ``x-delivery-count`` among them)
must end one way only: stored (the handler returned, one row in scheduler.upstream_events) or
dead-lettered at the first attempt with a reason (nothing stored). It is never retried as if the
failure were transient, the consumer keeps taking the next one, and nothing logs a traceback or an
error other than the consumer's own "message dead-lettered" line. The health port answers junk requests,
and junk bytes that are not HTTP at all, below 500 (or closes), without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from gridloop_common.contracts import routing
from gridloop_common.db import database_ready
from gridloop_common.messaging import DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_REASON_HEADER
from gridloop_common.observability import Health, health_routes, serve_http

from .test_upstream_intake import DEAD_LETTERS, Intake, _command
from .test_upstream_intake import intake as intake  # the fixture, under its name

pytestmark = pytest.mark.connected

DEAD_LETTERED_MESSAGE = "message dead-lettered"


class UnexpectedRecords(logging.Handler):
    """Records at ERROR or with a traceback (but the consumer's dead-letter line), and every retry warning."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        dead_lettered = record.getMessage() == DEAD_LETTERED_MESSAGE and not record.exc_info
        retried = record.getMessage() == "handler failed, will retry"
        if retried or ((record.levelno >= logging.ERROR or record.exc_info) and not dead_lettered):
            self.records.append(record)

    def take(self) -> list[str]:
        found = [f"{record.name}: {record.getMessage()} {record.__dict__.get('error')!r}" for record in self.records]
        self.records.clear()
        return found


@pytest.fixture
def unexpected_records() -> Iterator[UnexpectedRecords]:
    handler = UnexpectedRecords()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["battery-1", "2026-12-07T10:00:00+00:00", "\x00", "\ud800", "DISCHARGE", "9" * 2000])
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_known_event_types = st.sampled_from(
    [
        "command.created",
        "command.updated",
        "command.started",
        "command.ended",
        "command.canceled",
        "settings.apply",
        "enrollment.created",
    ]
) | st.text(max_size=20).map(lambda tail: "event." + tail)
_event_types = _known_event_types | st.text(max_size=40)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")


def _junk_command(changes: dict[str, Any]) -> dict[str, Any]:
    """A plausible command with some fields replaced by junk (so the Command validation sees it)."""
    return _command(**changes)


_command_fields = st.sampled_from(
    ["id", "device_id", "starts_at", "ends_at", "duration_s", "battery_commands", "status", "device_status"]
)
_now = datetime.now(tz=UTC).isoformat()
# Well-formed envelopes whose command has junk in some fields (they reach storage and the lifecycle) ...
plausible_envelopes = st.fixed_dictionaries(
    {
        "event_type": _known_event_types,
        "event_object": st.dictionaries(_command_fields, json_values | st.just(None), max_size=3).map(_junk_command),
        "timestamp": st.just(_now),
    },
    optional={"extra": json_values},
)
# ... and envelopes with junk anywhere.
envelopes = plausible_envelopes | st.fixed_dictionaries(
    {
        "event_type": _event_types | json_values,
        "event_object": st.dictionaries(_command_fields, json_values, max_size=4).map(_junk_command) | json_values,
        "timestamp": st.just(_now) | json_values,
    },
    optional={"extra": json_values},
)
bodies = (
    plausible_envelopes.map(_dump)
    | envelopes.map(_dump)
    | json_values.map(_dump)
    | st.binary(max_size=300)
    | st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(0, 20_000))
)
routing_keys = (_event_types | st.text(max_size=60)).filter(
    lambda key: len(key.encode("utf-8", "surrogatepass")) <= 255
)
_header_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=30).map(lambda text: text.encode("utf-8", "replace").decode("utf-8"))
    | st.binary(max_size=20).map(bytearray)  # an AMQP byte array (pamqp encodes bytearray, decodes it as bytes)
    | st.lists(st.integers(-5, 5) | st.text(max_size=5), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(-5, 5), max_size=2)
)
junk_headers = st.dictionaries(
    st.sampled_from(["x-delivery-count", "x-correlation-id", "x-gridloop-attempts", "x-death", "x-source"])
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
    _header_values,
    max_size=4,
)


async def _outcome(intake: Intake, message_id: str, dead: dict[str, dict[str, Any]]) -> str:
    """``stored`` once the handler returned for the message, ``dead-lettered`` once it reached the DLQ."""
    queue = await intake.broker.channel.get_queue(DEAD_LETTERS)
    async with asyncio.timeout(20):
        while True:
            if message_id in intake.handled:
                return "stored"
            if message_id in dead:
                return "dead-lettered"
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.01)
            else:
                dead[message.message_id or ""] = dict(message.headers)


@given(body=bodies, routing_key=routing_keys, headers=junk_headers)
@example(body=b"[" * 10_000 + b"]" * 10_000, routing_key="event.created", headers={"x-delivery-count": 99})
@example(body=_dump({"event_type": "command.created", "event_object": {}}), routing_key="command.created", headers={})
@example(body=b"not json", routing_key="command.created", headers={"x-raw": bytearray(b"\x00\xff")})
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
async def test_junk_envelopes_are_stored_or_dead_lettered_at_once(
    intake: Intake,
    unexpected_records: UnexpectedRecords,
    body: bytes,
    routing_key: str,
    headers: dict[str, Any],
) -> None:
    message_id = f"junk-{uuid.uuid4().hex}"
    await intake.broker.publisher.publish(
        exchange=routing.UPSTREAM_EXCHANGE, routing_key=routing_key, body=body, message_id=message_id, headers=headers
    )
    dead: dict[str, dict[str, Any]] = {}
    outcome = await _outcome(intake, message_id, dead)
    stored = await intake.pool.fetchval(
        "SELECT count(*) FROM scheduler.upstream_events WHERE event_key = $1", message_id
    )
    if outcome == "stored":
        assert stored == 1
    else:
        assert stored == 0
        assert dead[message_id][DEAD_LETTER_REASON_HEADER]
        assert dead[message_id][DEAD_LETTER_ATTEMPTS_HEADER] == 1  # poison at once, never retried as transient
    assert unexpected_records.take() == []


@pytest.fixture
async def health_port(intake: Intake) -> AsyncIterator[str]:
    """The scheduler's health app as app.py serves it, its checks on the real database and broker."""
    health = Health(service="scheduler-test")
    health.add_check("database", lambda: database_ready(intake.pool))
    health.add_check("broker", intake.broker.ready)
    async with serve_http(Starlette(routes=health_routes(health)), host="127.0.0.1", port=0) as server:
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
_paths = st.sampled_from(["/healthz", "/readyz", "/metrics", "/", "/healthz/", "//readyz"]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"), max_size=30
).map(lambda tail: "/" + tail)


@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE"]),
    path=_paths,
    query=st.lists(st.tuples(_header_text, _header_text), max_size=3),
    headers=st.dictionaries(
        st.sampled_from(["Accept", "Content-Type", "Range", "X-Correlation-Id", "Accept-Encoding"]), _header_text
    ),
    body=st.binary(max_size=100),
)
@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
async def test_junk_requests_on_the_health_port_get_no_server_error(
    health_port: str,
    unexpected_records: UnexpectedRecords,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
) -> None:
    async with httpx.AsyncClient(base_url=f"http://{health_port}", timeout=10) as client:
        content = body if method in ("POST", "PUT", "DELETE") else None
        response = await client.request(method, path, params=query, headers=headers, content=content)
    assert response.status_code < 500, (response.status_code, response.text)
    assert unexpected_records.take() == []


_raw_fragments = st.sampled_from(
    [
        b"GET ",
        b"POST ",
        b"G\x00T ",
        b"/healthz",
        b"/readyz?",
        b"%80",
        b" HTTP/1.1",
        b" HTTP/9.9",
        b" HTTP/1.1\r\n",
        b"\r\n",
        b"\n",
        b"Host: x\r\n",
        b"Host:\r\n",
        b"Content-Length: 0\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999999999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
        b"X: \xff\xfe\r\n",
        b": no-name\r\n",
        b" folded\r\n",
        b"0\r\n\r\n",
        b"zz\r\n",
    ]
)


@given(raw=st.lists(_raw_fragments | st.binary(max_size=8), max_size=10).map(b"".join))
@example(raw=b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
async def test_junk_bytes_on_the_health_port_get_no_server_error(
    health_port: str, unexpected_records: UnexpectedRecords, raw: bytes
) -> None:
    host, port = health_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        # The blank line ends any header block; what the server still waits for (a body) it waits for in vain.
        writer.write(raw + b"\r\n\r\n")
        await writer.drain()
        try:
            status_line = await asyncio.wait_for(reader.readline(), 1.0)
        except (TimeoutError, ConnectionError):
            status_line = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if status_line:
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        assert int(status_line.split()[1]) < 500, status_line
    assert unexpected_records.take() == []
