"""A clock that moves only when a test moves it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["FakeClock", "FakeTimeEventLoop", "run_on_fake_time"]


class FakeClock:
    """A controllable ``Clock``: ``advance()`` moves both readings and wakes the sleepers whose time has come.

    ``set()`` puts the wall clock at a given moment (forwards or backwards, as an operator or NTP may) and
    leaves the monotonic reading alone, as the system's monotonic clock is left alone.
    """

    def __init__(self, start: datetime | None = None, *, monotonic_start: float = 1000.0) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)
        self._monotonic = monotonic_start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float) -> None:
        wake_at = self._monotonic + seconds
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((wake_at, future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and release every sleeper that is due."""
        if seconds < 0:
            raise ValueError("time only advances; use set() to put the wall clock back")
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds
        due = [entry for entry in self._sleepers if entry[0] <= self._monotonic]
        self._sleepers = [entry for entry in self._sleepers if entry[0] > self._monotonic]
        for _, future in due:
            if not future.done():
                future.set_result(None)

    def set(self, moment: datetime) -> None:
        """Put the wall clock at ``moment`` (timezone-aware); the monotonic clock and the sleepers are not moved."""
        if moment.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware moment")
        self._now = moment.astimezone(UTC)


class FakeTimeEventLoop(asyncio.SelectorEventLoop):
    """An event loop whose own clock is a ``FakeClock``'s monotonic reading.

    For code that waits on the loop's timers (``loop.call_at``, ``asyncio.timeout_at``, ``asyncio.sleep``),
    which a ``FakeClock`` handed to it cannot wake: on this loop those timers fire when the test advances the
    clock, and only then, while sockets still work in real time. Waits that nothing advances never end, so a
    test drives every wait it starts. Run it with ``asyncio.Runner(loop_factory=lambda: FakeTimeEventLoop(clock))``.
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def time(self) -> float:
        return self.clock.monotonic()


def run_on_fake_time(main: Callable[[FakeClock], Coroutine[Any, Any, T]], clock: FakeClock | None = None) -> T:
    """Run ``main(clock)`` to the end on a ``FakeTimeEventLoop`` of ``clock`` (a new FakeClock by default).

    What completes there completed without waiting for any of the loop's timers, unless the test moved the
    clock: a wait that should not happen hangs instead, until pytest's timeout fails the test.
    """
    clock = clock or FakeClock()
    with asyncio.Runner(loop_factory=lambda: FakeTimeEventLoop(clock)) as runner:
        return runner.run(main(clock))
