"""The tariff `gridloop up` posts for its demo: a valid ToU request whose peak lies ahead, on the step grid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gridloop_cli.demo import DEMO_SITE, demo_tariff
from gridloop_common.contracts import TimeOfUseTariffRequest


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        datetime(2026, 12, 7, 9, 3, 41, 123, tzinfo=UTC),
        datetime(2026, 12, 7, 23, 45, tzinfo=UTC),  # the peak falls on the next day
    ],
)
def test_the_demo_peak_starts_on_a_ten_minute_boundary_at_least_twenty_minutes_ahead_and_lasts_an_hour(
    now: datetime,
) -> None:
    body = demo_tariff(now)
    request = TimeOfUseTariffRequest.model_validate(body)

    assert request.site == [DEMO_SITE]
    assert timedelta(minutes=20) <= request.start_peak - now < timedelta(minutes=30)
    assert request.start_peak.minute % 10 == 0 and request.start_peak.second == 0
    assert request.stop_peak - request.start_peak == timedelta(hours=1)
    assert request.date.date() == request.start_peak.date() and request.on_peak_value > request.off_peak_value
