"""Pure: a charger's meter values after an accepted profile confirm it, or fail the action with the measured power."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from device_agent.chargers.profile_confirmation import (
    ProfileExpectation,
    Verdict,
    confirm_profile,
    tolerance_w,
)

ACCEPTED = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
SETTLED = ACCEPTED + timedelta(seconds=5)


def _expect(limit_w: float) -> ProfileExpectation:
    return ProfileExpectation(
        action_id=uuid.uuid4(), command_id=None, limit_w=limit_w, accepted_at=ACCEPTED, settle_s=5.0
    )


def test_a_meter_value_before_the_profile_settles_decides_nothing() -> None:
    verdict = confirm_profile(_expect(5000), 11040, measured_at=SETTLED - timedelta(seconds=1), device_name="cp")
    assert verdict.verdict is Verdict.WAITING


@pytest.mark.parametrize("measured_w", [5000.0, 5200.0, 3000.0, 0.0])
def test_charging_at_or_below_the_limit_conforms(measured_w: float) -> None:
    # A full or balancing car draws less than it may; 5 % (at least 200 W) past the limit is meter tolerance.
    assert confirm_profile(_expect(5000), measured_w, measured_at=SETTLED, device_name="cp").verdict is Verdict.CONFORMS


def test_charging_above_the_limit_fails_with_the_measured_power() -> None:
    confirmation = confirm_profile(_expect(5000), 11040, measured_at=SETTLED, device_name="cp-7")
    assert confirmation.verdict is Verdict.EXCEEDS
    assert confirmation.measured_w == 11040
    assert confirmation.reason == (
        "charger cp-7 draws 11040 W, outside the limit of 5000 W of the profile it accepted (tolerance 250 W)"
    )


@pytest.mark.parametrize(
    ("measured_w", "verdict"), [(0.0, Verdict.CONFORMS), (150.0, Verdict.CONFORMS), (1380.0, Verdict.EXCEEDS)]
)
def test_off_conforms_only_near_zero(measured_w: float, verdict: Verdict) -> None:
    assert confirm_profile(_expect(0), measured_w, measured_at=SETTLED, device_name="cp").verdict is verdict


@pytest.mark.parametrize(
    ("measured_w", "verdict"),
    [(-5000.0, Verdict.CONFORMS), (0.0, Verdict.CONFORMS), (-7000.0, Verdict.EXCEEDS), (3000.0, Verdict.EXCEEDS)],
)
def test_discharging_conforms_between_the_limit_and_zero(measured_w: float, verdict: Verdict) -> None:
    # A car at its minimum SoC gives less (0 conforms); more than asked, or charging instead, does not.
    assert confirm_profile(_expect(-5000), measured_w, measured_at=SETTLED, device_name="v2g").verdict is verdict


def test_feeding_back_past_the_limit_is_worded_as_such() -> None:
    confirmation = confirm_profile(_expect(-5000), -7000, measured_at=SETTLED, device_name="v2g")
    assert confirmation.reason is not None and confirmation.reason.startswith("charger v2g feeds back 7000 W")


def test_no_power_in_the_meter_values_is_unmeasured() -> None:
    assert confirm_profile(_expect(5000), None, measured_at=SETTLED, device_name="cp").verdict is Verdict.UNMEASURED


def test_the_tolerance_is_a_share_of_the_limit_with_a_floor() -> None:
    assert (tolerance_w(0), tolerance_w(1000), tolerance_w(11000), tolerance_w(-22000)) == (200, 200, 550, 1100)
