"""Forecasts of a site's non-controllable load and PV power for a planning horizon, from its telemetry history.

Pure: the history, the horizon's start and the time zone are arguments; nothing here reads a clock or a
database (``repository.ForecastRepository`` reads the history, ``handlers`` stores external forecasts).

**Method: seasonal naive, blended by measured error.** For each step ``t`` of the horizon two candidates:

- *same time yesterday*: the value at the same local time of day 1 day before (2, ... 6 days before when
  that step lies in the horizon itself or is missing), and
- *same time last week*: the same local time 7 days before (14, 21, 28 when missing),

blended as ``w * yesterday + (1 - w) * last_week``. ``w`` is measured, not guessed: over the last
``EVALUATION_DAYS`` days of history each candidate is replayed as a forecast of what was then measured,
and ``w`` is the least-squares weight of that replay (``seasonal_weights``), clamped to [0, 1]. A site
whose weekdays differ from its weekends gets more of "last week"; PV, which has no weekly rhythm but
cloudy days, gets about half of each, and averaging two days halves the weather the forecast copies.
"Same time" is local wall-clock time in the site's zone, so a DST change shifts nothing.

**Fallbacks, per step** (the method used is reported per step in ``Forecast.methods``):

1. neither candidate is known (history shorter than a day, or a gap at every lag): the *daily profile*,
   the mean of the values at the same local time of day over the last ``PROFILE_DAYS`` days;
2. PV only, when the site's location is known: the sun is below the horizon (a NOAA solar-position
   approximation, a few trigonometric terms): 0 kW; this comes before the profile and persistence, so a
   site with no PV history is never forecast to generate at night;
3. *persistence*: the last measured value before the horizon;
4. no history at all: 0 kW (``ForecastMethod.NONE``), so that the planner can say it planned blind.

PV is never negative. Missing samples are ``None`` in a ``StepSeries`` and are skipped everywhere: a gap
makes a candidate fall back to an earlier day, never to a zero.

**Why this method.** EMHASS and FlexMeasures ship ML forecasters (Prophet, regressors) that need training
data, a fit per site and a place to run it; evcc's base load is a 30-day profile; OpenEMS has persistence
and similar-day predictors. For a control plane that plans a thousand sites every few minutes, a method
with no training, no state and a cost of a few dictionary look-ups per step, that degrades step by step
instead of failing, is the right default; an external forecast (a weather-driven PV forecast, the site's
own EMS) wins wherever one is given (``merge_external``). Measured on held-out synthetic site histories
(services/optimizer/tests/test_forecast_accuracy.py, bench/forecasts.py, the figures in
docs/decisions/2026-12-07-forecasts.md) it has a third to a quarter of persistence's error for load and
about half of it for PV, and is within a few percent of the better of its two candidates.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from gridloop_common.contracts.forecasts import ForecastQuantity

__all__ = [
    "EVALUATION_DAYS",
    "PROFILE_DAYS",
    "ExternalForecast",
    "Forecast",
    "ForecastError",
    "ForecastMethod",
    "SeasonalWeights",
    "SiteLocation",
    "StepSeries",
    "forecast_error",
    "forecast_from_history",
    "mean_forecast",
    "merge_external",
    "persistence_forecast",
    "seasonal_weights",
    "solar_elevation_deg",
    "step_series",
]

# Days of history replayed to measure the two candidates' errors: two whole weeks, so every weekday counts
# twice (over ten synthetic sites, 14 days gave a slightly lower error than 7, and 21 no lower than 14).
EVALUATION_DAYS: Final = 14
# Days averaged by the daily-profile fallback (evcc's base-load profile spans 30).
PROFILE_DAYS: Final = 28
# "Yesterday" falls back to earlier days, stopping short of the weekly lag, which is the other candidate.
_YESTERDAY_LAGS_DAYS: Final = (1, 2, 3, 4, 5, 6)
_LAST_WEEK_LAGS_DAYS: Final = (7, 14, 21, 28)
# The sun's upper limb clears the horizon at about -0.833° of centre elevation (refraction and radius).
_SUNRISE_ELEVATION_DEG: Final = -0.833


class ForecastMethod(enum.StrEnum):
    """Where a forecast step's value comes from, best first."""

    EXTERNAL = "external"  # an external forecast covers the whole step
    PARTLY_EXTERNAL = "partly_external"  # an external forecast covers part of it; history the rest
    SEASONAL = "seasonal"  # same time yesterday and/or last week
    NIGHT = "night"  # PV with the sun down
    DAILY_PROFILE = "daily_profile"  # mean of the same time of day over the last PROFILE_DAYS
    PERSISTENCE = "persistence"  # the last measured value
    NONE = "none"  # no history at all: 0 kW


@dataclass(frozen=True)
class StepSeries:
    """Average power (kW) per step from ``start``; ``None`` where nothing was measured."""

    start: datetime
    step: timedelta
    values: tuple[float | None, ...]

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.step <= timedelta(0):
            raise ValueError("step must be positive")
        # In UTC: arithmetic on a datetime in a zone with DST is wall-clock arithmetic, an hour off across a change.
        object.__setattr__(self, "start", self.start.astimezone(UTC))

    @property
    def end(self) -> datetime:
        return self.start + self.step * len(self.values)

    def at(self, moment: datetime) -> float | None:
        """The value of the step that contains ``moment`` (None outside the series or where missing)."""
        offset = moment - self.start
        if offset < timedelta(0):
            return None
        index = offset // self.step
        return self.values[index] if index < len(self.values) else None


def step_series(
    rows: Iterable[tuple[datetime, float | None]], *, start: datetime, step: timedelta, steps: int
) -> StepSeries:
    """A regular series of ``steps`` steps from ``start`` out of (step start, kW) rows, gaps as None.

    Rows off the grid or outside it are dropped: the repository aggregates on the same grid.
    """
    start = start.astimezone(UTC)
    values: list[float | None] = [None] * steps
    for moment, value in rows:
        offset = moment - start
        if offset < timedelta(0) or offset % step:
            continue
        index = offset // step
        if index < steps and value is not None and math.isfinite(value):
            values[index] = value
    return StepSeries(start=start, step=step, values=tuple(values))


@dataclass(frozen=True)
class SiteLocation:
    """Where a site is, for the sun's position: degrees north and east."""

    latitude: float
    longitude: float


@dataclass(frozen=True)
class SeasonalWeights:
    """The weight of "same time yesterday" (last week gets ``1 - yesterday``) and the replay it came from."""

    yesterday: float
    yesterday_mae: float | None
    last_week_mae: float | None
    samples: int


@dataclass(frozen=True)
class Forecast:
    """A forecast of one quantity: average kW per step from ``start``, and how each step was made."""

    quantity: ForecastQuantity
    start: datetime
    step: timedelta
    values: tuple[float, ...]
    methods: tuple[ForecastMethod, ...]
    weights: SeasonalWeights

    @property
    def end(self) -> datetime:
        return self.start + self.step * len(self.values)


@dataclass(frozen=True)
class ExternalForecast:
    """A stored external forecast (``optimizer.external_forecasts``): kW per step from ``start``."""

    start: datetime
    step: timedelta
    values: tuple[float, ...]
    expires_at: datetime
    received_at: datetime

    def __post_init__(self) -> None:
        if self.step <= timedelta(0):
            raise ValueError("step must be positive")
        object.__setattr__(self, "start", self.start.astimezone(UTC))

    @property
    def end(self) -> datetime:
        return self.start + self.step * len(self.values)


def _days_before(moment: datetime, days: int, time_zone: tzinfo) -> datetime:
    # Arithmetic on an aware datetime keeps its wall-clock time: 08:00 local stays 08:00 across a DST change.
    return (moment.astimezone(time_zone) - timedelta(days=days)).astimezone(UTC)


def _lagged(
    history: StepSeries, moment: datetime, lags_days: Sequence[int], *, before: datetime, time_zone: tzinfo
) -> float | None:
    """The value at the same local time ``lags_days`` days before ``moment``: the first one known before ``before``."""
    for days in lags_days:
        earlier = _days_before(moment, days, time_zone)
        if earlier >= before:
            continue
        value = history.at(earlier)
        if value is not None:
            return value
    return None


def _steps_per_day(step: timedelta, time_zone: tzinfo) -> int | None:
    """Steps in every day, when that is one number: a zone without DST and a step that divides 24 hours."""
    if time_zone.utcoffset(None) is None or timedelta(days=1) % step:
        return None
    return timedelta(days=1) // step


def _lagged_by_index(
    values: tuple[float | None, ...], index: int, lags_days: Sequence[int], steps_per_day: int
) -> float | None:
    """``_lagged`` by index arithmetic, for a grid whose days all have ``steps_per_day`` steps (10x cheaper)."""
    for days in lags_days:
        earlier = index - days * steps_per_day
        if earlier < 0:
            return None  # the lags only go further back
        value = values[earlier]
        if value is not None:
            return value
    return None


def seasonal_weights(
    history: StepSeries, *, origin: datetime, time_zone: tzinfo = UTC, evaluation_days: int = EVALUATION_DAYS
) -> SeasonalWeights:
    """Replay both candidates over the ``evaluation_days`` days before ``origin``; the least-squares blend.

    With errors ``e_y`` (yesterday) and ``e_w`` (last week) on the same steps, the blend's squared error
    ``sum((w e_y + (1 - w) e_w)^2)`` is least at ``w = sum(e_w (e_w - e_y)) / sum((e_y - e_w)^2)``; it also
    accounts for the two errors being correlated (both contain today's noise), which inverse-error
    weights would not. Without a step where both are known, 0.5.
    """
    first = max(history.start, origin - timedelta(days=evaluation_days))
    index = max(0, (first - history.start) // history.step)
    steps_per_day = _steps_per_day(history.step, time_zone)
    cross = 0.0
    spread = 0.0
    yesterday_total = 0.0
    last_week_total = 0.0
    samples = 0
    # Steps that start before the origin (a ceiling division).
    stop = min(len(history.values), max(0, -((history.start - origin) // history.step)))
    for position in range(index, stop):
        actual = history.values[position]
        if actual is None:
            continue
        if steps_per_day is None:
            moment = history.start + history.step * position
            yesterday = _lagged(history, moment, _YESTERDAY_LAGS_DAYS, before=moment, time_zone=time_zone)
            last_week = _lagged(history, moment, _LAST_WEEK_LAGS_DAYS, before=moment, time_zone=time_zone)
        else:
            yesterday = _lagged_by_index(history.values, position, _YESTERDAY_LAGS_DAYS, steps_per_day)
            last_week = _lagged_by_index(history.values, position, _LAST_WEEK_LAGS_DAYS, steps_per_day)
        if yesterday is None or last_week is None:
            continue
        yesterday_error = yesterday - actual
        last_week_error = last_week - actual
        cross += last_week_error * (last_week_error - yesterday_error)
        spread += (yesterday_error - last_week_error) ** 2
        yesterday_total += abs(yesterday_error)
        last_week_total += abs(last_week_error)
        samples += 1
    if samples == 0:
        return SeasonalWeights(yesterday=0.5, yesterday_mae=None, last_week_mae=None, samples=0)
    weight = 0.5 if spread == 0 else min(1.0, max(0.0, cross / spread))
    return SeasonalWeights(
        yesterday=weight,
        yesterday_mae=yesterday_total / samples,
        last_week_mae=last_week_total / samples,
        samples=samples,
    )


def _time_of_day(moment: datetime, time_zone: tzinfo) -> tuple[int, int, int]:
    local = moment.astimezone(time_zone)
    return local.hour, local.minute, local.second


def _daily_profile(history: StepSeries, *, origin: datetime, time_zone: tzinfo) -> dict[tuple[int, int, int], float]:
    """Mean value per local time of day over the last PROFILE_DAYS days before ``origin``."""
    first = max(history.start, origin - timedelta(days=PROFILE_DAYS))
    totals: dict[tuple[int, int, int], tuple[float, int]] = {}
    index = max(0, (first - history.start) // history.step)
    while index < len(history.values):
        moment = history.start + history.step * index
        if moment >= origin:
            break
        value = history.values[index]
        index += 1
        if value is None:
            continue
        key = _time_of_day(moment, time_zone)
        total, count = totals.get(key, (0.0, 0))
        totals[key] = (total + value, count + 1)
    return {key: total / count for key, (total, count) in totals.items()}


def _last_value(history: StepSeries, *, before: datetime) -> float | None:
    index = min(len(history.values), max(0, -((history.start - before) // history.step))) - 1
    while index >= 0:
        value = history.values[index]
        if value is not None:
            return value
        index -= 1
    return None


def solar_elevation_deg(moment: datetime, location: SiteLocation) -> float:
    """The sun's elevation above the horizon at ``moment``, degrees (NOAA's general solar position
    approximation: within about half a degree, plenty for telling night from day)."""
    utc = moment.astimezone(UTC)
    hours = utc.hour + utc.minute / 60 + utc.second / 3600
    fraction = 2 * math.pi / 365 * (utc.timetuple().tm_yday - 1 + (hours - 12) / 24)
    equation_of_time_min = 229.18 * (
        0.000075
        + 0.001868 * math.cos(fraction)
        - 0.032077 * math.sin(fraction)
        - 0.014615 * math.cos(2 * fraction)
        - 0.040849 * math.sin(2 * fraction)
    )
    declination = (
        0.006918
        - 0.399912 * math.cos(fraction)
        + 0.070257 * math.sin(fraction)
        - 0.006758 * math.cos(2 * fraction)
        + 0.000907 * math.sin(2 * fraction)
        - 0.002697 * math.cos(3 * fraction)
        + 0.00148 * math.sin(3 * fraction)
    )
    solar_minutes = hours * 60 + equation_of_time_min + 4 * location.longitude
    hour_angle = math.radians(solar_minutes / 4 - 180)
    latitude = math.radians(location.latitude)
    cos_zenith = math.sin(latitude) * math.sin(declination) + math.cos(latitude) * math.cos(declination) * math.cos(
        hour_angle
    )
    return 90.0 - math.degrees(math.acos(min(1.0, max(-1.0, cos_zenith))))


def _sun_down(start: datetime, step: timedelta, location: SiteLocation) -> bool:
    # Down at both ends and the middle of the step: a step with any daylight keeps its history-based value.
    return all(
        solar_elevation_deg(moment, location) < _SUNRISE_ELEVATION_DEG
        for moment in (start, start + step / 2, start + step)
    )


def forecast_from_history(
    history: StepSeries,
    *,
    quantity: ForecastQuantity,
    start: datetime,
    steps: int,
    time_zone: tzinfo = UTC,
    location: SiteLocation | None = None,
    weights: SeasonalWeights | None = None,
) -> Forecast:
    """Forecast ``steps`` steps of ``history.step`` from ``start`` out of what ``history`` measured before it.

    ``time_zone`` is the site's (what "the same time yesterday" means); ``location`` lets PV be 0 at night
    when history does not say; ``weights`` may be passed in to reuse one replay for several horizons.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    start = start.astimezone(UTC)
    step = history.step
    if weights is None:
        weights = seasonal_weights(history, origin=start, time_zone=time_zone)
    profile: dict[tuple[int, int, int], float] | None = None
    last_value = _last_value(history, before=start)
    is_pv = quantity == ForecastQuantity.PV
    values: list[float] = []
    methods: list[ForecastMethod] = []
    for index in range(steps):
        moment = start + step * index
        yesterday = _lagged(history, moment, _YESTERDAY_LAGS_DAYS, before=start, time_zone=time_zone)
        last_week = _lagged(history, moment, _LAST_WEEK_LAGS_DAYS, before=start, time_zone=time_zone)
        value: float
        if yesterday is not None and last_week is not None:
            value, method = weights.yesterday * yesterday + (1 - weights.yesterday) * last_week, ForecastMethod.SEASONAL
        elif yesterday is not None:
            value, method = yesterday, ForecastMethod.SEASONAL
        elif last_week is not None:
            value, method = last_week, ForecastMethod.SEASONAL
        elif is_pv and location is not None and _sun_down(moment, step, location):
            value, method = 0.0, ForecastMethod.NIGHT
        else:
            if profile is None:
                profile = _daily_profile(history, origin=start, time_zone=time_zone)
            typical = profile.get(_time_of_day(moment, time_zone))
            if typical is not None:
                value, method = typical, ForecastMethod.DAILY_PROFILE
            elif last_value is not None:
                value, method = last_value, ForecastMethod.PERSISTENCE
            else:
                value, method = 0.0, ForecastMethod.NONE
        values.append(max(0.0, value) if is_pv else value)
        methods.append(method)
    return Forecast(
        quantity=quantity, start=start, step=step, values=tuple(values), methods=tuple(methods), weights=weights
    )


def persistence_forecast(history: StepSeries, *, start: datetime, steps: int) -> tuple[float, ...]:
    """The baseline "as it is now": the last measured value for every step (0 without one)."""
    last_value = _last_value(history, before=start)
    return (last_value if last_value is not None else 0.0,) * steps


def mean_forecast(history: StepSeries, *, start: datetime, steps: int) -> tuple[float, ...]:
    """The baseline "as on average": the mean of every value measured before ``start``, flat."""
    known = [
        value
        for index, value in enumerate(history.values)
        if value is not None and history.start + history.step * index < start
    ]
    return (sum(known) / len(known) if known else 0.0,) * steps


def merge_external(forecast: Forecast, external: Iterable[ExternalForecast], *, now: datetime) -> Forecast:
    """``forecast`` with external values wherever an unexpired external forecast covers a step.

    An external forecast counts while ``now < expires_at``. Where several cover the same time, the one
    received last wins. A step covered only in part takes the time-weighted mix of the external values
    and the history-based value, so the step's energy stays right whatever the two step lengths are.
    """
    live = sorted(
        (candidate for candidate in external if now < candidate.expires_at and candidate.values),
        key=lambda candidate: candidate.received_at,
        reverse=True,
    )
    if not live:
        return forecast
    values: list[float] = []
    methods: list[ForecastMethod] = []
    for index, (own_value, own_method) in enumerate(zip(forecast.values, forecast.methods, strict=True)):
        step_start = forecast.start + forecast.step * index
        step_end = step_start + forecast.step
        boundaries = {step_start, step_end}
        for candidate in live:
            boundaries.update(_boundaries_within(candidate, step_start, step_end))
        ordered = sorted(boundaries)
        energy = 0.0
        covered = timedelta(0)
        for segment_start, segment_end in itertools.pairwise(ordered):
            duration = segment_end - segment_start
            middle = segment_start + duration / 2
            value = next((_value_at(candidate, middle) for candidate in live if _covers(candidate, middle)), None)
            if value is None:
                energy += own_value * (duration / forecast.step)
            else:
                energy += value * (duration / forecast.step)
                covered += duration
        if covered == timedelta(0):
            values.append(own_value)
            methods.append(own_method)
        else:
            values.append(energy)
            methods.append(ForecastMethod.EXTERNAL if covered == forecast.step else ForecastMethod.PARTLY_EXTERNAL)
    return Forecast(
        quantity=forecast.quantity,
        start=forecast.start,
        step=forecast.step,
        values=tuple(values),
        methods=tuple(methods),
        weights=forecast.weights,
    )


def _covers(candidate: ExternalForecast, moment: datetime) -> bool:
    return candidate.start <= moment < candidate.end


def _value_at(candidate: ExternalForecast, moment: datetime) -> float:
    return candidate.values[(moment - candidate.start) // candidate.step]


def _boundaries_within(candidate: ExternalForecast, start: datetime, end: datetime) -> list[datetime]:
    """The candidate's step boundaries strictly inside (start, end)."""
    if candidate.end <= start or candidate.start >= end:
        return []
    first_index = max(0, -((candidate.start - start) // candidate.step))
    found: list[datetime] = []
    boundary = candidate.start + candidate.step * first_index
    while boundary < end and boundary <= candidate.end:
        if boundary > start:
            found.append(boundary)
        boundary += candidate.step
    return found


@dataclass(frozen=True)
class ForecastError:
    """How far a forecast was from what was measured: mean absolute error (kW) and the same divided by
    the mean absolute measured value (nMAE), over the steps where something was measured."""

    mae: float
    nmae: float | None
    samples: int


def forecast_error(actual: Sequence[float | None], predicted: Sequence[float]) -> ForecastError:
    """MAE and nMAE of ``predicted`` against ``actual``, skipping steps with nothing measured."""
    if len(actual) != len(predicted):
        raise ValueError("actual and predicted must have the same length")
    pairs = [(measured, guess) for measured, guess in zip(actual, predicted, strict=True) if measured is not None]
    if not pairs:
        return ForecastError(mae=0.0, nmae=None, samples=0)
    mae = sum(abs(measured - guess) for measured, guess in pairs) / len(pairs)
    scale = sum(abs(measured) for measured, _ in pairs) / len(pairs)
    return ForecastError(mae=mae, nmae=mae / scale if scale > 0 else None, samples=len(pairs))
