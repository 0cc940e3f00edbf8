"""Pure: a charging session's record from what the charger said between plug-in and plug-out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from device_agent.chargers.charger_telemetry import OpenSession, session_id_of

PLUGGED_IN = datetime(2026, 12, 8, 18, 0, tzinfo=UTC)
DEVICE = uuid.UUID("6f1c7a52-9d0e-4d0b-8f0e-1a2b3c4d5e6f")


def test_the_record_at_plug_out_has_the_energy_delivered_and_the_first_and_last_soc() -> None:
    session = OpenSession(device_id=DEVICE, transaction_id="3", plugged_in_at=PLUGGED_IN)
    session.note(import_wh=12_000, export_wh=None, soc_pct=None)  # OCPP 1.6 meterStart
    session.note(import_wh=12_500, export_wh=None, soc_pct=41.5)
    session.note(import_wh=19_000, export_wh=None, soc_pct=52.0)
    session.note(import_wh=19_400, export_wh=None, soc_pct=None)  # meterStop

    started = session.record()
    ended = session.record(plugged_out_at=PLUGGED_IN + timedelta(hours=2), stop_reason="EVDisconnected")

    assert (started.plugged_out_at, started.energy_kwh, started.final_soc_pct) == (None, None, None)
    assert started.initial_soc_pct == 41.5
    assert ended.session_id == started.session_id == session_id_of(DEVICE, "3", PLUGGED_IN)
    assert ended.energy_kwh == pytest.approx(7.4)
    assert (ended.initial_soc_pct, ended.final_soc_pct) == (41.5, 52.0)
    assert ended.stop_reason == "EVDisconnected"


def test_a_v2g_session_counts_the_energy_delivered_net_of_what_the_car_gave_back() -> None:
    session = OpenSession(device_id=DEVICE, transaction_id="V2G-1", plugged_in_at=PLUGGED_IN)
    session.note(import_wh=1_000, export_wh=500, soc_pct=70)
    session.note(import_wh=3_000, export_wh=4_500, soc_pct=66)
    ended = session.record(plugged_out_at=PLUGGED_IN + timedelta(hours=1))
    assert ended.energy_kwh == pytest.approx(-2.0)


def test_the_same_transaction_number_after_a_restart_is_another_session() -> None:
    # OCPP 1.6 transaction ids are the central system's counter: they repeat, the plug-in time does not.
    assert session_id_of(DEVICE, "1", PLUGGED_IN) != session_id_of(DEVICE, "1", PLUGGED_IN + timedelta(days=1))
    assert session_id_of(DEVICE, "1", PLUGGED_IN) == session_id_of(DEVICE, "1", PLUGGED_IN)
