"""Pure parts of the OCPP central system: Basic-auth credentials, password hashes, meter values, paths."""

from __future__ import annotations

import base64
import hashlib

import pytest

from device_agent.chargers.authentication import basic_credentials, password_matches
from device_agent.chargers.central_system import charge_point_id_of
from device_agent.chargers.meter_values import ChargerReading, reading_from_meter_values


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_credentials_split_at_the_first_colon() -> None:
    assert basic_credentials(_basic("CP-1:pass:word")) == ("CP-1", "pass:word")
    assert basic_credentials("basic " + base64.b64encode(b"CP-1:").decode()) == ("CP-1", "")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic not-base64!",
        _basic("no colon"),
        "Basic " + base64.b64encode(b"\xff:x").decode(),
    ],
)
def test_malformed_or_other_authorization_has_no_credentials(header: str | None) -> None:
    assert basic_credentials(header) is None


def test_the_password_is_checked_against_its_sha256() -> None:
    stored = hashlib.sha256(b"s3cret").hexdigest()

    assert password_matches("s3cret", stored)
    assert password_matches("s3cret", stored.upper())
    assert not password_matches("s3cret ", stored)
    assert not password_matches("", stored)


def test_the_charge_point_id_is_the_last_path_segment() -> None:
    assert charge_point_id_of("/ocpp/CP-1") == "CP-1"
    assert charge_point_id_of("/CP%201/?token=x") == "CP 1"
    assert charge_point_id_of("/") == ""


def test_ocpp_1_6_meter_values_in_kw_and_kwh_are_read_in_w_and_wh() -> None:
    meter_value = [
        {
            "timestamp": "2026-12-07T10:00:00Z",
            "sampled_value": [
                {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": "2.3", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L1"},
                {"value": "12.5", "unit": "kWh"},  # no measurand: the imported energy register
                {"value": "55", "measurand": "SoC", "unit": "Percent"},
            ],
        }
    ]

    assert reading_from_meter_values(meter_value) == ChargerReading(
        power_w=7400.0, energy_import_wh=12500.0, soc_percentage=55.0
    )


def test_ocpp_2_meter_values_with_a_multiplier_and_export_give_a_negative_power() -> None:
    meter_value = [
        {
            "timestamp": "2026-12-07T10:00:00Z",
            "sampled_value": [
                {"value": 0, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
                {"value": 4.6, "measurand": "Power.Active.Export", "unit_of_measure": {"unit": "W", "multiplier": 3}},
                {"value": 900, "measurand": "Energy.Active.Export.Register", "unit_of_measure": {"unit": "Wh"}},
                {"value": 61.5, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}},
            ],
        }
    ]

    reading = reading_from_meter_values(meter_value)

    assert reading.power_w == pytest.approx(-4600.0)
    assert (reading.energy_export_wh, reading.soc_percentage) == (900.0, 61.5)


def test_values_in_units_it_cannot_read_are_left_out() -> None:
    meter_value = [{"sampled_value": [{"value": "3", "measurand": "Power.Active.Import", "unit": "varh"}]}]

    assert reading_from_meter_values(meter_value) == ChargerReading()
