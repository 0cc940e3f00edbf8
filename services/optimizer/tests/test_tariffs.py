"""Tariffs compiled to a local day's prices: step counts on normal and DST days, the skipped and repeated hours,
windows across midnight, other step lengths, and bad input refused with the field named."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import pytest

from gridloop_common.contracts import FlatTariffRequest, ShiftConsumptionTariffRequest, TimeOfUseTariffRequest
from optimizer.tariffs import (
    InvalidTariff,
    Tariff,
    TariffKind,
    compile_tariff,
    day_prices,
    load_timezone,
    local_day,
    mean_price,
    price_at,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TORONTO = "America/Toronto"
PARIS = "Europe/Paris"


def _at(day: date, hour: int, minute: int = 0, *, offset_hours: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=timezone(timedelta(hours=offset_hours)))


def _time_of_use(day: date, start: datetime, stop: datetime, **changes: Any) -> Tariff:
    request = TimeOfUseTariffRequest(
        date=_at(day, 0), start_peak=start, stop_peak=stop, off_peak_value=0.05, on_peak_value=0.25, **changes
    )
    return compile_tariff(request, now=NOW)


def _peak_steps(prices: list[float], on_peak: float = 0.25) -> list[int]:
    return [index for index, price in enumerate(prices) if price == pytest.approx(on_peak)]


def test_a_flat_tariff_on_a_normal_day_has_144_equal_steps() -> None:
    tariff = compile_tariff(FlatTariffRequest(flat_price=0.08, date=_at(date(2026, 6, 1), 0)), now=NOW)

    prices = day_prices(tariff, TORONTO)

    assert tariff.kind is TariffKind.FLAT and tariff.day == date(2026, 6, 1) and tariff.scope is None
    assert prices == [0.08] * 144


def test_a_time_of_use_peak_covers_its_wall_clock_window() -> None:
    day = date(2026, 6, 1)
    tariff = _time_of_use(day, _at(day, 16), _at(day, 21))

    prices = day_prices(tariff, TORONTO)

    assert len(prices) == 144
    assert _peak_steps(prices) == list(range(96, 126))  # 16:00 to 21:00, 10-minute steps
    assert prices.count(0.05) == 114


def test_the_offset_of_the_request_is_not_used_the_wall_clock_is() -> None:
    day = date(2026, 6, 1)
    written_in_utc = _time_of_use(day, _at(day, 16), _at(day, 21))
    written_in_paris = _time_of_use(day, _at(day, 16, offset_hours=2), _at(day, 21, offset_hours=2))

    assert day_prices(written_in_utc, TORONTO) == day_prices(written_in_paris, TORONTO)
    assert day_prices(written_in_utc, PARIS) == day_prices(written_in_utc, TORONTO)


def test_spring_forward_in_toronto_has_138_steps_and_no_skipped_hour() -> None:
    day = date(2026, 3, 8)  # 02:00 EST becomes 03:00 EDT
    inside_skipped_hour = _time_of_use(day, _at(day, 2, 10), _at(day, 2, 50))
    across_it = _time_of_use(day, _at(day, 1, 30), _at(day, 3, 30))

    assert local_day(day, TORONTO).steps == 138
    assert _peak_steps(day_prices(inside_skipped_hour, TORONTO)) == []
    # 01:30-02:00 (steps 9-11) and 03:00-03:30 (steps 12-14): the window lasts one hour of real time.
    assert _peak_steps(day_prices(across_it, TORONTO)) == [9, 10, 11, 12, 13, 14]


def test_fall_back_in_toronto_has_150_steps_and_prices_the_repeated_hour_twice() -> None:
    day = date(2026, 11, 1)  # 02:00 EDT becomes 01:00 EST
    tariff = _time_of_use(day, _at(day, 1), _at(day, 1, 30))

    prices = day_prices(tariff, TORONTO)

    assert len(prices) == 150
    # 01:00-01:30 EDT (steps 6-8), then again 01:00-01:30 EST (steps 12-14).
    assert _peak_steps(prices) == [6, 7, 8, 12, 13, 14]
    assert prices[-1] == 0.05


def test_paris_dst_days_have_138_and_150_steps() -> None:
    spring, autumn = date(2026, 3, 29), date(2026, 10, 25)
    spring_tariff = _time_of_use(spring, _at(spring, 2, 0), _at(spring, 4, 0))
    autumn_tariff = _time_of_use(autumn, _at(autumn, 2, 0), _at(autumn, 3, 0))

    spring_prices = day_prices(spring_tariff, PARIS)
    autumn_prices = day_prices(autumn_tariff, PARIS)

    assert len(spring_prices) == 138 and len(autumn_prices) == 150
    assert _peak_steps(spring_prices) == list(range(12, 18))  # 03:00-04:00 CEST only
    # 02:00-03:00 CEST (steps 12-17) and 02:00-03:00 CET (steps 18-23).
    assert _peak_steps(autumn_prices) == list(range(12, 24))


def test_a_peak_crossing_midnight_prices_both_ends_of_the_day() -> None:
    day = date(2026, 6, 1)
    tariff = _time_of_use(day, _at(day, 22), _at(day + timedelta(days=1), 6))

    prices = day_prices(tariff, TORONTO)

    assert _peak_steps(prices) == list(range(36)) + list(range(132, 144))
    assert price_at(tariff, time(23, 59)) == 0.25 and price_at(tariff, time(6, 0)) == 0.05


@pytest.mark.parametrize(
    ("minutes", "steps", "peak"), [(5, 288, range(192, 252)), (15, 96, range(64, 84)), (60, 24, range(16, 21))]
)
def test_other_step_lengths_give_the_same_window(minutes: int, steps: int, peak: range) -> None:
    day = date(2026, 6, 1)
    tariff = _time_of_use(day, _at(day, 16), _at(day, 21))

    prices = day_prices(tariff, TORONTO, step=timedelta(minutes=minutes))

    assert len(prices) == steps
    assert _peak_steps(prices) == list(peak)


def test_sixty_minute_steps_on_dst_days_give_23_and_25() -> None:
    spring, autumn = date(2026, 3, 8), date(2026, 11, 1)
    hour = timedelta(minutes=60)
    flat = FlatTariffRequest(flat_price=0.1, date=_at(spring, 0))

    assert len(day_prices(compile_tariff(flat, now=NOW), TORONTO, step=hour)) == 23
    autumn_flat = flat.model_copy(update={"date": _at(autumn, 0)})
    assert len(day_prices(compile_tariff(autumn_flat, now=NOW), TORONTO, step=hour)) == 25


def test_a_step_straddling_the_window_edge_gets_the_time_weighted_mean() -> None:
    day = date(2026, 6, 1)
    tariff = _time_of_use(day, _at(day, 16, 5), _at(day, 21))

    prices = day_prices(tariff, TORONTO)

    assert prices[96] == pytest.approx(0.05 * 0.5 + 0.25 * 0.5)  # 16:00-16:10: half off-peak, half peak
    assert prices[97] == 0.25
    # The day's mean price is the same at every step length.
    five = day_prices(tariff, TORONTO, step=timedelta(minutes=5))
    assert sum(prices) / len(prices) == pytest.approx(sum(five) / len(five))


def test_shift_consumption_scales_the_flat_price_in_each_window() -> None:
    day = date(2026, 6, 1)
    request = ShiftConsumptionTariffRequest(
        date=_at(day, 0),
        flat_price=0.08,
        increase_multiplier=2.0,
        reduction_multiplier=0.5,
        start_increase=_at(day, 10),
        stop_increase=_at(day, 15),
        start_reduction=_at(day, 16),
        stop_reduction=_at(day, 21),
    )

    tariff = compile_tariff(request, now=NOW, scope=["north", "south", "north"])
    prices = day_prices(tariff, PARIS)

    assert tariff.scope == ("north", "south") and tariff.applies_to("south") and not tariff.applies_to("east")
    assert set(prices[60:90]) == {0.16} and set(prices[96:126]) == {0.04}
    assert prices[:60] == [0.08] * 60 and prices[90:96] == [0.08] * 6 and prices[126:] == [0.08] * 18


def test_a_stored_body_reads_back_as_the_same_tariff() -> None:
    day = date(2026, 6, 1)
    tariff = _time_of_use(day, _at(day, 22, 15), _at(day + timedelta(days=1), 6))

    again = Tariff.from_body(tariff.kind, tariff.day, tariff.scope, tariff.body())

    assert again == tariff
    assert day_prices(again, TORONTO) == day_prices(tariff, TORONTO)


def _shift(day: date, **changes: Any) -> ShiftConsumptionTariffRequest:
    values: dict[str, Any] = {
        "date": _at(day, 0),
        "start_increase": _at(day, 10),
        "stop_increase": _at(day, 15),
        "start_reduction": _at(day, 16),
        "stop_reduction": _at(day, 21),
    }
    values.update(changes)
    return ShiftConsumptionTariffRequest(**values)


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        (FlatTariffRequest(date=_at(date(2026, 1, 13), 0)), "date"),  # ended everywhere two days ago
        (FlatTariffRequest(date=_at(date(2027, 6, 1), 0)), "date"),  # more than a year ahead
        (
            TimeOfUseTariffRequest(
                date=_at(date(2026, 6, 1), 0),
                start_peak=_at(date(2026, 6, 1), 16),
                stop_peak=_at(date(2026, 6, 1), 15, offset_hours=-3),  # after the start as an instant only
            ),
            "stop_peak",
        ),
        (
            TimeOfUseTariffRequest(
                date=_at(date(2026, 6, 1), 0),
                start_peak=_at(date(2026, 6, 1), 16),
                stop_peak=_at(date(2026, 6, 2), 17),
            ),
            "stop_peak",
        ),
        (_shift(date(2026, 6, 1), start_reduction=_at(date(2026, 6, 1), 14)), "start_reduction"),
        (_shift(date(2026, 6, 1), flat_price=1e308, increase_multiplier=10.0), "increase_multiplier"),
    ],
    ids=["past", "too-far", "stop-before-start", "longer-than-a-day", "overlap", "overflow"],
)
def test_bad_requests_are_refused_naming_the_field(request_body: Any, field: str) -> None:
    with pytest.raises(InvalidTariff) as refused:
        compile_tariff(request_body, now=NOW)

    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


def test_today_in_the_zone_furthest_behind_is_still_accepted() -> None:
    # At 2026-01-15 12:00 UTC it is still 2026-01-15 00:00 in Etc/GMT+12.
    tariff = compile_tariff(FlatTariffRequest(date=_at(date(2026, 1, 15), 0)), now=NOW)
    assert tariff.day == date(2026, 1, 15)


def test_an_empty_scope_is_refused_naming_site() -> None:
    with pytest.raises(InvalidTariff) as refused:
        compile_tariff(FlatTariffRequest(date=_at(date(2026, 6, 1), 0)), now=NOW, scope=[])
    assert refused.value.field == "site"


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "../etc/passwd", "EST5EDT,M3.2.0,M11.1.0"])
def test_an_unknown_time_zone_is_refused_naming_timezone(name: str) -> None:
    with pytest.raises(InvalidTariff) as refused:
        load_timezone(name)
    assert refused.value.field == "timezone"


@pytest.mark.parametrize("step", [timedelta(0), timedelta(minutes=-10), timedelta(minutes=7)])
def test_a_step_that_does_not_divide_the_day_is_refused_naming_step(step: timedelta) -> None:
    with pytest.raises(InvalidTariff) as refused:
        local_day(date(2026, 6, 1), TORONTO, step=step)
    assert refused.value.field == "step"


def test_a_half_hour_dst_shift_refuses_hourly_steps_but_takes_half_hours() -> None:
    day = date(2026, 4, 5)  # Lord Howe Island turns its clocks back 30 minutes: a 24.5-hour day
    assert local_day(day, "Australia/Lord_Howe", step=timedelta(minutes=30)).steps == 49
    with pytest.raises(InvalidTariff) as refused:
        local_day(day, "Australia/Lord_Howe", step=timedelta(hours=1))
    assert refused.value.field == "step"


def test_a_day_whose_midnight_is_skipped_starts_at_the_first_wall_clock_time() -> None:
    # America/Santiago springs forward at 24:00 on 2026-09-05: 2026-09-06 starts at 01:00 and lasts 23 h.
    day = local_day(date(2026, 9, 6), "America/Santiago")
    assert day.steps == 138
    assert day.start.astimezone(day.zone).time() == time(1, 0)
    assert day.step_starts()[0] == day.start and day.step_starts()[-1] == day.end - day.step


def test_the_mean_price_of_an_interval_not_aligned_on_steps() -> None:
    day = date(2026, 6, 1)
    tariff = _time_of_use(day, _at(day, 16), _at(day, 21))
    toronto = load_timezone(TORONTO)
    start = datetime(2026, 6, 1, 15, 45, tzinfo=toronto)

    assert mean_price(tariff, toronto, start, start + timedelta(minutes=30)) == pytest.approx(0.05 / 2 + 0.25 / 2)
    with pytest.raises(InvalidTariff) as refused:
        mean_price(tariff, toronto, start, start + timedelta(days=1))
    assert refused.value.field == "start"
