"""Tariffs (docs/design.md §8): a request compiled into one local day's prices, and those prices at any step.

A tariff is a price for every wall-clock time of one local day: a base price with at most two windows at
another price (flat: none; time-of-use: the peak; shift-consumption: the increase and the reduction windows).
Times in a tariff are local wall-clock times in each site's own IANA time zone, so one tariff posted for
several sites means "16:00 to 21:00" at each of them. The offsets the request's datetimes carry are not used,
nor are the dates of its window fields: ``date`` gives the day, a window's start its time of day, and the
window's length is its stop minus its start as written, so a window whose stop falls on the next day
(22:00 to 06:00) wraps around midnight and applies to both ends of the day.

The day's prices are one value per step of real time from local midnight to the next local midnight, so a
day has 144 ten-minute steps, 138 on a spring-forward day (23 h) and 150 on a fall-back day (25 h):

- the skipped hour (02:00-03:00 in America/Toronto on 2026-03-08) has no step; a window, or part of one,
  inside it never applies;
- the repeated hour (01:00-02:00 in America/Toronto on 2026-11-01) has two sets of steps, and each is priced
  by its wall-clock time: a window covering 01:00-01:30 applies on both passes.

A step's price is the time-weighted mean over the step, so a window that starts or stops inside a step
(16:05 with 10-minute steps) prices that step in proportion, and the day's cost of a constant load is the
same at every step length.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gridloop_common.contracts import FlatTariffRequest, ShiftConsumptionTariffRequest, TimeOfUseTariffRequest

__all__ = [
    "DEFAULT_STEP",
    "MAX_DAYS_AHEAD",
    "InvalidTariff",
    "LocalDay",
    "PriceWindow",
    "Tariff",
    "TariffKind",
    "TariffRequest",
    "compile_tariff",
    "day_prices",
    "load_timezone",
    "local_day",
    "mean_price",
    "price_at",
]

DEFAULT_STEP: Final = timedelta(minutes=10)
# A tariff is for a day within a year from now: a tariff for a later day is a mistake, and date.max + 1 day
# would overflow.
MAX_DAYS_AHEAD: Final = 366
_DAY_SECONDS: Final = 86_400.0
# Offset transitions are found by probing the day at this interval and bisecting to the second; no zone
# changes its offset twice within 15 minutes.
_PROBE: Final = timedelta(minutes=15)
_RESOLUTION: Final = timedelta(seconds=1)
# The zone furthest behind UTC (Etc/GMT+12): a day has ended everywhere once it has ended there.
_LATEST_OFFSET: Final = timedelta(hours=12)

TariffRequest = FlatTariffRequest | TimeOfUseTariffRequest | ShiftConsumptionTariffRequest


class TariffKind(enum.StrEnum):
    """The three tariffs of the Grid Services API, named as optimizer.tariffs.kind stores them."""

    FLAT = "flat"
    TIME_OF_USE = "time_of_use"
    SHIFT_CONSUMPTION = "shift_consumption"


class InvalidTariff(ValueError):
    """A tariff, time zone or step that cannot be used; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PriceWindow:
    """``price`` from wall-clock ``start`` for ``length`` (at most a day; wraps around midnight)."""

    name: str
    start: time
    length: timedelta
    price: float

    @property
    def start_seconds(self) -> float:
        return self.start.hour * 3600 + self.start.minute * 60 + self.start.second + self.start.microsecond / 1e6

    def intervals(self) -> list[tuple[float, float]]:
        """The window as intervals of seconds since local midnight, split at midnight when it wraps."""
        begin = self.start_seconds
        end = begin + self.length.total_seconds()
        if end <= _DAY_SECONDS:
            return [(begin, end)]
        return [(begin, _DAY_SECONDS), (0.0, end - _DAY_SECONDS)]


@dataclass(frozen=True)
class Tariff:
    """One local day's prices for a scope of sites (``scope`` None: every site)."""

    kind: TariffKind
    day: date
    scope: tuple[str, ...] | None
    base_price: float
    windows: tuple[PriceWindow, ...] = ()
    request: Mapping[str, Any] = field(default_factory=dict)  # as received, kept for the record

    def applies_to(self, site: str) -> bool:
        return self.scope is None or site in self.scope

    def body(self) -> dict[str, Any]:
        """The definition as JSON (optimizer.tariffs.body); ``Tariff.from_body`` reads it back."""
        return {
            "base_price": self.base_price,
            "windows": [
                {
                    "name": window.name,
                    "start": window.start.isoformat(),
                    "seconds": window.length.total_seconds(),
                    "price": window.price,
                }
                for window in self.windows
            ],
            "request": dict(self.request),
        }

    @classmethod
    def from_body(cls, kind: str, day: date, scope: Sequence[str] | None, body: Mapping[str, Any]) -> Tariff:
        """The tariff stored as ``body`` (``Tariff.body``) for ``day`` and ``scope``."""
        windows = tuple(
            PriceWindow(
                name=str(window["name"]),
                start=time.fromisoformat(window["start"]),
                length=timedelta(seconds=float(window["seconds"])),
                price=float(window["price"]),
            )
            for window in body.get("windows", [])
        )
        return cls(
            kind=TariffKind(kind),
            day=day,
            scope=None if scope is None else tuple(scope),
            base_price=float(body["base_price"]),
            windows=windows,
            request=dict(body.get("request", {})),
        )


@dataclass(frozen=True)
class LocalDay:
    """A site's local day as instants: ``steps`` steps of ``step`` from ``start`` (local midnight) to ``end``."""

    day: date
    zone: ZoneInfo
    start: datetime  # UTC
    end: datetime  # UTC
    step: timedelta

    @property
    def steps(self) -> int:
        return (self.end - self.start) // self.step

    def step_starts(self) -> list[datetime]:
        """The UTC instant each step starts at."""
        return [self.start + index * self.step for index in range(self.steps)]


def load_timezone(name: str, *, field: str = "timezone") -> ZoneInfo:
    """The IANA time zone ``name``; refused naming ``field`` when there is none of that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidTariff(field, f"{name!r} is not an IANA time zone name") from error


def compile_tariff(request: TariffRequest, *, now: datetime, scope: Sequence[str] | None = None) -> Tariff:
    """The tariff a request describes, for the request's ``date`` and ``scope`` (None: every site).

    Refused with the field named: a day that has ended everywhere or is more than MAX_DAYS_AHEAD away, a
    window that is empty or longer than a day in wall-clock time, the two shift-consumption windows
    overlapping, or a price that overflows. ``now`` is the present, for the date check.
    """
    day = request.date.date()
    earliest = (now.astimezone(UTC) - _LATEST_OFFSET).date()
    if day < earliest:
        raise InvalidTariff("date", f"{day.isoformat()} has already ended in every time zone")
    if (day - earliest).days > MAX_DAYS_AHEAD:
        raise InvalidTariff("date", f"must be within {MAX_DAYS_AHEAD} days from today")
    sites = _scope(scope)
    received = request.model_dump(mode="json")
    if isinstance(request, FlatTariffRequest):
        return Tariff(TariffKind.FLAT, day, sites, request.flat_price, (), received)
    if isinstance(request, TimeOfUseTariffRequest):
        peak = _window("peak", request.start_peak, request.stop_peak, request.on_peak_value, "stop_peak")
        return Tariff(TariffKind.TIME_OF_USE, day, sites, request.off_peak_value, (peak,), received)
    increase_price = _check_price(request.flat_price * request.increase_multiplier, "increase_multiplier")
    reduction_price = _check_price(request.flat_price * request.reduction_multiplier, "reduction_multiplier")
    increase = _window("increase", request.start_increase, request.stop_increase, increase_price, "stop_increase")
    reduction = _window("reduction", request.start_reduction, request.stop_reduction, reduction_price, "stop_reduction")
    # The Grid Services API applied the reduction after the increase, so an overlap silently took the
    # reduction's price: an order nobody wrote down. Refused instead.
    if _overlap(increase, reduction):
        raise InvalidTariff("start_reduction", "the reduction window overlaps the increase window")
    return Tariff(TariffKind.SHIFT_CONSUMPTION, day, sites, request.flat_price, (increase, reduction), received)


def price_at(tariff: Tariff, wall_clock: time) -> float:
    """The tariff's price at a local wall-clock time of its day."""
    seconds = wall_clock.hour * 3600 + wall_clock.minute * 60 + wall_clock.second + wall_clock.microsecond / 1e6
    return next(price for low, high, price in _profile(tariff) if low <= seconds < high)


def local_day(day: date, timezone: str | ZoneInfo, *, step: timedelta = DEFAULT_STEP) -> LocalDay:
    """``day`` in ``timezone``, from local midnight to the next, cut into steps of ``step`` of real time.

    Refused naming ``step`` when it is not positive or does not divide the day (60-minute steps on a
    Lord Howe Island DST day of 23.5 h; any step dividing an hour fits every other zone's days).
    """
    zone = timezone if isinstance(timezone, ZoneInfo) else load_timezone(timezone)
    if step <= timedelta(0):
        raise InvalidTariff("step", "must be positive")
    # fold=0: a midnight skipped by a spring-forward at 24:00 maps to the instant the day's clock starts.
    start = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC)
    if (end - start) % step:
        raise InvalidTariff(
            "step", f"{step} does not divide {day.isoformat()} in {zone.key}, which lasts {end - start}"
        )
    return LocalDay(day=day, zone=zone, start=start, end=end, step=step)


def day_prices(tariff: Tariff, timezone: str | ZoneInfo, *, step: timedelta = DEFAULT_STEP) -> list[float]:
    """The tariff's price for each step of its day in ``timezone`` (144 ten-minute steps on most days).

    Each step's price is the mean over the step's real time of the price at the wall-clock time then, so a
    step in the repeated hour of a fall-back day is priced by that hour's wall-clock times (module docstring).
    """
    days = local_day(tariff.day, timezone, step=step)
    profile = _profile(tariff)
    segments = _wall_clock_segments(days)
    return [_interval_mean(profile, segments, begin, begin + step) for begin in days.step_starts()]


def mean_price(tariff: Tariff, timezone: str | ZoneInfo, start: datetime, end: datetime) -> float:
    """The tariff's mean price over the real-time interval [start, end), which must lie within its local day.

    For steps not aligned on the local day (an MPC horizon starting now): a horizon that crosses local midnight
    takes each part from the tariff of its own day.
    """
    days = local_day(tariff.day, timezone, step=_RESOLUTION)
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidTariff("start", "must be an aware datetime")
    if not days.start <= start < end <= days.end:
        raise InvalidTariff("start", f"the interval must lie within {tariff.day.isoformat()} in {days.zone.key}")
    return _interval_mean(_profile(tariff), _wall_clock_segments(days), start, end)


def _interval_mean(
    profile: list[tuple[float, float, float]],
    segments: list[tuple[datetime, datetime, float]],
    start: datetime,
    end: datetime,
) -> float:
    weighted = 0.0
    for segment_start, segment_end, wall_start in segments:
        begin, finish = max(start, segment_start), min(end, segment_end)
        if begin >= finish:
            continue
        wall_begin = wall_start + (begin - segment_start).total_seconds()
        wall_end = wall_begin + (finish - begin).total_seconds()
        weighted += _mean_price(profile, wall_begin, wall_end) * (wall_end - wall_begin)
    return weighted / (end - start).total_seconds()


def _scope(scope: Sequence[str] | None) -> tuple[str, ...] | None:
    if scope is None:
        return None
    sites = tuple(sorted(set(scope)))
    if not sites:
        raise InvalidTariff("site", "names no site; leave it out for every site")
    for site in sites:
        if not site:
            raise InvalidTariff("site", "a site name is empty")
    return sites


def _check_price(price: float, field: str) -> float:
    if not math.isfinite(price):
        raise InvalidTariff(field, "gives a price too large to represent")
    return price


def _window(name: str, start: datetime, stop: datetime, price: float, stop_field: str) -> PriceWindow:
    # Wall-clock length as written: the offsets are not used (module docstring), so neither is their difference.
    length = stop.replace(tzinfo=None) - start.replace(tzinfo=None)
    if length <= timedelta(0):
        raise InvalidTariff(stop_field, "must be after the window's start in wall-clock time")
    if length > timedelta(days=1):
        raise InvalidTariff(stop_field, "the window is longer than a day")
    return PriceWindow(name=name, start=start.time().replace(tzinfo=None), length=length, price=price)


def _overlap(first: PriceWindow, second: PriceWindow) -> bool:
    return any(
        begin < other_end and other_begin < end
        for begin, end in first.intervals()
        for other_begin, other_end in second.intervals()
    )


def _profile(tariff: Tariff) -> list[tuple[float, float, float]]:
    """The day as (start, end, price) in seconds since local midnight, covering [0, 86400) in order."""
    cuts = {0.0, _DAY_SECONDS}
    for window in tariff.windows:
        for begin, end in window.intervals():
            cuts.update((begin, end))
    points = sorted(cuts)
    profile = []
    for begin, end in itertools.pairwise(points):
        middle = (begin + end) / 2
        price = tariff.base_price
        for window in tariff.windows:
            if any(low <= middle < high for low, high in window.intervals()):
                price = window.price
        profile.append((begin, end, price))
    return profile


def _mean_price(profile: list[tuple[float, float, float]], begin: float, end: float) -> float:
    """The mean of the daily price profile over [begin, end) seconds, repeating it past either midnight."""
    total = 0.0
    period = math.floor(begin / _DAY_SECONDS)
    while period * _DAY_SECONDS < end:
        offset = period * _DAY_SECONDS
        for low, high, price in profile:
            overlap = min(end, high + offset) - max(begin, low + offset)
            if overlap > 0:
                total += overlap * price
        period += 1
    return total / (end - begin)


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta | None:
    return instant.astimezone(zone).utcoffset()


def _wall_clock_segments(days: LocalDay) -> list[tuple[datetime, datetime, float]]:
    """The day's spans of constant UTC offset: (start, end) in UTC and the wall clock at the start, as seconds
    since local midnight. One span on most days; two on a DST day, the second starting an hour earlier
    (fall-back: the repeated hour) or later (spring-forward: the skipped hour) on the wall clock."""
    zone = days.zone
    boundaries = [days.start]
    probe = days.start
    offset = _offset(probe, zone)
    while probe < days.end:
        following = min(probe + _PROBE, days.end)
        # A change exactly at the day's end belongs to the next day.
        last = following if following < days.end else following - _RESOLUTION
        if last > probe and _offset(last, zone) != offset:
            low, high = probe, last  # offset(low) is the old offset, offset(high) the new one
            while high - low > _RESOLUTION:
                middle = low + timedelta(seconds=math.floor((high - low).total_seconds() / 2))
                if _offset(middle, zone) == offset:
                    low = middle
                else:
                    high = middle
            boundaries.append(high)
            offset = _offset(high, zone)
            probe = high
            continue
        probe = following
    boundaries.append(days.end)
    midnight = datetime.combine(days.day, time())
    segments = []
    for begin, end in itertools.pairwise(boundaries):
        wall = begin.astimezone(zone).replace(tzinfo=None)
        segments.append((begin, end, (wall - midnight).total_seconds()))
    return segments
