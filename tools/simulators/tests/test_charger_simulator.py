"""The charger simulator's physics and its own control: the minimum current, V2G bounds, profile fallback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gridloop_simulators.charger import CarVisit, ChargerSimulator, ChargerSpec, delivered_power_w

CAR = CarVisit(capacity_kwh=60.0, initial_soc_percentage=50.0, min_soc_percentage=20.0)
THREE_PHASE = ChargerSpec(phases=3, max_current_a=16.0, min_current_a=6.0)
SINGLE_PHASE = ChargerSpec(phases=1, max_current_a=32.0, min_current_a=6.0)


def test_the_minimum_power_is_6_a_one_or_three_phases() -> None:
    assert SINGLE_PHASE.minimum_power_w == pytest.approx(1380.0)
    assert THREE_PHASE.minimum_power_w == pytest.approx(4140.0)


def test_below_the_minimum_current_the_charger_pauses() -> None:
    assert delivered_power_w(4000.0, THREE_PHASE, 50.0, CAR) == 0.0
    assert delivered_power_w(4140.0, THREE_PHASE, 50.0, CAR) == pytest.approx(4140.0)
    assert delivered_power_w(1380.0, SINGLE_PHASE, 50.0, CAR) == pytest.approx(1380.0)


def test_without_a_limit_it_charges_at_rated_power_and_never_above() -> None:
    assert delivered_power_w(None, THREE_PHASE, 50.0, CAR) == pytest.approx(16 * 3 * 230.0)
    assert delivered_power_w(50_000.0, THREE_PHASE, 50.0, CAR) == pytest.approx(16 * 3 * 230.0)


def test_a_full_car_takes_nothing() -> None:
    assert delivered_power_w(None, THREE_PHASE, 100.0, CAR) == 0.0


def test_only_a_v2g_charger_discharges_and_never_below_the_minimum_soc() -> None:
    v2g = ChargerSpec(v2g=True)

    assert delivered_power_w(-5000.0, THREE_PHASE, 50.0, CAR) == 0.0
    assert delivered_power_w(-5000.0, v2g, 50.0, CAR) == pytest.approx(-5000.0)
    assert delivered_power_w(-5000.0, v2g, 20.0, CAR) == 0.0
    assert delivered_power_w(-2000.0, v2g, 50.0, CAR) == 0.0  # under 6 A: paused
    assert delivered_power_w(-50_000.0, v2g, 50.0, CAR) == pytest.approx(-v2g.rated_power_w)


def test_an_accepted_profile_holds_until_its_valid_to_then_the_charger_falls_back() -> None:
    simulator = ChargerSimulator(url="ws://unused", charge_point_id="CP-1", password=None, fallback_limit_w=None)
    start = datetime(2026, 12, 7, 10, tzinfo=UTC)
    profile = {"charging_profile_id": 7, "valid_to": "2026-12-07T10:05:00Z"}
    schedule = {"charging_rate_unit": "A", "charging_schedule_period": [{"start_period": 0, "limit": 8}]}

    assert simulator.profile_answer(profile, schedule) == (True, None)

    assert simulator.limit_in_force_w(start) == pytest.approx(8 * 3 * 230.0)
    assert simulator.limit_in_force_w(start + timedelta(minutes=5)) is None  # rated power again
    assert simulator.state.limit is None


def test_a_rejecting_charger_keeps_its_limit_and_says_why() -> None:
    simulator = ChargerSimulator(
        url="ws://unused", charge_point_id="CP-1", password=None, fallback_limit_w=0.0, reject_profiles="busy"
    )
    schedule = {"charging_rate_unit": "W", "charging_schedule_period": [{"start_period": 0, "limit": 5000}]}

    assert simulator.profile_answer({"id": 1}, schedule) == (False, "busy")
    assert simulator.limit_in_force_w(datetime(2026, 12, 7, tzinfo=UTC)) == 0.0
