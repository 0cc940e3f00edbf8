"""The batch fast path: JSON straight into COPY rows, never accepting what the models refuse."""

from __future__ import annotations

import gc
import json
import math
import re
from datetime import timedelta
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from telemetry_ingest.ingest.reading_rows import READING_MODELS, decoder, row_struct
from telemetry_ingest.ingest.repository import ReadingKind, ReadingsRepository, table_columns

_DEVICE = "2b1f9f3e-5a0e-4a43-9c55-3a8a34c1b8a1"

_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(min_value=-200, max_value=200),
    st.integers(min_value=-70_000, max_value=70_000),
    st.sampled_from([10**400, -(10**400), 1e39, 7.0, 0, -0.0]),
)
_odd_values = st.sampled_from([None, "1.5", "lots", "", True, False, [], {}, "NaN"])
_times = st.sampled_from(
    [
        "2026-03-02T10:00:00+01:00",
        "2026-03-02T10:00:00",
        "2026-03-02t10:00:00z",
        "2026-03-02 10:00:00Z",
        "2026-03-02T10:00Z",
        "2026-03-02T10:00:00.5Z",
        "2026-03-02T10:00:00.123456Z",
        "2026-03-02T10:00:00.1234567Z",
        "2026-03-02T10:00:00.9999999-05:30",
        "2026-03-02T10:00:00+0100",
        "2026-03-02T10:00:00,5Z",
        "2026-03-02_10:00:00Z",
        "2026-03-02T23:59:60Z",
        "2026-02-29T10:00:00Z",
        "2026-03-02",
        "1772445600",
        "soon",
        5,
        1772445600.5,
        None,
    ]
)
_devices = st.sampled_from(
    [
        _DEVICE.upper(),
        _DEVICE.replace("-", ""),
        "{" + _DEVICE + "}",
        "urn:uuid:" + _DEVICE,
        "not-a-uuid",
        "",
        7,
        None,
    ]
)
_MORE_THAN_MICROSECONDS = re.compile(r"[.,]\d{7,}")
# The text columns (EV charger readings); every other column after time and device_id is a number.
_TEXT_COLUMNS = frozenset({"connector_status", "transaction_id"})


def _valid_value(name: str) -> Any:
    if name in _TEXT_COLUMNS:
        return "Charging"
    return 7 if name in ("available_inverter_blocks", "command_source") else 42.5


@st.composite
def _readings(draw: st.DrawFn, kind: ReadingKind) -> dict[str, Any]:
    """Mostly valid readings (every column present with a number), then a few changes that may break them."""
    reading: dict[str, Any] = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE}
    for name in table_columns(kind)[2:]:
        reading[name] = draw(st.text(max_size=8) | _numbers if name in _TEXT_COLUMNS else _numbers)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        name = draw(st.sampled_from([*table_columns(kind), "id", "created_at", "bogus"]))
        change = draw(st.sampled_from(["drop", "odd", "number"]))
        if change == "drop":
            reading.pop(name, None)
        elif name == "time":
            reading[name] = draw(_times)
        elif name == "device_id":
            reading[name] = draw(_devices)
        else:
            reading[name] = draw(_odd_values if change == "odd" else _numbers)
    return reading


def _model_records(kind: ReadingKind, items: list[dict[str, Any]]) -> list[tuple[Any, ...]] | None:
    try:
        readings = [READING_MODELS[kind].model_validate(item) for item in items]
    except ValidationError:
        return None
    # A list of one model or the other; mypy cannot tell which from the kind.
    return ReadingsRepository.records(kind, readings)  # type: ignore[arg-type]


def _assert_same_rows(
    items: list[dict[str, Any]], rows: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]
) -> None:
    """Equal rows, but for the deliberate differences.

    Beyond microseconds, a time is rounded, not truncated; the device id is the uuid's canonical text, which
    asyncpg encodes as the same 16 bytes.
    """
    assert len(rows) == len(expected)
    for item, row, model_row in zip(items, rows, expected, strict=True):
        assert type(row[1]) is str
        assert row[1] == str(model_row[1])
        assert row[2:] == model_row[2:]
        if isinstance(item["time"], str) and _MORE_THAN_MICROSECONDS.search(item["time"]):
            assert timedelta(0) <= row[0] - model_row[0] <= timedelta(microseconds=1)
        else:
            assert row[0] == model_row[0]


@pytest.mark.parametrize("kind", list(ReadingKind))
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_whatever_the_fast_path_accepts_the_model_accepts_as_the_same_row(
    kind: ReadingKind, data: st.DataObject
) -> None:
    items = data.draw(st.lists(_readings(kind), min_size=1, max_size=3))
    body = json.dumps(items).encode()
    try:
        rows = decoder(kind).rows(body)
    except msgspec.DecodeError:
        return  # refused here: the handler takes the careful path, where the model decides
    expected = _model_records(kind, items)
    assert expected is not None, f"the fast path accepted what the model refuses: {items}"
    _assert_same_rows(items, rows, expected)


@pytest.mark.parametrize("kind", list(ReadingKind))
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_the_careful_path_converts_an_item_as_the_fast_path_decodes_it(kind: ReadingKind, data: st.DataObject) -> None:
    item = data.draw(_readings(kind))
    body = json.dumps([item]).encode()
    # The careful path parses with Python's json, which also reads NaN and Infinity.
    row = decoder(kind).row(json.loads(body)[0])
    try:
        (fast_row,) = decoder(kind).rows(body)
    except msgspec.DecodeError:
        fast_row = None
    if row is None:
        # Refused by the conversion: only a value beyond float4 may still pass the JSON decoder (the COPY refuses it).
        assert fast_row is None or any(isinstance(value, float) and abs(value) > 3.4e38 for value in fast_row)
        return
    assert row == fast_row
    expected = _model_records(kind, [item])
    assert expected is not None, f"the conversion accepted what the model refuses: {item}"
    _assert_same_rows([item], [row], expected)


@pytest.mark.parametrize("kind", list(ReadingKind))
def test_a_complete_valid_batch_takes_the_fast_path(kind: ReadingKind) -> None:
    reading: dict[str, Any] = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE}
    for name in table_columns(kind)[2:]:
        reading[name] = _valid_value(name)
    items = [reading, {**reading, "time": "2026-03-02T10:00:05.25+01:00"}]
    rows = decoder(kind).rows(json.dumps(items).encode())
    expected = _model_records(kind, items)
    assert expected is not None
    _assert_same_rows(items, rows, expected)
    assert all(type(row) is tuple and len(row) == len(table_columns(kind)) for row in rows)


@pytest.mark.parametrize("kind", list(ReadingKind))
def test_rows_leave_the_cycle_collector_after_one_collection(kind: ReadingKind) -> None:
    """The consumer holds ~50,000 rows at once; rows the collector kept tracking cost it a quarter of its CPU."""
    reading: dict[str, Any] = {"time": "2026-03-02T10:00:00+01:00", "device_id": _DEVICE}
    for name in table_columns(kind)[2:]:
        reading[name] = _valid_value(name)
    rows = decoder(kind).rows(json.dumps([reading] * 3).encode())
    gc.collect()
    assert not any(gc.is_tracked(row) or any(gc.is_tracked(value) for value in row) for row in rows)


@pytest.mark.parametrize(
    "spelling", [_DEVICE.upper(), _DEVICE.replace("-", ""), "{" + _DEVICE + "}", "urn:uuid:" + _DEVICE]
)
def test_a_device_id_spelled_otherwise_takes_the_careful_path(spelling: str) -> None:
    reading = {"time": "2026-03-02T10:00:00Z", "device_id": spelling, "frequency": 50.0}
    with pytest.raises(msgspec.ValidationError, match="device_id"):
        decoder(ReadingKind.METER).rows(json.dumps([reading]).encode())
    assert decoder(ReadingKind.METER).row(reading) is None
    (model_row,) = _model_records(ReadingKind.METER, [reading]) or [()]
    assert str(model_row[1]) == _DEVICE


def test_optional_columns_default_to_null_and_required_ones_are_required() -> None:
    rows = decoder(ReadingKind.METER).rows(
        json.dumps([{"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE, "frequency": 50}]).encode()
    )
    (row,) = rows
    assert row[2] == 50.0 and isinstance(row[2], float)
    assert all(value is None for value in row[3:])
    with pytest.raises(msgspec.ValidationError, match="soe"):
        decoder(ReadingKind.BESS).rows(json.dumps([{"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE}]).encode())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"soe": 101}, "<= 100"),
        ({"soe": -1}, ">= 0"),
        ({"command_source": 70_000}, "<= 32767"),
        ({"available_inverter_blocks": -1}, ">= 0"),
        ({"time": "2026-03-02T10:00:00"}, "timezone"),
        ({"bogus": 1}, "unknown field"),
        ({"id": None}, "unknown field"),  # accepted by the model: such a batch takes the careful path
        ({"target_power": "1.5"}, "Expected `float`"),  # likewise: a number in a string
        ({"device_id": "not-a-uuid"}, "device_id"),
    ],
)
def test_constraints_and_config_of_the_model_hold_on_the_fast_path(change: dict[str, Any], message: str) -> None:
    reading = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE, "soe": 50, "target_power": 1.5, **change}
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        decoder(ReadingKind.BESS).rows(json.dumps([reading]).encode())


def test_a_repeated_key_means_its_last_value_on_both_paths() -> None:
    body = b'[{"time": "2026-03-02T10:00:00Z", "device_id": "%s", "frequency": 1, "frequency": 2}]' % _DEVICE.encode()
    (row,) = decoder(ReadingKind.METER).rows(body)
    model = READING_MODELS[ReadingKind.METER].model_validate_json(body[1:-1])
    assert row[2] == model.frequency == 2.0


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e39, -1e39])
def test_a_float_that_real_cannot_hold_is_refused_by_the_conversion(value: float) -> None:
    reading = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE, "soe": 50, "target_power": value}
    assert decoder(ReadingKind.BESS).row(reading) is None
    assert decoder(ReadingKind.BESS).row({**reading, "target_power": 3.4e38}) is not None


def test_non_json_numbers_and_numbers_beyond_a_double_are_refused_by_the_decoder() -> None:
    for literal in (b"NaN", b"Infinity", b"1e400", b"-" + b"9" * 400):
        body = b'[{"time": "2026-03-02T10:00:00Z", "device_id": "%s", "frequency": %s}]' % (_DEVICE.encode(), literal)
        with pytest.raises(msgspec.DecodeError):
            decoder(ReadingKind.METER).rows(body)


def test_a_model_constraint_without_a_translation_is_an_error_not_a_silent_difference() -> None:
    class Odd(BaseModel):
        value: Annotated[float, Field(multiple_of=0.5)]
        names: list[str]

    with pytest.raises(TypeError, match="constraint"):
        row_struct(Odd, ("value",))
    with pytest.raises(TypeError, match="no msgspec equivalent"):
        row_struct(Odd, ("names",))
