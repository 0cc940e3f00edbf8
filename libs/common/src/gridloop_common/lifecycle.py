"""Run a service's main coroutine until SIGTERM or SIGINT, then give it a bounded time to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

__all__ = ["StartupError", "run_service"]

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """A dependency could not be reached or prepared at start-up; the message says which and why."""


def run_service(
    main: Callable[[], Coroutine[Any, Any, None]], *, program: str, shutdown_deadline_s: float = 20.0
) -> None:
    """Run ``main()``; on SIGTERM/SIGINT cancel it so its context managers close in order.

    If it has not finished ``shutdown_deadline_s`` after the signal, the process exits anyway so an
    orchestrator's grace period is never overrun. A ``StartupError`` ends the process with one line
    and exit code 1.
    """

    async def supervise() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        main_task = asyncio.create_task(main(), name="main")

        def on_signal(signal_number: int) -> None:
            logger.info("shutting down", extra={"signal": signal.Signals(signal_number).name})
            main_task.cancel()
            loop.call_later(shutdown_deadline_s, _force_exit, program)

        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, on_signal, signal_number)
        try:
            await main_task
        except asyncio.CancelledError:
            if task.cancelling():
                raise

    # What the imports built (modules, classes, models; ~75,000 objects in telemetry-ingest) lives as long as the
    # process. Frozen, the cycle collector's full collections stop walking it: in telemetry-ingest they took 0.33 s
    # of every 800,000 readings consumed, 0.05 s frozen.
    gc.collect()
    gc.freeze()
    try:
        # uvloop: a faster event loop for the broker, database and HTTP I/O of every service.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(supervise())
    except StartupError as error:
        logger.error("start-up failed", extra={"reason": str(error)})
        print(f"{program}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
    logger.info("stopped")


def _force_exit(program: str) -> None:
    logger.error("shutdown deadline passed; exiting with work still in flight", extra={"program": program})
    os._exit(1)
