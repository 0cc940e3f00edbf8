"""JSON-schema snapshots of every contract model: a change to a contract's schema fails here first.

Each model exported by ``gridloop_common.contracts`` has its ``model_json_schema()`` committed in
``snapshots/<ModelName>.json``. When a change is deliberate, regenerate the snapshots and commit
them with the change (and bump the consumers if it is breaking)::

    GRIDLOOP_UPDATE_SNAPSHOTS=1 uv run pytest libs/common/tests/contracts/test_schemas.py

With that variable set the tests rewrite the snapshots (and delete those of removed models)
instead of comparing.
"""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import AwareDatetime, BaseModel, create_model

from gridloop_common import contracts

SNAPSHOT_DIRECTORY = Path(__file__).parent / "snapshots"
UPDATING = os.environ.get("GRIDLOOP_UPDATE_SNAPSHOTS") == "1"

CONTRACT_MODELS: dict[str, type[BaseModel]] = {
    name: exported
    for name in contracts.__all__
    if isinstance(exported := getattr(contracts, name), type) and issubclass(exported, BaseModel)
}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_every_exported_model_is_covered() -> None:
    assert len(CONTRACT_MODELS) >= 20
    assert {"Command", "UpstreamEvent", "BessReading", "MpcRequest", "DeviceAction"} <= CONTRACT_MODELS.keys()


@pytest.mark.parametrize("model_name", sorted(CONTRACT_MODELS))
def test_schema_matches_snapshot(model_name: str) -> None:
    snapshot = SNAPSHOT_DIRECTORY / f"{model_name}.json"
    current = render(CONTRACT_MODELS[model_name].model_json_schema())
    if UPDATING:
        SNAPSHOT_DIRECTORY.mkdir(exist_ok=True)
        snapshot.write_text(current, encoding="utf-8")
        return
    assert snapshot.exists(), f"no schema snapshot for {model_name}; run with GRIDLOOP_UPDATE_SNAPSHOTS=1 to create it"
    assert json.loads(current) == json.loads(snapshot.read_text(encoding="utf-8")), (
        f"the JSON schema of {model_name} changed; if this is deliberate, run with "
        "GRIDLOOP_UPDATE_SNAPSHOTS=1, review the diff and commit it"
    )


def test_no_snapshot_without_a_model() -> None:
    stale = sorted(path for path in SNAPSHOT_DIRECTORY.glob("*.json") if path.stem not in CONTRACT_MODELS)
    if UPDATING:
        for path in stale:
            path.unlink()
        return
    assert not stale, f"snapshots of models that are no longer exported: {[path.name for path in stale]}"


def test_breaking_change_is_detected() -> None:
    """Guard the guard: the same Command compares equal, a Command whose ends_at lost its null does not."""
    snapshot = json.loads((SNAPSHOT_DIRECTORY / "Command.json").read_text(encoding="utf-8"))
    unchanged = create_model("Command", __base__=contracts.Command, __doc__=contracts.Command.__doc__)
    broken = create_model(
        "Command", __base__=contracts.Command, __doc__=contracts.Command.__doc__, ends_at=(AwareDatetime, ...)
    )
    assert unchanged.model_json_schema() == snapshot
    assert broken.model_json_schema() != snapshot


# The Flux API documentation's own examples (docs/design.md §1, §5) must still validate against the contracts.
SEED_EXAMPLES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (
        contracts.BessReading,
        {
            "id": "550e8400-e29b-41d4-a716-446655440001",
            "time": "2024-01-01T12:00:00.000Z",
            "device_id": "123e4567-e89b-12d3-a456-426614174000",
            "soe": 65.5,
            "target_power": -25.0,
            "available_inverter_blocks": 4,
            "command_source": 1,
            "created_at": "2024-01-01T12:00:01.000Z",
        },
    ),
    (
        contracts.MeterReading,
        {
            "device_id": "123e4567-e89b-12d3-a456-426614174001",
            "time": "2024-01-01T12:00:00Z",
            "power_total_active": 125.5,
            "voltage_line_average": 415.2,
            "current_phase_average": 180.5,
        },
    ),
    (
        contracts.MarketData,
        {
            "id": "0b0c9a57-3b6e-4f55-a2f5-9b2d0f7e6a11",
            "time": "2024-01-01T12:00:00Z",
            "type": 1,
            "value": -150.5,
            "metadata": {"confidence": 0.85, "settlement_period": 24},
        },
    ),
    (
        contracts.DeviceRegistryEntry,
        {
            "id": "123e4567-e89b-12d3-a456-426614174000",
            "name": "WLCE-BESS-01",
            "type": "bess",
            "site": "WLCE",
            "metadata": {"max_power": 100, "capacity_kwh": 500, "modbus_address": 1},
            "active": True,
            "created_at": "2023-01-01T00:00:00Z",
        },
    ),
    (
        contracts.MeterAggregateRequest,
        {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-01-02T00:00:00Z", "device_ids": None},
    ),
    (
        contracts.MeterReading30m,
        {
            "time_b": "2024-01-01T00:00:00Z",
            "device_id": "123e4567-e89b-12d3-a456-426614174001",
            "power_total_active_avg": 125.5,
            "energy_imported_active_delta": 62.75,
            "energy_exported_active_delta": 0,
        },
    ),
    (contracts.SetpointRequest, {"device": "space_heating", "setpoint": 20, "duration": 5}),
    (contracts.PowerLimitRequest, {"limit": 12.0}),
    (contracts.FlexibilityRequest, {"duration": 300}),
    (contracts.PaidControlRequest, {"setpoint": 20, "duration": 5}),
    (
        contracts.MpcRequest,
        {
            "space_heating": True,
            "electric_storage": True,
            "electric_vehicle": True,
            "water_heater": True,
            "start": "2025-09-09T19:00:00-04:00",
            "stop": "2025-09-09T21:00:00-04:00",
            "interval": 10,
            "prices": {"2025-09-09T19:00:00-04:00": 0.07, "2025-09-09T19:40:00-04:00": 0.15},
            "power_limit": {"2025-09-09T19:00:00-04:00": 7.0, "2025-09-09T19:40:00-04:00": 15.0},
        },
    ),
]


@pytest.mark.parametrize(("model", "example"), SEED_EXAMPLES, ids=[model.__name__ for model, _ in SEED_EXAMPLES])
def test_seed_example_validates_and_round_trips(model: type[BaseModel], example: dict[str, Any]) -> None:
    parsed = model.model_validate(example)
    assert model.model_validate_json(parsed.model_dump_json()) == parsed
