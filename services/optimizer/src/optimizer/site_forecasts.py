"""A site's load and PV forecasts for a horizon, ready for a plan: history read, forecast, external merged.

The one call a planner makes (``site_forecasts``); the method is optimizer.forecasts', the SQL
optimizer.repository's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

from gridloop_common.contracts.forecasts import ForecastQuantity
from optimizer.forecasts import PROFILE_DAYS, Forecast, SiteLocation, forecast_from_history, merge_external
from optimizer.repository import ForecastRepository, SiteHistory

__all__ = ["HISTORY_DAYS", "SiteForecasts", "site_forecasts"]

# Enough for the daily profile (PROFILE_DAYS) and a week's replay behind the last-week lags.
HISTORY_DAYS: Final = PROFILE_DAYS + 7


@dataclass(frozen=True)
class SiteForecasts:
    """Load and PV forecasts of one site over one horizon, and the history they came from."""

    load: Forecast
    pv: Forecast
    history: SiteHistory


async def site_forecasts(
    forecasts: ForecastRepository,
    site: str,
    *,
    start: datetime,
    step: timedelta,
    steps: int,
    now: datetime,
    time_zone: tzinfo = UTC,
    location: SiteLocation | None = None,
    history_days: int = HISTORY_DAYS,
) -> SiteForecasts:
    """Forecast ``steps`` steps of ``step`` from ``start``; external forecasts unexpired at ``now`` win."""
    history_steps = math.ceil(timedelta(days=history_days) / step)
    history = await forecasts.site_history(site, end=start, step=step, steps=history_steps)
    end = start + step * steps
    merged: dict[ForecastQuantity, Forecast] = {}
    for quantity, series in ((ForecastQuantity.LOAD, history.load), (ForecastQuantity.PV, history.pv)):
        own = forecast_from_history(
            series, quantity=quantity, start=start, steps=steps, time_zone=time_zone, location=location
        )
        external = await forecasts.live_external(site, quantity, now=now, start=start, end=end)
        merged[quantity] = merge_external(own, external, now=now)
    return SiteForecasts(load=merged[ForecastQuantity.LOAD], pv=merged[ForecastQuantity.PV], history=history)
