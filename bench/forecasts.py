"""Accuracy and cost of the optimizer's load and PV forecasts on a held-out synthetic site history.

Five-week histories of ten synthetic sites (gridloop_simulators.site_history, seeds 1-10: daily and weekly
load shape, drifting level, noise, appliance peaks; PV bells under clear, broken and overcast weather that
lasts; 1 % of samples missing and a five-hour outage) are generated at each step length. The last seven days
of each are held out; each day is forecast at its midnight from the history before it (a day-ahead horizon),
by:

- ``seasonal``: optimizer.forecasts.forecast_from_history (the blend, with its fallbacks),
- ``yesterday`` and ``last_week``: each candidate alone (the blend with its weight forced to 1 or 0),
- ``persistence``: the last measured value, flat,
- ``mean``: the mean of the whole history, flat.

MAE (kW) and nMAE (MAE / mean measured value) over the held-out days, averaged over the ten sites, are
printed and written to bench/results/forecasts.json, with how many sites the forecast beat both baselines on
and the CPU time of one day-ahead forecast (the weights' replay included).

Then the history query (optimizer.repository.ForecastRepository.site_history) on a database of the run's own
(bench/infrastructure.py) holding 35 days of one site at a 10-second poll: a grid meter, a PV meter and a
battery (about 300,000 readings each, the meter rollups kept by telemetry-ingest's triggers). Wall time of
reading the whole 35 days at each step length (best and median of six), and of reading only the last hour.
Run: `uv run python bench/forecasts.py`.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from infrastructure import Infrastructure

from gridloop_common.contracts.forecasts import ForecastQuantity
from gridloop_common.db import migrate_database, open_pool
from gridloop_simulators.site_history import synthetic_site_history

# bench/optimizer.py is named like the optimizer package, and this script's folder is first on sys.path:
# drop it (infrastructure is imported already) so that "optimizer" is the package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from optimizer.forecasts import (  # noqa: E402
    StepSeries,
    forecast_error,
    forecast_from_history,
    mean_forecast,
    persistence_forecast,
    seasonal_weights,
)
from optimizer.repository import ForecastRepository  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "forecasts.json"

SEEDS = range(1, 11)
HISTORY_DAYS = 35
HELD_OUT_DAYS = 7
# A Monday, so the held-out week holds a weekend and the Monday after one.
START = datetime(2026, 5, 4, tzinfo=UTC)
STEP_MINUTES = (5, 15, 30, 60)
METHODS = ("seasonal", "yesterday", "last_week", "persistence", "mean")


def held_out_figures(history: StepSeries, quantity: ForecastQuantity) -> dict[str, dict[str, float | None]]:
    """Forecast each held-out day at its midnight; MAE and nMAE of every method over all of them."""
    steps_per_day = round(timedelta(days=1) / history.step)
    first_held_out = len(history.values) - HELD_OUT_DAYS * steps_per_day
    actual: list[float | None] = []
    predicted: dict[str, list[float]] = {method: [] for method in METHODS}
    for day in range(HELD_OUT_DAYS):
        first = first_held_out + day * steps_per_day
        origin = history.start + history.step * first
        # The forecast sees only what was measured before its origin.
        known = StepSeries(start=history.start, step=history.step, values=history.values[:first])
        actual.extend(history.values[first : first + steps_per_day])
        weights = seasonal_weights(known, origin=origin)
        for method, forced in (("seasonal", None), ("yesterday", 1.0), ("last_week", 0.0)):
            used = weights if forced is None else replace(weights, yesterday=forced)
            forecast = forecast_from_history(known, quantity=quantity, start=origin, steps=steps_per_day, weights=used)
            predicted[method].extend(forecast.values)
        predicted["persistence"].extend(persistence_forecast(known, start=origin, steps=steps_per_day))
        predicted["mean"].extend(mean_forecast(known, start=origin, steps=steps_per_day))
    figures: dict[str, dict[str, float | None]] = {}
    for method, values in predicted.items():
        error = forecast_error(actual, values)
        figures[method] = {"mae_kw": round(error.mae, 4), "nmae": None if error.nmae is None else round(error.nmae, 4)}
    return figures


def forecast_cpu_ms(history: StepSeries, quantity: ForecastQuantity) -> dict[str, float]:
    """CPU ms of one day-ahead forecast, best of five rounds of 20: with the weights' replay (in UTC and in
    Europe/London, where DST makes the replay convert each lag's time), and with weights reused."""
    steps_per_day = round(timedelta(days=1) / history.step)
    weights = seasonal_weights(history, origin=history.end)
    cases: dict[str, dict[str, Any]] = {
        "with_replay_utc": {},
        "with_replay_europe_london": {"time_zone": ZoneInfo("Europe/London")},
        "weights_reused": {"weights": weights},
    }
    figures: dict[str, float] = {}
    for name, options in cases.items():
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(20):
                forecast_from_history(history, quantity=quantity, start=history.end, steps=steps_per_day, **options)
            best = min(best, (time.process_time() - started) / 20)
        figures[name] = round(best * 1000, 3)
    return figures


QUERY_DAYS = 35
QUERY_END = datetime(2026, 6, 1, tzinfo=UTC)
QUERY_STEP_MINUTES = (5, 15, 30, 60, 7)  # 7: no rollup tiles it, so the readings are read


async def history_query_ms() -> dict[str, dict[str, float]]:
    """Wall ms of site_history over QUERY_DAYS days at each step, and of the last hour alone."""
    figures: dict[str, dict[str, float]] = {}
    async with Infrastructure() as run:
        await migrate_database(run.database_url, owner="telemetry-ingest", package="telemetry_ingest")
        await migrate_database(run.database_url, owner="optimizer", package="optimizer")
        async with open_pool(run.database_url, min_size=1, max_size=2) as pool:
            insert = (
                "INSERT INTO flux.mg_device_registry (name, type, site, metadata) VALUES ($1, $2, 'S', $3) RETURNING id"
            )
            meter = await pool.fetchval(insert, "grid", "meter", {})
            pv = await pool.fetchval(insert, "pv", "meter", {"meter_role": "pv"})
            battery = await pool.fetchval(insert, "battery", "bess", {"site_meter": "grid"})
            # A day per statement, as ingest commits batches: the rollup triggers refresh each day's periods.
            day_of_polls = (
                "generate_series($2::timestamptz, $2::timestamptz + interval '1 day' - interval '10 s',"
                " interval '10 s') AS polled (time)"
            )
            for day in range(QUERY_DAYS):
                first = QUERY_END - timedelta(days=QUERY_DAYS - day)
                for device, power in ((meter, "1 + random()"), (pv, "-random()")):
                    await pool.execute(
                        "INSERT INTO flux.mg_meter_readings (time, device_id, power_total_active)"
                        f" SELECT polled.time, $1, {power} FROM {day_of_polls}",
                        device,
                        first,
                    )
                await pool.execute(
                    "INSERT INTO flux.mg_bess_readings (time, device_id, soe, target_power)"
                    f" SELECT polled.time, $1, 50, random() - 0.5 FROM {day_of_polls}",
                    battery,
                    first,
                )
            await pool.execute("ANALYZE")
            repository = ForecastRepository(pool)
            windows = [
                (f"{minutes}min_{QUERY_DAYS}d", timedelta(minutes=minutes), None) for minutes in QUERY_STEP_MINUTES
            ]
            windows.append(("15min_last_hour", timedelta(minutes=15), 4))
            for name, step, steps in windows:
                timings = []
                for _ in range(6):
                    started = time.perf_counter()
                    await repository.site_history(
                        "S", end=QUERY_END, step=step, steps=steps or int(timedelta(days=QUERY_DAYS) / step)
                    )
                    timings.append(time.perf_counter() - started)
                figures[name] = {
                    "best_ms": round(min(timings) * 1000, 1),
                    "median_ms": round(statistics.median(timings) * 1000, 1),
                }
                best, median = figures[name]["best_ms"], figures[name]["median_ms"]
                print(f"history query {name:<16} best {best:>6.1f} ms  median {median:>6.1f} ms")
    return figures


def main() -> None:
    results: dict[str, Any] = {
        "generated_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seeds": list(SEEDS),
        "history_days": HISTORY_DAYS,
        "held_out_days": HELD_OUT_DAYS,
        "steps": {},
    }
    for minutes in STEP_MINUTES:
        step = timedelta(minutes=minutes)
        sites = [synthetic_site_history(start=START, days=HISTORY_DAYS, step=step, seed=seed) for seed in SEEDS]
        by_quantity: dict[str, Any] = {}
        for quantity in (ForecastQuantity.LOAD, ForecastQuantity.PV):
            histories = [
                StepSeries(
                    start=site.start,
                    step=step,
                    values=site.load_kw if quantity == ForecastQuantity.LOAD else site.pv_kw,
                )
                for site in sites
            ]
            per_site = [held_out_figures(history, quantity) for history in histories]
            figures = {
                method: {
                    "mae_kw": round(statistics.mean(site[method]["mae_kw"] or 0.0 for site in per_site), 4),
                    "nmae": round(statistics.mean(site[method]["nmae"] or 0.0 for site in per_site), 4),
                }
                for method in METHODS
            }
            wins = sum(
                site["seasonal"]["mae_kw"] < min(site["persistence"]["mae_kw"], site["mean"]["mae_kw"])  # type: ignore[operator]
                for site in per_site
            )
            cpu_ms = forecast_cpu_ms(histories[0], quantity)
            by_quantity[quantity.value] = {
                "errors_mean_over_sites": figures,
                "sites_where_seasonal_beats_both_baselines": wins,
                "day_ahead_forecast_cpu_ms": cpu_ms,
            }
            print(
                f"step {minutes:>2} min  {quantity.value:<4}  beats both baselines on {wins}/{len(per_site)} sites"
                f"  (one day-ahead forecast, ms CPU: {cpu_ms})"
            )
            for method, figure in figures.items():
                print(f"    {method:<12} MAE {figure['mae_kw']:.3f} kW   nMAE {figure['nmae']:.3f}")
        results["steps"][f"{minutes}min"] = by_quantity
    results["history_query"] = asyncio.run(history_query_ms())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
