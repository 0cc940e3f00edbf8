"""The forecast method step by step: candidates, the measured blend, each fallback, DST, external merges."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gridloop_common.contracts.forecasts import ForecastQuantity
from optimizer.forecasts import (
    EVALUATION_DAYS,
    ExternalForecast,
    Forecast,
    ForecastMethod,
    SeasonalWeights,
    SiteLocation,
    StepSeries,
    forecast_error,
    forecast_from_history,
    mean_forecast,
    merge_external,
    persistence_forecast,
    seasonal_weights,
    solar_elevation_deg,
    step_series,
)

HOUR = timedelta(hours=1)
ORIGIN = datetime(2026, 6, 15, tzinfo=UTC)  # a Monday
LONDON = SiteLocation(latitude=51.5, longitude=-0.12)


def hourly(days: int, value_at: Callable[[datetime], float | None], *, end: datetime = ORIGIN) -> StepSeries:
    """Hourly values from ``days`` local days before ``end`` to ``end``; ``value_at(moment)`` (None: missing)."""
    start = (end - timedelta(days=days)).astimezone(UTC)
    steps = (end.astimezone(UTC) - start) // HOUR
    return StepSeries(start=start, step=HOUR, values=tuple(value_at(start + HOUR * index) for index in range(steps)))


def test_step_series_places_rows_on_the_grid_and_leaves_gaps_missing() -> None:
    series = step_series(
        [
            (ORIGIN, 1.0),
            (ORIGIN + 2 * HOUR, 3.0),
            (ORIGIN + HOUR / 2, 9.0),  # off the grid
            (ORIGIN + 5 * HOUR, 9.0),  # past the end
            (ORIGIN + 3 * HOUR, float("nan")),
        ],
        start=ORIGIN,
        step=HOUR,
        steps=4,
    )

    assert series.values == (1.0, None, 3.0, None)
    assert series.at(ORIGIN + 2.5 * HOUR) == 3.0
    assert series.at(ORIGIN - HOUR) is None


def test_a_day_shape_repeats_from_yesterday_and_last_week() -> None:
    history = hourly(14, lambda moment: float(moment.hour))

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=ORIGIN, steps=24)

    assert forecast.values == pytest.approx([float(hour) for hour in range(24)])
    assert set(forecast.methods) == {ForecastMethod.SEASONAL}


def test_the_blend_leans_on_last_week_when_weekends_differ_from_weekdays() -> None:
    # Weekdays 1 kW, weekends 3 kW: "yesterday" is wrong every Saturday and Monday, "last week" never.
    history = hourly(28, lambda moment: 3.0 if moment.weekday() >= 5 else 1.0)

    weights = seasonal_weights(history, origin=ORIGIN)
    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=ORIGIN, steps=24)

    assert weights.yesterday == 0.0
    assert weights.last_week_mae == 0.0
    assert weights.yesterday_mae is not None and weights.yesterday_mae > 0
    assert forecast.values == pytest.approx([1.0] * 24)  # Monday, though yesterday was a Sunday


def test_the_blend_leans_on_yesterday_when_the_level_drifts() -> None:
    # A level rising every day: yesterday is one day off, last week seven.
    history = hourly(21, lambda moment: (moment - (ORIGIN - timedelta(days=21))).days * 0.1)

    weights = seasonal_weights(history, origin=ORIGIN)

    assert weights.yesterday == 1.0
    assert weights.samples == EVALUATION_DAYS * 24


def test_a_missing_yesterday_falls_back_to_the_day_before() -> None:
    yesterday = ORIGIN - timedelta(days=1)
    history = hourly(3, lambda moment: None if moment >= yesterday else 2.0 + moment.hour / 10)

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=ORIGIN, steps=24)

    assert forecast.values == pytest.approx([2.0 + hour / 10 for hour in range(24)])
    assert set(forecast.methods) == {ForecastMethod.SEASONAL}


def test_history_shorter_than_a_day_falls_back_to_persistence() -> None:
    history = StepSeries(start=ORIGIN - 6 * HOUR, step=HOUR, values=(1.0, None, 2.0, 2.5, None, None))

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=ORIGIN, steps=3)

    assert forecast.values == (2.5, 2.5, 2.5)
    assert forecast.methods == (ForecastMethod.PERSISTENCE,) * 3


def test_a_gap_at_every_lag_falls_back_to_the_daily_profile() -> None:
    # Ten days where 00:00-01:00 is always 4 kW but missing exactly 1..7 days before the horizon's first step.
    lagged = {ORIGIN - timedelta(days=days) for days in range(1, 8)}
    history = hourly(10, lambda moment: None if moment in lagged else (4.0 if moment.hour == 0 else 1.0))

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=ORIGIN, steps=2)

    assert forecast.methods[0] == ForecastMethod.DAILY_PROFILE
    assert forecast.values[0] == pytest.approx(4.0)
    assert forecast.methods[1] == ForecastMethod.SEASONAL


def test_pv_without_history_is_zero_at_night_and_persistence_by_day() -> None:
    noon = datetime(2026, 6, 15, 11, tzinfo=UTC)
    history = StepSeries(start=noon - HOUR, step=HOUR, values=(3.0,))

    forecast = forecast_from_history(history, quantity=ForecastQuantity.PV, start=noon, steps=13, location=LONDON)

    by_hour = dict(zip(range(11, 24), zip(forecast.values, forecast.methods, strict=True), strict=True))
    assert by_hour[12] == (3.0, ForecastMethod.PERSISTENCE)
    assert by_hour[23] == (0.0, ForecastMethod.NIGHT)
    assert by_hour[22] == (0.0, ForecastMethod.NIGHT)


def test_no_history_at_all_forecasts_zero_and_says_so() -> None:
    history = StepSeries(start=ORIGIN - HOUR, step=HOUR, values=(None,))

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=ORIGIN, steps=2)

    assert forecast.values == (0.0, 0.0)
    assert forecast.methods == (ForecastMethod.NONE, ForecastMethod.NONE)


def test_pv_is_never_negative() -> None:
    history = hourly(2, lambda moment: -0.02)  # an inverter's standby draw, measured as negative generation

    forecast = forecast_from_history(history, quantity=ForecastQuantity.PV, start=ORIGIN, steps=24)

    assert min(forecast.values) == 0.0


def test_same_time_yesterday_is_local_time_across_a_dst_change() -> None:
    # Europe/London moves to summer time on 2026-03-29 at 01:00 UTC. A load that peaks at 18:00 local
    # peaks at 18:00 UTC before the change and 17:00 UTC after it.
    london = ZoneInfo("Europe/London")
    origin = datetime(2026, 3, 30, tzinfo=london)
    history = hourly(8, lambda moment: 5.0 if moment.astimezone(london).hour == 18 else 1.0, end=origin)

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=origin, steps=24, time_zone=london)
    in_utc = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=origin, steps=24)

    peak = max(range(24), key=lambda index: forecast.values[index])
    assert (forecast.start + HOUR * peak).astimezone(london).hour == 18
    assert forecast.values[peak] == pytest.approx(5.0)
    # Read in UTC, last week's peak (before the change) lands an hour late.
    assert in_utc.values[peak] < 5.0


def test_persistence_and_mean_baselines() -> None:
    history = StepSeries(start=ORIGIN - 3 * HOUR, step=HOUR, values=(1.0, 3.0, None))

    assert persistence_forecast(history, start=ORIGIN, steps=2) == (3.0, 3.0)
    assert mean_forecast(history, start=ORIGIN, steps=2) == (2.0, 2.0)


def test_forecast_error_skips_steps_with_nothing_measured() -> None:
    error = forecast_error([1.0, None, 3.0], [2.0, 100.0, 3.0])

    assert (error.mae, error.nmae, error.samples) == (0.5, 0.25, 2)


def test_the_sun_is_high_at_noon_in_june_and_below_the_horizon_at_midnight() -> None:
    assert solar_elevation_deg(datetime(2026, 6, 21, 12, 0, tzinfo=UTC), LONDON) == pytest.approx(62, abs=1)
    assert solar_elevation_deg(datetime(2026, 6, 21, 0, 0, tzinfo=UTC), LONDON) < -10
    assert solar_elevation_deg(datetime(2026, 12, 21, 12, 0, tzinfo=UTC), LONDON) == pytest.approx(15, abs=1)


def _own(values: list[float], *, step: timedelta = HOUR) -> Forecast:
    return Forecast(
        quantity=ForecastQuantity.LOAD,
        start=ORIGIN,
        step=step,
        values=tuple(values),
        methods=(ForecastMethod.SEASONAL,) * len(values),
        weights=SeasonalWeights(yesterday=0.5, yesterday_mae=None, last_week_mae=None, samples=0),
    )


def _external(
    start: datetime, step: timedelta, values: list[float], *, received: int, expires: datetime
) -> ExternalForecast:
    return ExternalForecast(
        start=start,
        step=step,
        values=tuple(values),
        expires_at=expires,
        received_at=ORIGIN - timedelta(minutes=60 - received),
    )


def test_external_values_win_where_they_cover_a_step() -> None:
    external = _external(ORIGIN + HOUR, HOUR, [7.0, 8.0], received=1, expires=ORIGIN + 10 * HOUR)

    merged = merge_external(_own([1.0, 1.0, 1.0, 1.0]), [external], now=ORIGIN)

    assert merged.values == (1.0, 7.0, 8.0, 1.0)
    assert merged.methods == (
        ForecastMethod.SEASONAL,
        ForecastMethod.EXTERNAL,
        ForecastMethod.EXTERNAL,
        ForecastMethod.SEASONAL,
    )


def test_an_expired_external_forecast_is_ignored() -> None:
    external = _external(ORIGIN, HOUR, [7.0, 8.0], received=1, expires=ORIGIN + HOUR / 2)

    assert merge_external(_own([1.0, 1.0]), [external], now=ORIGIN + HOUR).values == (1.0, 1.0)
    assert merge_external(_own([1.0, 1.0]), [external], now=ORIGIN).values == (7.0, 8.0)


def test_the_external_forecast_received_last_wins_where_two_overlap() -> None:
    older = _external(ORIGIN, HOUR, [5.0, 5.0, 5.0], received=1, expires=ORIGIN + 10 * HOUR)
    newer = _external(ORIGIN + HOUR, HOUR, [9.0], received=2, expires=ORIGIN + 10 * HOUR)

    merged = merge_external(_own([1.0, 1.0, 1.0]), [newer, older], now=ORIGIN)

    assert merged.values == (5.0, 9.0, 5.0)


def test_external_steps_of_another_length_keep_each_step_energy() -> None:
    # A 15-minute external forecast covering 30 minutes of the second hourly step: half external, half own.
    external = _external(ORIGIN + HOUR, timedelta(minutes=15), [4.0, 8.0], received=1, expires=ORIGIN + 10 * HOUR)

    merged = merge_external(_own([2.0, 2.0]), [external], now=ORIGIN)

    assert merged.values[1] == pytest.approx((4.0 + 8.0) / 4 + 2.0 / 2)
    assert merged.methods == (ForecastMethod.SEASONAL, ForecastMethod.PARTLY_EXTERNAL)


def test_a_horizon_of_two_days_reads_the_second_day_from_two_days_before() -> None:
    history = hourly(3, lambda moment: float(moment.day))  # each day's value is its date

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=ORIGIN, steps=48)

    # Day 1 of the horizon copies yesterday (the 14th); day 2 cannot see its yesterday (inside the horizon),
    # so it takes the day before that, also the 14th, not a zero.
    assert forecast.values == (14.0,) * 48
    assert set(forecast.methods) == {ForecastMethod.SEASONAL}


def test_a_step_that_does_not_divide_a_day_still_forecasts_from_yesterday() -> None:
    step = timedelta(minutes=7)
    start = ORIGIN - timedelta(days=2)
    steps = (ORIGIN - start) // step + 1  # the grid overruns the origin by a few minutes
    values = tuple(float((start + step * index).hour) for index in range(steps))
    history = StepSeries(start=start, step=step, values=values)
    origin = start + step * (steps - 1)

    forecast = forecast_from_history(history, quantity=ForecastQuantity.LOAD, start=origin, steps=200)

    for index in range(200):
        moment = origin + step * index
        # The history step holding the same time yesterday starts up to 6 minutes earlier.
        assert forecast.values[index] in {float(moment.hour), float((moment - timedelta(minutes=6)).hour)}
    assert set(forecast.methods) == {ForecastMethod.SEASONAL}
