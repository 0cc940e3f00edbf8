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
