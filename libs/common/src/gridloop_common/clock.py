"""Time as an input: the one ``Clock`` protocol, the system clock, and nothing else.

Every service reads time through a ``Clock`` handed down from its composition root (``app.py``), so a
test can hold time still or move it (``gridloop_common.testing.FakeClock``). Decisions do not take a
clock: they take the moment as an argument (``now``) from code that read it here.

Two readings, for two uses: ``now()`` is the wall clock (UTC-aware) for timestamps, validity windows and
anything compared with times from outside the process; ``monotonic()`` is for measuring intervals inside
the process (rate limits, back-off, heartbeats), and never goes backwards when the wall clock is set.

Code that only waits (``asyncio.sleep``, ``asyncio.timeout``, ``loop.call_at``) keeps the event loop's
own timers: a fake clock cannot wake them, and tests drive that code with events instead.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """A source of time that tests can control."""

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences between readings mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clocks: the system's wall clock and its monotonic clock."""

    def now(self) -> datetime:
        return datetime.now(tz=UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
