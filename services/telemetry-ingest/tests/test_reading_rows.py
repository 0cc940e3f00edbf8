"""The batch fast path: JSON straight into COPY rows, never accepting what the models refuse."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gridloop_common.contracts import BessReading
from telemetry_ingest.reading_rows import READING_MODELS, row_adapter, row_type
from telemetry_ingest.repository import ReadingKind, ReadingsRepository, table_columns

_DEVICE = "2b1f9f3e-5a0e-4a43-9c55-3a8a34c1b8a1"

_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(min_value=-200, max_value=200),
    st.integers(min_value=-70_000, max_value=70_000),
)
_odd_values = st.sampled_from([None, "1.5", "lots", "", True, [], {}])
_times = st.sampled_from(["2026-03-02T10:00:00+01:00", "2026-03-02T10:00:00", "soon", 5, None])
_devices = st.sampled_from(["not-a-uuid", "", 7, None])


@st.composite
def _readings(draw: st.DrawFn, kind: ReadingKind) -> dict[str, Any]:
    """Mostly valid readings (every column present with a number), then a few changes that may break them."""
    reading: dict[str, Any] = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE}
    for name in table_columns(kind)[2:]:
        reading[name] = draw(_numbers)
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


@pytest.mark.parametrize("kind", list(ReadingKind))
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_whatever_the_fast_path_accepts_the_model_accepts_as_the_same_row(
    kind: ReadingKind, data: st.DataObject
) -> None:
    items = data.draw(st.lists(_readings(kind), min_size=1, max_size=3))
    body = json.dumps(items).encode()
    try:
        rows = row_adapter(kind).validate_json(body)
    except ValidationError:
        return  # refused here: the handler takes the model's path, which decides
    expected = _model_records(kind, items)
    assert expected is not None, f"the fast path accepted what the model refuses: {items}"
    assert [tuple(row) for row in rows] == expected


@pytest.mark.parametrize("kind", list(ReadingKind))
def test_a_complete_valid_batch_takes_the_fast_path(kind: ReadingKind) -> None:
    reading: dict[str, Any] = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE}
    for name in table_columns(kind)[2:]:
        reading[name] = 7 if name in ("available_inverter_blocks", "command_source") else 42.5
    rows = row_adapter(kind).validate_json(json.dumps([reading, {**reading, "time": "2026-03-02T10:00:05Z"}]))
    assert [tuple(row) for row in rows] == _model_records(kind, [reading, {**reading, "time": "2026-03-02T10:00:05Z"}])
    assert len(rows[0]) == len(table_columns(kind))


def test_optional_columns_default_to_null_and_required_ones_are_required() -> None:
    rows = row_adapter(ReadingKind.METER).validate_json(
        json.dumps([{"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE, "frequency": 50}])
    )
    (row,) = rows
    assert row[2] == 50.0 and isinstance(row[2], float)
    assert all(value is None for value in row[3:])
    with pytest.raises(ValidationError):
        row_adapter(ReadingKind.BESS).validate_json(
            json.dumps([{"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE}])
        )


@pytest.mark.parametrize(
    ("change", "error_type"),
    [
        ({"soe": 101}, "less_than_equal"),
        ({"command_source": 70_000}, "less_than_equal"),
        ({"time": "2026-03-02T10:00:00"}, "timezone_aware"),
        ({"bogus": 1}, "extra_forbidden"),
        ({"id": None}, "extra_forbidden"),  # accepted by the model: such a batch takes the model's path
    ],
)
def test_constraints_and_config_of_the_model_hold_on_the_fast_path(change: dict[str, Any], error_type: str) -> None:
    reading = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE, "soe": 50, "target_power": 1.5, **change}
    with pytest.raises(ValidationError) as raised:
        row_adapter(ReadingKind.BESS).validate_json(json.dumps([reading]))
    assert raised.value.errors()[0]["type"] == error_type


def test_non_finite_numbers_are_refused() -> None:
    reading = {"time": "2026-03-02T10:00:00Z", "device_id": _DEVICE, "soe": 50, "target_power": math.inf}
    with pytest.raises(ValidationError) as raised:
        row_adapter(ReadingKind.BESS).validate_python([reading])
    assert raised.value.errors()[0]["type"] == "finite_number"


def test_a_required_column_after_an_optional_one_cannot_make_a_row_type() -> None:
    with pytest.raises(ValueError, match="required"):
        row_type(BessReading, ("time", "available_inverter_blocks", "soe"))
