"""Pure: does a charger's meter value confirm the charging profile it accepted? (issue 18 item 2)

A charger's ``Accepted`` says it stored the profile, not that the car now draws what it allows. The next meter
values after the profile has had ``settle_s`` to take effect decide: charging (a limit above zero) conforms at or
below the limit, since a car that is full or balancing draws less than it may; off (zero) conforms near zero;
discharging (V2G, a negative limit) conforms between the limit and zero, since a car at its minimum SoC gives
less. Each bound has a tolerance (a share of the limit, at least a floor), for meter accuracy and the 0.1 A
steps of the pilot signal. Only a charger past its limit fails: that is what overloads a site's connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

__all__ = [
    "DEFAULT_SETTLE_S",
    "Confirmation",
    "ProfileExpectation",
    "Verdict",
    "confirm_profile",
    "tolerance_w",
]

# How long a charger may take to apply a profile before its meter values must show it (OCPP leaves this to the
# charger; the pilot signal changes within a second or two, the car follows within a few).
DEFAULT_SETTLE_S: Final = 5.0
_TOLERANCE_SHARE: Final = 0.05
_TOLERANCE_FLOOR_W: Final = 200.0


class Verdict(enum.StrEnum):
    WAITING = "waiting"  # the reading is too early to tell (the profile has not had settle_s yet)
    UNMEASURED = "unmeasured"  # the charger reports no power: nothing can be confirmed
    CONFORMS = "conforms"
    EXCEEDS = "exceeds"


@dataclass(frozen=True)
class ProfileExpectation:
    """What an accepted profile allows, for the action that asked for it."""

    action_id: UUID
    command_id: UUID | None
    limit_w: float  # positive into the car, negative out of it
    accepted_at: datetime
    settle_s: float = DEFAULT_SETTLE_S


@dataclass(frozen=True)
class Confirmation:
    verdict: Verdict
    measured_w: float | None = None
    reason: str | None = None  # why it fails, for the failed outcome


def tolerance_w(limit_w: float) -> float:
    """How far past its limit a charger may measure and still conform."""
    return max(_TOLERANCE_FLOOR_W, _TOLERANCE_SHARE * abs(limit_w))


def confirm_profile(
    expectation: ProfileExpectation, measured_w: float | None, *, measured_at: datetime, device_name: str
) -> Confirmation:
    """The verdict of one meter value taken at ``measured_at`` on the profile ``expectation`` describes."""
    if measured_at < expectation.accepted_at + timedelta(seconds=expectation.settle_s):
        return Confirmation(Verdict.WAITING, measured_w)
    if measured_w is None:
        return Confirmation(Verdict.UNMEASURED)
    limit = expectation.limit_w
    margin = tolerance_w(limit)
    if limit > 0:
        lowest, highest = -margin, limit + margin
    elif limit < 0:
        lowest, highest = limit - margin, margin
    else:
        lowest, highest = -margin, margin
    if lowest <= measured_w <= highest:
        return Confirmation(Verdict.CONFORMS, measured_w)
    direction = "draws" if measured_w > 0 else "feeds back"
    return Confirmation(
        Verdict.EXCEEDS,
        measured_w,
        reason=(
            f"charger {device_name} {direction} {abs(measured_w):.0f} W, outside the limit of {limit:.0f} W of "
            f"the profile it accepted (tolerance {margin:.0f} W)"
        ),
    )
