"""The Clock protocol's real and fake implementations."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.testing import FakeClock, run_on_fake_time


def test_the_system_clock_tells_aware_utc_time_and_a_monotonic_reading() -> None:
    clock: Clock = SystemClock()
    before = clock.monotonic()
    now = clock.now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert clock.monotonic() >= before


async def test_advance_moves_both_readings_and_wakes_only_the_sleepers_due() -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    started = clock.monotonic()
    short = asyncio.ensure_future(clock.sleep(5))
    long = asyncio.ensure_future(clock.sleep(10))
    await asyncio.sleep(0)
    clock.advance(5)
    await asyncio.sleep(0)
    assert short.done() and not long.done()
    assert clock.now() == datetime(2026, 3, 1, 0, 0, 5, tzinfo=UTC)
    assert clock.monotonic() == started + 5
    clock.advance(5)
    await asyncio.wait_for(long, 1)
    with pytest.raises(ValueError, match="only advances"):
        clock.advance(-1)


async def test_set_moves_the_wall_clock_alone() -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    started = clock.monotonic()
    sleeper = asyncio.ensure_future(clock.sleep(1))
    await asyncio.sleep(0)
    clock.set(datetime(2026, 2, 1, tzinfo=UTC))  # stepped back, as NTP or an operator may
    await asyncio.sleep(0)
    assert clock.now() == datetime(2026, 2, 1, tzinfo=UTC)
    assert clock.monotonic() == started and not sleeper.done()
    clock.set(datetime(2027, 1, 1, tzinfo=UTC))
    await asyncio.sleep(0)
    assert not sleeper.done()  # sleeping is measured on the monotonic reading
    clock.advance(1)
    await asyncio.wait_for(sleeper, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(datetime(2026, 1, 1))


def test_the_fake_time_loop_fires_its_timers_when_the_clock_is_advanced_and_not_before() -> None:
    async def scenario(clock: FakeClock) -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_later(30, lambda: fired.append(loop.time()))
        waited = asyncio.ensure_future(asyncio.sleep(60))
        for _ in range(3):
            await asyncio.sleep(0)
        assert fired == [] and not waited.done()
        clock.advance(30)
        for _ in range(3):
            await asyncio.sleep(0)
        assert fired == [clock.monotonic()] and not waited.done()
        clock.advance(30)
        await waited

    run_on_fake_time(scenario)
