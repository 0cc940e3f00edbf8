"""A synthetic multi-week history of one site's load and PV power, for measuring forecasts.

Realistic in the ways that matter to a forecast: the load has a daily shape that differs on weekends,
a level that drifts from day to day (weather, occupancy), correlated noise and short appliance peaks;
PV is a bell from sunrise to sunset whose height follows the day's weather (clear, broken cloud,
overcast), weather that tends to last several days, with fast cloud flicker on broken days. Samples go
missing at random and in one multi-hour outage, as a meter's link does. Everything comes from one
``random.Random(seed)``, so a seed gives the same history on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["WEEKDAY_PROFILE_KW", "WEEKEND_PROFILE_KW", "SiteHistory", "synthetic_site_history"]

# Average load in kW for each hour of the day (00:00 .. 23:00), working days and weekends.
WEEKDAY_PROFILE_KW: tuple[float, ...] = (
    0.35, 0.30, 0.30, 0.30, 0.30, 0.35, 0.60, 1.20, 1.50, 1.00, 0.80, 0.80,
    0.90, 0.80, 0.70, 0.70, 0.90, 1.40, 2.40, 2.80, 2.40, 1.70, 1.00, 0.50,
)  # fmt: skip
WEEKEND_PROFILE_KW: tuple[float, ...] = (
    0.45, 0.35, 0.30, 0.30, 0.30, 0.30, 0.35, 0.50, 0.90, 1.40, 1.70, 1.80,
    2.00, 1.70, 1.40, 1.30, 1.40, 1.80, 2.50, 2.70, 2.30, 1.80, 1.20, 0.70,
)  # fmt: skip

# Weather states, their PV height (fraction of clear sky) and the chance of keeping the state next day.
_WEATHER = {
    "clear": ((0.85, 1.0), 0.6),
    "broken": ((0.4, 0.8), 0.5),
    "overcast": ((0.08, 0.3), 0.5),
}
_MISSING_SHARE = 0.01  # share of samples lost at random
_OUTAGE_HOURS = 5  # one outage of this length in the history


@dataclass(frozen=True)
class SiteHistory:
    """Average kW per step from ``start``; None where the sample is missing."""

    start: datetime
    step: timedelta
    load_kw: tuple[float | None, ...]
    pv_kw: tuple[float | None, ...]


def _profile_at(profile: tuple[float, ...], hours: float) -> float:
    hour = int(hours) % 24
    fraction = hours - int(hours)
    return profile[hour] * (1 - fraction) + profile[(hour + 1) % 24] * fraction


def _clear_sky_kw(hours: float, day_of_year: int, peak_kw: float) -> float:
    # Day length swings +-2 h around 12 h over the year; the bell is a sine raised to 1.5 (air mass).
    half_day = 6.0 + 2.0 * math.sin(2 * math.pi * (day_of_year - 80) / 365)
    sunrise, sunset = 12.5 - half_day, 12.5 + half_day
    if not sunrise < hours < sunset:
        return 0.0
    height: float = math.sin(math.pi * (hours - sunrise) / (sunset - sunrise)) ** 1.5
    return peak_kw * height


def synthetic_site_history(
    *, start: datetime, days: int, step: timedelta, seed: int, pv_peak_kw: float = 5.0, missing: bool = True
) -> SiteHistory:
    """``days`` days of load and PV at ``step`` from ``start`` (a local midnight; its weekday sets the week)."""
    generator = random.Random(seed)
    steps_per_day = round(timedelta(days=1) / step)
    load: list[float | None] = []
    pv: list[float | None] = []
    weather = "clear"
    noise = 0.0
    cloud = 0.0
    peak_left = 0
    peak_kw = 0.0
    step_hours = step / timedelta(hours=1)
    for day in range(days):
        moment = start + timedelta(days=day)
        profile = WEEKEND_PROFILE_KW if moment.weekday() >= 5 else WEEKDAY_PROFILE_KW
        level = 1.0 + generator.gauss(0.0, 0.08)
        (low, high), stay = _WEATHER[weather]
        if generator.random() > stay:
            weather = generator.choice([name for name in _WEATHER if name != weather])
            (low, high), _ = _WEATHER[weather]
        height = generator.uniform(low, high)
        day_of_year = moment.timetuple().tm_yday
        for index in range(steps_per_day):
            hours = (index + 0.5) * step_hours
            # AR(1) noise with a correlation time of about an hour, whatever the step.
            keep = math.exp(-step_hours)
            noise = keep * noise + math.sqrt(1 - keep**2) * generator.gauss(0.0, 0.12)
            if peak_left == 0 and generator.random() < 0.04 * step_hours:
                peak_left = max(1, round(generator.uniform(0.25, 0.75) / step_hours))
                peak_kw = generator.uniform(1.0, 2.5)
            appliance = peak_kw if peak_left > 0 else 0.0
            peak_left = max(0, peak_left - 1)
            load.append(max(0.05, level * _profile_at(profile, hours) + noise + appliance))
            cloud_keep = math.exp(-step_hours / 0.5)
            cloud = cloud_keep * cloud + math.sqrt(1 - cloud_keep**2) * generator.gauss(0.0, 1.0)
            flicker = 0.25 * cloud if weather == "broken" else 0.05 * cloud
            pv.append(max(0.0, _clear_sky_kw(hours, day_of_year, pv_peak_kw) * height * (1 + flicker)))
    if missing:
        for series in (load, pv):
            for index in range(len(series)):
                if generator.random() < _MISSING_SHARE:
                    series[index] = None
        outage_steps = round(_OUTAGE_HOURS / step_hours)
        outage_start = generator.randrange(len(load) // 3, 2 * len(load) // 3)
        for index in range(outage_start, min(len(load), outage_start + outage_steps)):
            load[index] = None
            pv[index] = None
    return SiteHistory(start=start, step=step, load_kw=tuple(load), pv_kw=tuple(pv))
