"""Realtime's pure parts: filters as realtime-js writes them, Phoenix frames of both serializers, limits."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from telemetry_ingest.api.auth import Identity
from telemetry_ingest.realtime import FilterError, parse_filter
from telemetry_ingest.realtime.filters import parse_select
from telemetry_ingest.realtime.protocol import Frame, FrameError, decode_binary, decode_text, encode
from telemetry_ingest.realtime.session import JoinRate, expiry_delay, key_of

COLUMNS = {
    "device_id": "uuid",
    "soe": "float4",
    "blocks": "int2",
    "name": "text",
    "time": "timestamptz",
    "online": "bool",
}
DEVICE = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def _passes(filter_text: str, **record: Any) -> bool:
    return parse_filter(filter_text, COLUMNS).matches(record)


def test_conditions_joined_by_commas_must_all_hold() -> None:
    text = f"device_id=eq.{DEVICE},soe=gt.40"
    assert _passes(text, device_id=str(DEVICE), soe=41)
    assert not _passes(text, device_id=str(DEVICE), soe=40)
    assert not _passes(text, device_id=str(uuid.uuid4()), soe=90)
    assert parse_filter(text, COLUMNS).index_key() == ("device_id", (DEVICE,))


def test_not_negates_and_null_stays_unknown() -> None:
    assert _passes("soe=not.gt.40", soe=12)
    assert not _passes("soe=not.gt.40", soe=50)
    assert not _passes("soe=not.gt.40", soe=None)  # NOT (NULL > 40) is NULL: not sent
    assert _passes("blocks=not.in.(1,2)", blocks=3)
    assert not _passes("blocks=not.in.(1,2)", blocks=2)
    assert parse_filter("device_id=not.eq." + str(DEVICE), COLUMNS).index_key() is None


def test_is_and_isdistinct_treat_null_as_a_value() -> None:
    assert _passes("blocks=is.null", blocks=None)
    assert not _passes("blocks=is.null", blocks=0)
    assert _passes("blocks=not.is.null", blocks=0)
    assert _passes("online=is.true", online=True)
    assert not _passes("online=is.true", online=None)
    assert _passes("blocks=isdistinct.3", blocks=None)
    assert not _passes("blocks=isdistinct.null", blocks=None)
    with pytest.raises(FilterError, match="needs a boolean column"):
        parse_filter("soe=is.true", COLUMNS)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("bat*", "battery-1", True),
        ("%ery-_", "battery-1", True),
        ("%ery-_", "battery-12", False),
        ("b%t%y%1", "battery-1", True),
        ("b%z%", "battery-1", False),
        ("100\\%", "100%", True),
        ("100\\%", "1000", False),
        ("a%a%a%a%a%a%a%b", "a" * 5_000, False),  # no backtracking blow-up
        ("", "", True),
        ("%", "", True),
    ],
)
def test_like(pattern: str, text: str, expected: bool) -> None:
    assert _passes(f"name=like.{pattern}", name=text) is expected


def test_ilike_folds_case_and_like_needs_text() -> None:
    assert _passes("name=ilike.BAT*", name="battery")
    assert not _passes("name=like.BAT*", name="battery")
    with pytest.raises(FilterError, match="operator 'like' needs a text column"):
        parse_filter("soe=like.5*", COLUMNS)


def test_quoted_values_as_realtime_js_writes_them() -> None:
    assert _passes('name=eq."a,b (c)"', name="a,b (c)")
    assert _passes('name=in.("x,y","say \\"hi\\"",plain)', name='say "hi"')
    assert _passes('name=in.("x,y","say \\"hi\\"",plain)', name="x,y")
    assert not _passes('name=in.("x,y","say \\"hi\\"",plain)', name="x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("soe=match.^4", "operator 'match' is not one of"),
        ("nope=eq.1", "no column 'nope'"),
        ("soe=eq.abc", "invalid filter"),
        (f"device_id=eq.{DEVICE},soe", "expected column=operator.value"),
        ('name=eq."open', "unterminated quote"),
        ("blocks=in.()", "at least one value"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(text, COLUMNS)


def test_select_names_columns_of_the_table() -> None:
    assert parse_select(["soe", "soe", "name"], COLUMNS) == ("soe", "name")
    assert parse_select("soe, name", COLUMNS) == ("soe", "name")
    with pytest.raises(FilterError, match="no column 'secret'"):
        parse_select(["secret"], COLUMNS)
    with pytest.raises(FilterError, match="list of column names"):
        parse_select(5, COLUMNS)


def test_both_serializers_read_and_write_the_same_frame() -> None:
    frame = Frame("realtime:x", "phx_join", {"config": {}}, "2", "1")
    assert decode_text(encode(frame, "2.0.0"), "2.0.0") == frame
    assert json.loads(encode(frame, "2.0.0")) == ["1", "2", "realtime:x", "phx_join", {"config": {}}]
    assert json.loads(encode(frame, "1.0.0")) == {
        "event": "phx_join",
        "topic": "realtime:x",
        "payload": {"config": {}},
        "ref": "2",
    }
    assert decode_text('{"topic":"t","event":"e","ref":"3","join_ref":"1"}', "1.0.0") == Frame("t", "e", {}, "3", "1")


@pytest.mark.parametrize(
    ("data", "vsn", "code"),
    [
        ("[" * 100_000 + "]" * 100_000, "1.0.0", 1007),
        ("not json", "2.0.0", 1007),
        ('{"topic":"t","event":"e"}', "2.0.0", 1007),  # an object where 2.0.0 sends arrays
        ('[null,"1","t","e"]', "2.0.0", 1007),
        ('{"topic":5,"event":"e"}', "1.0.0", 1007),
        ('{"topic":"t","event":"e","payload":[1]}', "1.0.0", 1007),
        (b"\x03\x00\x00", "2.0.0", 1003),
        (b"\x03\x00\x00\x09\x00\x00\x01topic", "2.0.0", 1003),  # shorter than its header says
        (b"\x04anything", "2.0.0", 1003),
        (b"\x03\x00\x00\x01\x00\x00\x01t", "1.0.0", 1003),
    ],
)
def test_unreadable_frames_name_their_close_code(data: str | bytes, vsn: str, code: int) -> None:
    with pytest.raises(FrameError) as refused:
        decode_text(data, vsn) if isinstance(data, str) else decode_binary(data, vsn)
    assert refused.value.code == code
    assert refused.value.reason


def test_a_binary_broadcast_push_is_read_for_its_topic_and_refs() -> None:
    push = bytes([3, 1, 2, 6, 4, 0, 1]) + b"7" + b"12" + b"room:1" + b"ping" + b'{"a":1}'
    assert decode_binary(push, "2.0.0") == Frame("room:1", "broadcast", {}, "12", "7")


def test_join_rate_allows_a_burst_then_the_rate() -> None:
    rate = JoinRate(per_second=2.0, burst=3, now=100.0)
    assert [rate.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert rate.take(100.4) is False
    assert rate.take(100.5) is True
    assert rate.take(100.5) is False


def test_expiry_delay_from_the_exp_claim() -> None:
    assert expiry_delay({"exp": 1_000}, 990.5) == 9.5
    assert expiry_delay({"exp": 1_000}, 2_000.0) == 0.0
    assert expiry_delay({}, 0.0) is None
    assert expiry_delay({"exp": True}, 0.0) is None


def test_connections_count_against_the_subject_or_the_decoded_key() -> None:
    token = "e30.e30.c2lnbmF0dXJl"
    anon = Identity("anon", token, {})
    assert key_of(anon) == key_of(Identity("anon", token + "=", {}))
    assert key_of(anon) != key_of(Identity("anon", "e30.e30.b3RoZXI", {}))
    assert key_of(Identity("authenticated", token, {"sub": "u1"})) == "authenticated:sub:u1"
