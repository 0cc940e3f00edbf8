"""DeviceMetadata, the one reading of registry metadata: strict numbers, the field named on refusal, extras kept."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gridloop_common.contracts import DeviceMetadata, DeviceRegistryEntry, InvalidDeviceMetadata


def test_a_documented_entry_is_read_with_its_units_and_defaults() -> None:
    metadata = DeviceMetadata.from_registry(
        {"capacity_kwh": 13.5, "max_power_kw": 5, "modbus": {"host": "10.0.0.5", "profile": "sunspec"}, "x": [1]}
    )

    assert (metadata.max_power_w, metadata.capacity_wh, metadata.ac_power_sign) == (5000, 13500, 1)
    assert metadata.modbus is not None and (metadata.modbus.port, metadata.modbus.unit_id) == (502, 1)
    assert metadata.model_extra == {"x": [1]}  # kept for the feature that will type it
    assert DeviceMetadata.from_registry(None) == DeviceMetadata()


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"max_power_kw": 0}, "metadata.max_power_kw"),
        ({"max_power_kw": True}, "metadata.max_power_kw"),
        ({"max_power_kw": "5"}, "metadata.max_power_kw"),
        ({"max_power_kw": float("inf")}, "metadata.max_power_kw"),
        ({"backup_reserve_percentage": 100.5}, "metadata.backup_reserve_percentage"),
        ({"ac_power_sign": True}, "metadata.ac_power_sign"),
        ({"modbus": {"host": "h", "unit_id": 1.0}}, "metadata.modbus.unit_id"),
        (["not", "an", "object"], "metadata"),
    ],
)
def test_a_value_it_cannot_read_is_refused_naming_the_field(metadata: Any, field: str) -> None:
    with pytest.raises(InvalidDeviceMetadata) as refused:
        DeviceMetadata.from_registry(metadata)

    assert refused.value.field == field
    assert refused.value.reason.startswith(f"invalid registry metadata: {field}: ")


def test_a_registry_entry_carries_its_metadata_as_written_and_refuses_a_bad_one() -> None:
    entry = DeviceRegistryEntry(name="b1", type="bess", site="S", metadata={"max_power_kw": 5, "note": "x"})
    assert entry.metadata == {"max_power_kw": 5, "note": "x"}

    with pytest.raises(ValidationError, match=r"metadata\.max_power_kw"):
        DeviceRegistryEntry(name="b1", type="bess", site="S", metadata={"max_power_kw": 0})


def test_an_ev_chargers_car_is_read_for_planning_and_a_bad_time_or_missing_capacity_is_refused() -> None:
    car = {"capacity_kwh": 60, "departure": "07:30", "arrival": "18:00", "target_soc_pct": 80}
    metadata = DeviceMetadata.from_registry({"max_power_kw": 11, "ev": car})
    assert metadata.ev is not None
    assert (metadata.ev.capacity_kwh, metadata.ev.departure, metadata.ev.arrival) == (60, "07:30", "18:00")
    assert metadata.ev.initial_soc_pct is None
    for bad, field in (
        ({**car, "departure": "24:00"}, "metadata.ev.departure"),
        ({"departure": "07:30", "target_soc_pct": 80}, "metadata.ev.capacity_kwh"),
        ({**car, "target_soc_pct": 101}, "metadata.ev.target_soc_pct"),
    ):
        with pytest.raises(InvalidDeviceMetadata) as error:
            DeviceMetadata.from_registry({"ev": bad})
        assert error.value.field == field
