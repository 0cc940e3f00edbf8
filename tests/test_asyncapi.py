"""docs/asyncapi.yaml stays in step with the contracts, and every reference in it resolves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from gridloop_cli import asyncapi

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"


def test_committed_document_matches_the_contracts() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == asyncapi.render(), (
        "docs/asyncapi.yaml is out of date: run `uv run gridloop asyncapi > docs/asyncapi.yaml`"
    )


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []


def test_every_reference_resolves() -> None:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert document["asyncapi"].startswith("3.")
    for reference in _references(document):
        target: Any = document
        for part in reference.removeprefix("#/").split("/"):
            assert part in target, f"unresolved reference {reference}"
            target = target[part]


def test_the_upstream_envelope_schema_accepts_a_seed_command_and_rejects_a_broken_one() -> None:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    schemas = document["components"]["schemas"]
    schema = {**schemas["UpstreamEvent"], "components": {"schemas": schemas}}
    envelope = {
        "event_type": "command.created",
        "timestamp": "2026-06-01T12:00:00Z",
        "event_object": {
            "id": "0b5e3c3e-9f0e-4a36-9d43-1f0e6f1f2a11",
            "event_id": None,
            "device_id": "battery-1",
            "starts_at": "2026-06-01T13:00:00Z",
            "ends_at": "2026-06-01T14:00:00Z",
            "duration_s": 3600,
            "is_preparatory_action": False,
            "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000},
            "status": "OK",
            "device_status": "PENDING",
            "created_at": "2026-06-01T12:00:00Z",
            "updated_at": "2026-06-01T12:00:00Z",
        },
    }
    jsonschema.validate(envelope, schema)
    command_schema = {**schemas["Command"], "components": {"schemas": schemas}}
    broken = {**envelope["event_object"], "battery_commands": {"mode": "TURBO"}}
    validator = jsonschema.Draft202012Validator(command_schema)
    assert list(validator.iter_errors(broken))
