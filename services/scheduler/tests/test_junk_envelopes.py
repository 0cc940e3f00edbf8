"""Hypothesis-generated junk envelopes published to gridloop.upstream, consumed by the real intake.

Each junk message (junk body, junk routing key, junk headers, a forged ``x-delivery-count`` among them)
must end one way only: stored (the handler returned, one row in scheduler.upstream_events) or
dead-lettered at the first attempt with a reason (nothing stored). It is never retried as if the
failure were transient, the consumer keeps taking the next one, and nothing logs a traceback or an
error other than the consumer's own "message dead-lettered" line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gridloop_common.contracts import routing
from gridloop_common.messaging import DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_REASON_HEADER

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
