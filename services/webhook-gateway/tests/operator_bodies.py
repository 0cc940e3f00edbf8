"""A valid body for each operator endpoint, and every way each field can be wrong (docs/design.md §8 and the
Grid Services API's own bounds: reference in gridloop_common.contracts.grid_services)."""

from __future__ import annotations

from typing import Any, Final

# Removing a field from a body: the mutation's value.
MISSING: Final = object()

START = "2026-06-01T19:00:00-04:00"
STOP = "2026-06-01T21:00:00-04:00"
DAY = "2026-06-02T00:00:00-04:00"

VALID_BODIES: Final[dict[str, dict[str, Any]]] = {
    "/calculate_mpc": {
        "site": "north",
        "space_heating": False,
        "electric_storage": True,
        "electric_vehicle": True,
        "water_heater": False,
        "prices": {START: 0.07, "2026-06-01T19:40:00-04:00": 0.15},
        "power_limit": {START: 7.0, "2026-06-01T19:40:00-04:00": 15.0},
        "interval": 10,
        "start": START,
        "stop": STOP,
    },
    "/coordinatedac": {"site": ["north", "south"], "iteration": 2, "prices": [0.07] * 144, "date": DAY},
    "/request_optimization_status": {"run_id": "run-42"},
    "/flattariff": {"flat_price": 0.08, "date": DAY},
    "/toutariff": {
        "date": DAY,
        "start_peak": "2026-06-02T16:00:00-04:00",
        "stop_peak": "2026-06-02T21:00:00-04:00",
        "off_peak_value": 0.05,
        "on_peak_value": 0.25,
    },
    "/shift-consumption-tariff": {
        "date": DAY,
        "flat_price": 0.08,
        "reduction_multiplier": 0.5,
        "increase_multiplier": 2,
        "start_increase": "2026-06-02T10:00:00-04:00",
        "stop_increase": "2026-06-02T15:00:00-04:00",
        "start_reduction": "2026-06-02T16:00:00-04:00",
        "stop_reduction": "2026-06-02T21:00:00-04:00",
    },
}

# Every endpoint's scope.
_SITE_CASES: Final = [("site", []), ("site", ""), ("site", 5), ("site", ["x" * 256]), ("site", [None])]

# (path, field, wrong value or MISSING): each must be a 422 naming that field and no other.
BAD_FIELDS: Final[list[tuple[str, str, Any]]] = [
    *(("/calculate_mpc", field, value) for field, value in _SITE_CASES),
    ("/calculate_mpc", "space_heating", "maybe"),
    ("/calculate_mpc", "electric_storage", 2),
    ("/calculate_mpc", "electric_vehicle", None),
    ("/calculate_mpc", "water_heater", [True]),
    ("/calculate_mpc", "prices", MISSING),
    ("/calculate_mpc", "prices", {}),
    ("/calculate_mpc", "prices", {"not a time": 0.1}),
    ("/calculate_mpc", "prices", {"2026-06-01T19:00:00": 0.1}),  # no offset
    ("/calculate_mpc", "prices", {START: "cheap"}),
    ("/calculate_mpc", "prices", [0.1]),
    ("/calculate_mpc", "power_limit", MISSING),
    ("/calculate_mpc", "power_limit", {}),
    ("/calculate_mpc", "power_limit", {START: 0}),
    ("/calculate_mpc", "power_limit", {START: -7.0}),
    ("/calculate_mpc", "interval", 0),
    ("/calculate_mpc", "interval", 61),
    ("/calculate_mpc", "interval", 100),
    ("/calculate_mpc", "interval", 1.5),
    ("/calculate_mpc", "interval", "ten"),
    ("/calculate_mpc", "start", "2026-06-01T19:00:00"),
    ("/calculate_mpc", "start", "tomorrow"),
    ("/calculate_mpc", "stop", START),  # not after start
    ("/calculate_mpc", "stop", "2026-06-01T18:00:00-04:00"),
    ("/calculate_mpc", "stop", 17),
    ("/calculate_mpc", "something_else", 1),
    *(("/coordinatedac", field, value) for field, value in _SITE_CASES),
    ("/coordinatedac", "iteration", -1),
    ("/coordinatedac", "iteration", "first"),
    ("/coordinatedac", "prices", [0.07] * 143),
    ("/coordinatedac", "prices", [0.07] * 145),
    ("/coordinatedac", "prices", ["x"] * 144),
    ("/coordinatedac", "prices", {"a": 1}),
    ("/coordinatedac", "date", "2026-06-02T00:00:00"),
    ("/coordinatedac", "date", "soon"),
    ("/coordinatedac", "something_else", 1),
    *(("/request_optimization_status", field, value) for field, value in _SITE_CASES),
    ("/request_optimization_status", "run_id", ""),
    ("/request_optimization_status", "run_id", "r" * 65),
    ("/request_optimization_status", "run_id", 42),
    ("/request_optimization_status", "something_else", 1),
    *(("/flattariff", field, value) for field, value in _SITE_CASES),
    ("/flattariff", "flat_price", -0.01),
    ("/flattariff", "flat_price", "cheap"),
    ("/flattariff", "date", MISSING),
    ("/flattariff", "date", "2026-06-02T00:00:00"),
    ("/flattariff", "something_else", 1),
    *(("/toutariff", field, value) for field, value in _SITE_CASES),
    ("/toutariff", "date", MISSING),
    ("/toutariff", "date", "2026-06-02"),
    ("/toutariff", "start_peak", MISSING),
    ("/toutariff", "start_peak", "16:00"),
    ("/toutariff", "stop_peak", MISSING),
    ("/toutariff", "stop_peak", "2026-06-02T16:00:00-04:00"),  # not after start_peak
    ("/toutariff", "off_peak_value", "low"),
    ("/toutariff", "on_peak_value", None),
    ("/toutariff", "something_else", 1),
    *(("/shift-consumption-tariff", field, value) for field, value in _SITE_CASES),
    ("/shift-consumption-tariff", "date", MISSING),
    ("/shift-consumption-tariff", "flat_price", -1),
    ("/shift-consumption-tariff", "reduction_multiplier", -0.5),
    ("/shift-consumption-tariff", "increase_multiplier", -2),
    ("/shift-consumption-tariff", "increase_multiplier", "double"),
    ("/shift-consumption-tariff", "start_increase", MISSING),
    ("/shift-consumption-tariff", "stop_increase", MISSING),
    ("/shift-consumption-tariff", "stop_increase", "2026-06-02T09:00:00-04:00"),
    ("/shift-consumption-tariff", "start_reduction", "later"),
    ("/shift-consumption-tariff", "stop_reduction", "2026-06-02T16:00:00-04:00"),
    ("/shift-consumption-tariff", "something_else", 1),
]


def mutated(path: str, field: str, value: Any) -> dict[str, Any]:
    """The valid body of ``path`` with ``field`` set to ``value`` (or removed, for MISSING)."""
    body = {name: each for name, each in VALID_BODIES[path].items() if name != field}
    if value is not MISSING:
        body[field] = value
    return body
