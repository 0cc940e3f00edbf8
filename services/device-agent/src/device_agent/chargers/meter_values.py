"""Pure: an OCPP MeterValues payload (1.6 or 2.x, as the ocpp library hands it over in snake case) reduced
to the charger's power, energy register and the car's state of charge."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ChargerReading", "reading_from_meter_values"]

# Multipliers of the units OCPP allows for these measurands; anything else is not a unit we can read.
_WATTS = {"W": 1.0, "kW": 1000.0}
_WATT_HOURS = {"Wh": 1.0, "kWh": 1000.0}


@dataclass(frozen=True)
class ChargerReading:
    """What one MeterValues said; power is positive into the car, negative out of it (V2G)."""

    power_w: float | None = None
    energy_import_wh: float | None = None
    energy_export_wh: float | None = None
    soc_percentage: float | None = None


def _unit_and_multiplier(sample: Mapping[str, Any]) -> tuple[str | None, int]:
    unit_of_measure = sample.get("unit_of_measure")  # 2.x: {"unit": "W", "multiplier": 3}
    if isinstance(unit_of_measure, Mapping):
        return unit_of_measure.get("unit"), int(unit_of_measure.get("multiplier", 0))
    return sample.get("unit"), 0  # 1.6: "unit": "kW"


def _scaled(sample: Mapping[str, Any], units: Mapping[str, float], default_unit: str) -> float | None:
    unit, multiplier = _unit_and_multiplier(sample)
    factor = units.get(unit or default_unit)
    if factor is None:
        return None
    try:
        value = float(sample["value"])  # a string in 1.6, a number in 2.x
    except (KeyError, TypeError, ValueError):
        return None
    return value * factor * 10.0**multiplier


def reading_from_meter_values(meter_value: Iterable[Mapping[str, Any]]) -> ChargerReading:
    """The newest value of each measurand across ``meter_value`` (the whole-charger value: no phase)."""
    import_w: float | None = None
    export_w: float | None = None
    import_wh: float | None = None
    export_wh: float | None = None
    soc: float | None = None
    for value in meter_value:
        for sample in value.get("sampled_value", []):
            if sample.get("phase"):
                continue  # per-phase figures: the total is what control and telemetry need
            # OCPP's default measurand is the imported energy register.
            measurand = sample.get("measurand") or "Energy.Active.Import.Register"
            if measurand == "Power.Active.Import":
                import_w = _scaled(sample, _WATTS, "W")
            elif measurand == "Power.Active.Export":
                export_w = _scaled(sample, _WATTS, "W")
            elif measurand == "Energy.Active.Import.Register":
                import_wh = _scaled(sample, _WATT_HOURS, "Wh")
            elif measurand == "Energy.Active.Export.Register":
                export_wh = _scaled(sample, _WATT_HOURS, "Wh")
            elif measurand == "SoC":
                soc = _scaled(sample, {"Percent": 1.0}, "Percent")
    power_w = None if import_w is None and export_w is None else (import_w or 0.0) - (export_w or 0.0)
    return ChargerReading(power_w=power_w, energy_import_wh=import_wh, energy_export_wh=export_wh, soc_percentage=soc)
