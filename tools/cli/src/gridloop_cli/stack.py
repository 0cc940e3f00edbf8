"""`gridloop up`: every service and simulator as a child process, with readable prefixed logs.

A child that dies is reported and restarted with backoff; Ctrl-C or SIGTERM stops them all
(SIGTERM first, then SIGKILL for any still running after the grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from gridloop_cli import demo, keys
from gridloop_cli.services import SERVICES, SIMULATORS, ServiceProcess
from gridloop_common.clock import SystemClock

__all__ = ["Supervisor", "format_line"]

_COLOURS = ("36", "33", "35", "32", "34", "91", "96", "93")
_LEVEL_WIDTH = 5


def format_line(raw: str) -> str:
    """Render one JSON log line as `HH:MM:SS level message key=value ...`; other lines pass through."""
    try:
        record = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(record, dict) or "message" not in record:
        return raw
    clock = str(record.pop("ts", ""))[11:19]
    level = str(record.pop("level", "")).ljust(_LEVEL_WIDTH)
    message = record.pop("message")
    for key in ("service", "logger"):
        record.pop(key, None)
    exception = record.pop("exception", None)
    extras = " ".join(f"{key}={value}" for key, value in record.items())
    line = f"{clock} {level} {message}" + (f"  {extras}" if extras else "")
    if exception:
        line += "\n" + str(exception)
    return line


@dataclass
class _Child:
    spec: ServiceProcess
    colour: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    """Starts, watches, restarts and stops the children of `gridloop up`."""

    def __init__(
        self,
        *,
        environment: Mapping[str, str],
        with_simulators: bool = True,
        grace_period_s: float = 25.0,
        processes: Sequence[ServiceProcess] | None = None,
    ) -> None:
        specs = list(processes) if processes is not None else [*SERVICES, *(SIMULATORS if with_simulators else ())]
        self._children = [_Child(spec, _COLOURS[index % len(_COLOURS)]) for index, spec in enumerate(specs)]
        self._environment = dict(environment)
        secrets = self._environment.get("GRIDLOOP_WEBHOOK_SECRET", "").replace(",", " ").split()
        self._environment.setdefault("GRIDLOOP_WEBHOOK_SECRET_FIRST", secrets[0] if secrets else "")
        self._grace_period_s = grace_period_s
        self._with_simulators = with_simulators and processes is None
        self._stopping = False
        self._width = max(len(spec.name) for spec in specs)
        self._colour = sys.stdout.isatty()

    def _print(self, child: _Child | None, text: str) -> None:
        name = child.spec.name if child else "gridloop"
        label = name.rjust(self._width)
        if self._colour:
            colour = child.colour if child else "1"
            label = f"\x1b[{colour}m{label}\x1b[0m"
        for line in text.splitlines() or [""]:
            print(f"{label} | {line}", flush=True)

    async def _pump(self, child: _Child, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self._print(child, format_line(raw.decode(errors="replace").rstrip()))

    async def _start(self, child: _Child) -> None:
        command = [part.format_map(self._environment) if "{" in part else part for part in child.spec.command]
        child.process = await asyncio.create_subprocess_exec(
            *command,
            env=self._environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        child.started_at = time.monotonic()
        assert child.process.stdout is not None and child.process.stderr is not None
        child.tasks = [
            asyncio.create_task(self._pump(child, child.process.stdout)),
            asyncio.create_task(self._pump(child, child.process.stderr)),
        ]

    async def _watch(self, child: _Child) -> None:
        backoff = 1.0
        while not self._stopping:
            await self._start(child)
            assert child.process is not None
            code = await child.process.wait()
            await asyncio.gather(*child.tasks, return_exceptions=True)
            if self._stopping:
                return
            if time.monotonic() - child.started_at > 60:
                backoff = 1.0
            child.restarts += 1
            self._print(child, f"exited with code {code}; restart #{child.restarts} in {backoff:.0f} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _wait_for_simulators(self, *, timeout_s: float) -> None:
        ports = [
            int(part)
            for child in self._children
            if child.spec.port is None
            for flag, part in zip(child.spec.command, child.spec.command[1:], strict=False)
            if flag == "--port"
        ]
        deadline = time.monotonic() + timeout_s
        for port in ports:
            while time.monotonic() < deadline:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                break

    async def wait_until_ready(self, *, timeout_s: float) -> float | None:
        """Seconds until every service's /readyz answered 200, or None if ``timeout_s`` passed first."""
        started = time.monotonic()
        pending = {child.spec.name: child.spec.port for child in self._children if child.spec.port}
        async with httpx.AsyncClient(timeout=1.0) as client:
            while pending and time.monotonic() - started < timeout_s:
                for name, port in list(pending.items()):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            del pending[name]
                if pending:
                    await asyncio.sleep(0.25)
        return None if pending else time.monotonic() - started

    async def stop(self) -> None:
        """SIGTERM every child, wait for the grace period, then SIGKILL the rest."""
        self._stopping = True
        running = [child for child in self._children if child.process and child.process.returncode is None]
        self._print(None, f"stopping {len(running)} processes")
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(child.process.wait()) for child in running if child.process]
        still_running: set[asyncio.Future[int]] = set()
        if waits:
            _, still_running = await asyncio.wait(waits, timeout=self._grace_period_s)
        for child in running:
            if child.process and child.process.returncode is None:
                self._print(child, "did not stop in time; killing")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
        if still_running:
            await asyncio.wait(still_running, timeout=5)

    async def _post_demo_tariff(self) -> None:
        """Give the simulated battery a plan to follow (gridloop_cli.demo)."""
        secret = self._environment.get("GRIDLOOP_JWT_SECRET")
        if not secret:
            self._print(None, "demo: GRIDLOOP_JWT_SECRET is not set; no tariff posted")
            return
        port = self._environment.get("GRIDLOOP_GATEWAY_PORT", "8080")
        key = keys.make_key(secret=secret, role="grid_operator", valid_days=1)
        self._print(None, await demo.post_demo_tariff(f"http://127.0.0.1:{port}", key=key, clock=SystemClock()))

    async def run(self, *, ready_timeout_s: float = 60.0, exit_when_ready: bool = False) -> int:
        """Run until a signal arrives (or, with ``exit_when_ready``, until all services are ready)."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop_requested.set)
        # Simulators first, so the services find their devices and upstream at their first attempt.
        simulators = [child for child in self._children if child.spec.port is None]
        watchers = [asyncio.create_task(self._watch(child)) for child in simulators]
        await self._wait_for_simulators(timeout_s=10.0)
        watchers += [asyncio.create_task(self._watch(child)) for child in self._children if child not in simulators]
        elapsed = await self.wait_until_ready(timeout_s=ready_timeout_s)
        if elapsed is None:
            self._print(None, f"not every service became ready within {ready_timeout_s:.0f} s; see the logs above")
            outcome = 1
        else:
            self._print(None, f"all {len(SERVICES)} services ready in {elapsed:.1f} s")
            self._print(
                None,
                "gateway http://127.0.0.1:8080  flux api http://127.0.0.1:8081/rest/v1/  "
                "upstream sim http://127.0.0.1:8090  status: `gridloop status`  stop: Ctrl-C",
            )
            outcome = 0
            if self._with_simulators and not exit_when_ready:
                # A task, so Ctrl-C is not held up while the demo waits for the battery's first reading.
                watchers.append(asyncio.create_task(self._post_demo_tariff()))
        if not exit_when_ready:
            await stop_requested.wait()
        await self.stop()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return outcome
