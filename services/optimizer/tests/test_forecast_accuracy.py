"""The forecast's error on held-out history: it must beat persistence and a flat mean, for load and PV.

Five weeks of a synthetic site (gridloop_simulators.site_history, fixed seed: weekday and weekend load
shapes, drifting level, noise, appliance peaks, PV under weather that lasts, missing samples and an
outage); the last seven days are held out and each is forecast at its midnight from what came before.
The figures themselves are bench/forecasts.py's; here only the comparison is asserted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gridloop_common.contracts.forecasts import ForecastQuantity
from gridloop_simulators.site_history import synthetic_site_history
from optimizer.forecasts import (
    ForecastError,
    StepSeries,
    forecast_error,
    forecast_from_history,
    mean_forecast,
    persistence_forecast,
)

SEED = 17
HISTORY_DAYS = 35
HELD_OUT_DAYS = 7
START = datetime(2026, 5, 4, tzinfo=UTC)  # a Monday


def held_out_errors(history: StepSeries, quantity: ForecastQuantity) -> dict[str, ForecastError]:
    steps_per_day = round(timedelta(days=1) / history.step)
    first_held_out = len(history.values) - HELD_OUT_DAYS * steps_per_day
    actual: list[float | None] = []
    predicted: dict[str, list[float]] = {"seasonal": [], "persistence": [], "mean": []}
    for day in range(HELD_OUT_DAYS):
        first = first_held_out + day * steps_per_day
        origin = history.start + history.step * first
        known = StepSeries(start=history.start, step=history.step, values=history.values[:first])
        actual.extend(history.values[first : first + steps_per_day])
        forecast = forecast_from_history(known, quantity=quantity, start=origin, steps=steps_per_day)
        predicted["seasonal"].extend(forecast.values)
        predicted["persistence"].extend(persistence_forecast(known, start=origin, steps=steps_per_day))
        predicted["mean"].extend(mean_forecast(known, start=origin, steps=steps_per_day))
    return {method: forecast_error(actual, values) for method, values in predicted.items()}


@pytest.mark.parametrize("step_minutes", [15, 60])
@pytest.mark.parametrize("quantity", [ForecastQuantity.LOAD, ForecastQuantity.PV])
def test_the_forecast_beats_persistence_and_a_flat_mean_on_held_out_days(
    quantity: ForecastQuantity, step_minutes: int
) -> None:
    site = synthetic_site_history(start=START, days=HISTORY_DAYS, step=timedelta(minutes=step_minutes), seed=SEED)
    values = site.load_kw if quantity == ForecastQuantity.LOAD else site.pv_kw
    history = StepSeries(start=site.start, step=site.step, values=values)
    assert None in values  # the history has gaps, as a real one does

    errors = held_out_errors(history, quantity)

    assert errors["seasonal"].samples > 0.9 * HELD_OUT_DAYS * 24 * 60 / step_minutes
    assert errors["seasonal"].mae < errors["persistence"].mae
    assert errors["seasonal"].mae < errors["mean"].mae
