"""Benchmark of the telemetry path: a 10 M-reading fill, queue-to-rows throughput beside bare COPY, API latency.

Part 1 (fill) COPYs generated meter readings of 1,000 devices into flux.mg_meter_readings until it holds
``--rows`` readings (10 M by default: 10,000 a device, one every ~259 s over 30 days). The data is encoded
as binary COPY with numpy (the server-side fast path; client encoding is not what is measured), one COPY
per 30-minute period of the fleet (the rollup trigger's advisory locks limit how many (device, period)
pairs one statement may touch), on ``--fill-connections`` connections, stopping at ``--fill-limit-s``.
The rollup trigger stays on, so the fill also builds the 5- and 30-minute rollups the RPC serves; the
realtime NOTIFY trigger is off during the fill, because announcing 10 M historical rows would queue
gigabytes of notifications (it is on again for part 2).

Part 2 (ingest) publishes ``--e2e-readings`` readings (the next cycles of the same 1,000 devices, in
batches of ``--batch`` per message, as the device agent does: persistent, confirmed) to gridloop.telemetry
for a ``gridloop-ingest`` process (pinned to core 0; this process runs on core 1) to consume, twice a round:
first from a filled queue (the process is stopped with SIGSTOP while every message is published and
confirmed; the clock starts at SIGCONT), which is queue -> committed rows alone, as the aim states it;
then with publishing alongside consuming (the clock starts at the first publish), where the publisher and
the broker's intake compete with ingest for the 2 cores. Each measures -> all rows committed, and ->
rollups caught up (no touched period left). The rows are counted (count(*) over the part's time window) only
once publishing is done and the queue has no ready message left (a passive declare, every 20 ms): counting
200,000 rows costs the server ~20 ms, and polling it throughout competed with what is measured.
gridloop-ingest runs with its default GRIDLOOP_ROLLUP_SETTLE_S (30 s): rollups are derived data,
recomputed after the burst as in production (Flux's continuous aggregates were refreshed by a policy,
not by the insert). The next part starts only once they caught up, and PostgreSQL's CPU is reported
both until the rows committed and until the rollups caught up. ``--rollup-settle-s 0`` makes the refresher
work every second during the round instead, competing with ingest: the worst case for the ratio.
After each part it COPYs the same rows into a fresh copy of the readings table (same columns, defaults,
unique key and indexes; no triggers) with asyncpg's copy_records_to_table, in 10,000-row and in --batch-row
transactions. Rounds are interleaved (``--rounds``, 3 by default) and best and median are reported.

After the fill, ``gridloop-ingest reorder`` rewrites every closed day in (device_id, time) order, as the
service does once a day for the day before (migration 0012), and the time it takes is reported.

Part 3 (api) measures p50/p99 of sequential HTTP requests to the running gridloop-ingest: the last 100
readings of one device, one day of one device, and POST /rest/v1/rpc/get_meter_readings_30m over 30 days
of 50 meters (and, without an aim, over 1 day), each bounded by a request count and a time limit. The
first two are measured twice: with httpx, and with a bare HTTP/1.1 client (RawHttpClient) that parses
nothing but the status, the headers and Content-Length, so that the client's own parsing (~3 ms for a
day's 324 KiB in httpx) is not counted as the API's; failed
requests (e.g. the API's 30 s statement timeout) count with their latency and status. It starts with a
CHECKPOINT (the fill's dirty buffers written back first), and each target with 10 warm-up requests, the first
of which (on a cold cache) is reported on its own. The 30-day RPC's SQL function is also timed once on its own,
without the timeout and without JSON, computing all its rows. ``--skip-ingest`` leaves part 2 out.

Each API target's line gives the share of CPU time the hypervisor stole from this virtual machine while it ran
(/proc/stat steal; 15-20% in some seconds here): a request waits for a core then, and its latency says so.

Memory: part 3 reports shared_buffers, how much of the biggest relations is in the OS page cache (fincore,
where the server's files are readable), and any DAMON scheme of the kernel that pages idle memory out. On
this project's sandbox machines one does: page cache unread for 60 s is dropped (up to 128 MiB/s), so with
the default shared_buffers (128 MB) the API reads a 10 M-reading table mostly from disk, whatever memory is
free. ``--shared-buffers 6GB`` (25% of RAM) runs the whole bench on a private PostgreSQL server (initdb'd in /var/tmp,
other settings copied from the machine's server, removed at the end) whose shared buffers (mapped memory,
which that scheme leaves alone) can hold the readings, as a production server sized for its data would.

Everything runs in a private database and RabbitMQ vhost that are removed at the end, on 127.0.0.1 only.
Figures are printed and written to bench/results/telemetry.json. Run: `uv run python bench/telemetry.py`
(`--help` for sizes; e.g. `--rows 1000000` for a quick run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiormq
import asyncpg
import httpx
import numpy as np
from infrastructure import SERVER, Infrastructure, PrivateServer, free_port

from gridloop_cli.keys import make_key
from gridloop_common.contracts import MeterReading, routing

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "telemetry.json"
BIN = Path(sys.executable).parent
JWT_SECRET = "bench-secret-with-at-least-thirty-two-characters"
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# The meter table's measurement columns, in the order the ingest repository writes them.
REAL_COLUMNS = tuple(
    name for name in MeterReading.model_fields if name not in ("id", "time", "device_id", "created_at")
)
COLUMNS = ("time", "device_id", *REAL_COLUMNS)
COUNTERS = tuple(name for name in REAL_COLUMNS if name.startswith("energy_"))
# Decimals of every generated value: a meter's register resolution (e.g. 0.001 kWh, 0.001 kW).
REGISTER_DECIMALS = 3
# Nominal value and spread of the instantaneous columns.
NOMINAL = {
    "frequency": (50.0, 0.05),
    "voltage_line_average": (230.0, 3.0),
    "current_phase_a": (20.0, 8.0),
    "current_phase_b": (20.0, 8.0),
    "current_phase_c": (20.0, 8.0),
    "current_phase_average": (20.0, 8.0),
    "power_phase_a_active": (4.0, 2.0),
    "power_phase_b_active": (4.0, 2.0),
    "power_phase_c_active": (4.0, 2.0),
    "power_total_active": (12.0, 6.0),
    "power_total_reactive": (1.0, 0.5),
    "power_total_apparent": (12.5, 6.0),
    "power_factor_total": (0.95, 0.03),
}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else command


def broker_pids() -> list[int]:
    """The local RabbitMQ node's Erlang VM (beam.smp), to report the broker's CPU; empty if not found."""
    found = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from procfs (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat "cpu": user nice system idle iowait irq softirq steal ...)."""
    return [int(part) for part in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def steal_fraction(before: list[int], after: list[int]) -> float:
    """Share of the CPU time between two ``cpu_times()`` that the hypervisor gave to others (steal).

    On a virtual machine whose host is busy, a request can wait for a core the guest thinks is running it: that
    wait shows up here, and in the latency tail, not in any process's CPU time.
    """
    return (after[7] - before[7]) / max(1, sum(after) - sum(before))


def idle_fraction(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time that was idle over ``seconds`` (the protocol asks for >= 90%)."""

    def sample() -> tuple[int, int]:
        values = cpu_times()
        return values[3] + values[4], sum(values)

    idle_before, total_before = sample()
    time.sleep(seconds)
    idle_after, total_after = sample()
    return (idle_after - idle_before) / max(1, total_after - total_before)


def bench_infrastructure(server: str = SERVER) -> Infrastructure:
    return Infrastructure({"GRIDLOOP_JWT_SECRET": JWT_SECRET, "GRIDLOOP_TELEMETRY_UPLOAD": "off"}, server=server)


@contextlib.asynccontextmanager
async def process(command: list[str], environment: dict[str, str], *, ready_url: str) -> AsyncIterator[int]:
    """Run ``command`` until the block ends (SIGTERM); yields its pid once ``ready_url`` answers."""
    log = tempfile.TemporaryFile()
    child = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            deadline = time.monotonic() + 60
            while True:
                if child.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{command[-1]} exited: {log.read().decode()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(ready_url)
                    if response.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command} not ready")
                await asyncio.sleep(0.2)
        yield child.pid
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(25)
        except subprocess.TimeoutExpired:
            child.kill()


@dataclass(frozen=True)
class Fleet:
    """The generated meters: ``devices`` ids, one reading each per ``interval_s``, cycle 0 at ``start``."""

    devices: list[uuid.UUID]
    start: datetime
    interval_s: int
    seed: int = 7

    def cycle_time(self, cycle: int) -> datetime:
        return self.start + timedelta(seconds=self.interval_s * cycle)

    def values(self, first_cycle: int, cycles: int) -> dict[str, np.ndarray]:
        """Arrays of shape (cycles, devices), the same for the same cycles whatever the chunking.

        Values carry the resolution a meter's registers give (SunSpec: an integer and a power-of-ten scale
        factor), here 3 decimals, so the JSON holds what the device agent would publish (``230.123``), not
        the 17-digit expansion of a float32 (``230.1230010986328``). COPY stores them as real either way.
        """
        count = len(self.devices)
        steps = np.arange(first_cycle, first_cycle + cycles, dtype=np.float64)[:, None]
        columns: dict[str, np.ndarray] = {}
        rates = np.random.default_rng(self.seed).uniform(0.01, 0.5, size=(len(COUNTERS), count))
        for index, name in enumerate(COUNTERS):
            # Cumulative counters: a per-device base and rate, so values rise monotonically.
            columns[name] = np.round(100.0 + 10.0 * index + rates[index] * steps, REGISTER_DECIMALS)
        noise = np.random.default_rng([self.seed, first_cycle, cycles])
        for name, (nominal, spread) in NOMINAL.items():
            columns[name] = np.round(nominal + spread * noise.standard_normal(size=(cycles, count)), REGISTER_DECIMALS)
        return columns

    def copy_chunk(self, first_cycle: int, cycles: int, devices: slice = slice(None)) -> bytes:
        """Binary COPY data (header, rows in cycle then device order, trailer) for the given cycles and devices."""
        chosen = self.devices[devices]
        count = len(chosen)
        layout = [
            ("fields", ">i2"),
            ("time_length", ">i4"),
            ("time", ">i8"),
            ("device_length", ">i4"),
            ("device", "V16"),
        ]
        for index in range(len(REAL_COLUMNS)):
            layout += [(f"length_{index}", ">i4"), (f"value_{index}", ">f4")]
        rows = np.empty(cycles * count, dtype=np.dtype(layout))
        rows["fields"] = len(COLUMNS)
        rows["time_length"] = 8
        rows["device_length"] = 16
        base_us = int((self.start - PG_EPOCH).total_seconds()) * 1_000_000
        cycle_us = base_us + (
            np.arange(first_cycle, first_cycle + cycles, dtype=np.int64) * self.interval_s * 1_000_000
        )
        rows["time"] = np.repeat(cycle_us, count)
        device_bytes = np.frombuffer(b"".join(device.bytes for device in chosen), dtype="V16")
        rows["device"] = np.tile(device_bytes, cycles)
        values = self.values(first_cycle, cycles)
        for index, name in enumerate(REAL_COLUMNS):
            rows[f"length_{index}"] = 4
            rows[f"value_{index}"] = values[name][:, devices].reshape(-1)
        return b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" * 2 + rows.tobytes() + b"\xff\xff"

    def readings(self, first_cycle: int, cycles: int) -> Iterator[tuple[datetime, list[dict[str, Any]]]]:
        """Per cycle, the readings as the device agent publishes them (JSON-ready dicts)."""
        values = self.values(first_cycle, cycles)
        lists = {name: values[name].tolist() for name in REAL_COLUMNS}
        for offset in range(cycles):
            moment = self.cycle_time(first_cycle + offset)
            stamp = moment.isoformat()
            yield (
                moment,
                [
                    {"time": stamp, "device_id": str(device), **{name: lists[name][offset][i] for name in REAL_COLUMNS}}
                    for i, device in enumerate(self.devices)
                ],
            )


# --------------------------------------------------------------------------------------------- part 1: fill


async def fill(database_url: str, fleet: Fleet, *, cycles: int, connections: int, limit_s: float) -> dict[str, Any]:
    """COPY ``cycles`` cycles of the fleet into flux.mg_meter_readings; stops early after ``limit_s``."""
    admin = await asyncpg.connect(database_url)
    await admin.execute("ALTER TABLE flux.mg_meter_readings DISABLE TRIGGER realtime_after_insert")
    # One COPY per 30-minute period: a statement touching more than a few thousand (device, period) pairs runs
    # out of lock table ("out of shared memory", max_locks_per_transaction) - shared with every other database on
    # the server. Each connection writes its own share of the meters, in time order: the rollup refresh takes
    # one advisory lock per meter (migration 0015), so two streams writing adjacent periods of the same meters
    # would take turns rather than run side by side.
    chunks: list[tuple[int, int]] = []
    periods_per_chunk = max(1, 1000 // len(fleet.devices))
    first, period, periods = 0, None, 0
    for cycle in range(cycles + 1):
        current = None if cycle == cycles else int(fleet.cycle_time(cycle).timestamp()) // 1800
        if current != period and cycle > first:
            periods += 1
            if periods == periods_per_chunk or cycle == cycles:
                chunks.append((first, cycle - first))
                first, periods = cycle, 0
        period = current
    chunk_count = len(chunks) * connections
    done_rows = 0
    # Cycles each connection has written, from the first: the fill is complete up to the smallest.
    done_cycles = [0] * connections
    bounds = np.linspace(0, len(fleet.devices), connections + 1).astype(int)
    started = time.perf_counter()
    deadline = started + limit_s
    last_report = started

    async def worker(index: int) -> None:
        nonlocal done_rows, last_report
        devices = slice(int(bounds[index]), int(bounds[index + 1]))
        connection = await asyncpg.connect(database_url)
        try:
            for first, size in chunks:
                if time.perf_counter() >= deadline:
                    break
                data = await asyncio.to_thread(fleet.copy_chunk, first, size, devices)
                await connection.copy_to_table(
                    "mg_meter_readings",
                    schema_name="flux",
                    source=_chunks(data),
                    columns=list(COLUMNS),
                    format="binary",
                )
                done_rows += size * (devices.stop - devices.start)
                done_cycles[index] = first + size
                now = time.perf_counter()
                if now - last_report >= 15:
                    last_report = now
                    print(
                        f"    {done_rows:>11,} rows after {now - started:5.0f} s ({done_rows / (now - started):,.0f}/s)"
                    )
        finally:
            await connection.close()

    await asyncio.gather(*(worker(index) for index in range(connections)))
    copy_s = time.perf_counter() - started
    await admin.execute("ALTER TABLE flux.mg_meter_readings ENABLE TRIGGER realtime_after_insert")
    analyze_started = time.perf_counter()
    await admin.execute("ANALYZE flux.mg_meter_readings")
    await admin.execute("ANALYZE flux.meter_reading_rollups")
    analyze_s = time.perf_counter() - analyze_started
    stored = await admin.fetchval("SELECT count(*) FROM flux.mg_meter_readings")
    rollups = await admin.fetchval("SELECT count(*) FROM flux.meter_reading_rollups")
    size = await admin.fetchval(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits"
        " WHERE inhparent = 'flux.mg_meter_readings'::regclass"
    )
    await admin.close()
    return {
        "rows_requested": cycles * len(fleet.devices),
        "rows": stored,
        "devices": len(fleet.devices),
        "interval_s": fleet.interval_s,
        "first_reading": fleet.start.isoformat(),
        "cycles_filled": min(done_cycles),
        "complete": min(done_cycles) == cycles,
        "copy_s": copy_s,
        "rows_per_s": done_rows / copy_s,
        "analyze_s": analyze_s,
        "connections": connections,
        "copies": chunk_count,
        "mean_rows_per_copy": cycles * len(fleet.devices) / chunk_count,
        "rollup_rows": rollups,
        "table_size": size,
    }


async def _chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(view), size):
        yield bytes(view[offset : offset + size])


# ------------------------------------------------------------------------------------------- part 2: ingest


async def publish_all(amqp_url: str, bodies: list[bytes], *, in_flight: int = 64) -> float:
    """Publish every body persistent and confirmed; returns the time (perf_counter) the last confirm came."""
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        window = asyncio.Semaphore(in_flight)

        async def one(index: int, body: bytes) -> None:
            async with window:
                confirmation = await channel.basic_publish(
                    body,
                    exchange=routing.TELEMETRY_EXCHANGE,
                    routing_key=routing.RoutingKeys.TELEMETRY_METER,
                    properties=aiormq.spec.Basic.Properties(
                        content_type="application/json", delivery_mode=2, message_id=f"bench-{uuid.uuid4().hex}"
                    ),
                    mandatory=True,
                )
                if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                    raise RuntimeError(f"batch {index} not confirmed: {confirmation!r}")

        await asyncio.gather(*(one(index, body) for index, body in enumerate(bodies)))
        return time.perf_counter()
    finally:
        await connection.close()


async def ready_messages(channel: aiormq.abc.AbstractChannel) -> int:
    """Messages ready (not yet delivered) in gridloop-ingest's readings queue: a passive declare, cheap for all."""
    declared = await channel.queue_declare(routing.Queues.INGEST_READINGS, passive=True)
    return int(declared.message_count or 0)


async def backend_cpu(connection: asyncpg.Connection, database: str) -> dict[int, float]:
    pids = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return {row["pid"]: cpu_seconds(row["pid"]) for row in pids}


async def ingest_round(
    infrastructure: Infrastructure,
    fleet: Fleet,
    ingest_pid: int,
    *,
    first_cycle: int,
    cycles: int,
    batch: int,
    round_number: int,
    from_filled_queue: bool,
) -> dict[str, Any]:
    """One round: publish the cycles' readings and time them into committed rows, then bare COPY of the same rows.

    ``from_filled_queue``: the ingest process is stopped (SIGSTOP) while every message is published and
    confirmed, and the clock starts when it continues (SIGCONT): queue -> committed rows alone, the publisher's
    and the broker's intake not competing for the 2 cores. Otherwise publishing runs beside consuming, and the
    clock starts at the first publish.
    """
    expected = cycles * len(fleet.devices)
    bodies: list[bytes] = []
    records: list[tuple[Any, ...]] = []
    for moment, readings in fleet.readings(first_cycle, cycles):
        for start in range(0, len(readings), batch):
            bodies.append(json.dumps(readings[start : start + batch]).encode())
        for reading in readings:
            records.append((moment, uuid.UUID(reading["device_id"]), *(reading[name] for name in REAL_COLUMNS)))
    window = (fleet.cycle_time(first_cycle), fleet.cycle_time(first_cycle + cycles))
    monitor = await asyncpg.connect(infrastructure.database_url)
    broker_connection = await aiormq.connect(infrastructure.amqp_url)
    try:
        queue_probe = await broker_connection.channel()
        backends_before = await backend_cpu(monitor, infrastructure.database)
        ingest_cpu_before = cpu_seconds(ingest_pid)
        brokers = broker_pids()
        broker_cpu_before = sum(cpu_seconds(pid) for pid in brokers)
        if from_filled_queue:
            os.kill(ingest_pid, signal.SIGSTOP)
            try:
                confirmed_at = await publish_all(infrastructure.amqp_url, bodies)
            except BaseException:
                os.kill(ingest_pid, signal.SIGCONT)
                raise
            backends_before = await backend_cpu(monitor, infrastructure.database)
            ingest_cpu_before = cpu_seconds(ingest_pid)
            broker_cpu_before = sum(cpu_seconds(pid) for pid in brokers)
        own_cpu_before = time.process_time()
        started = time.perf_counter()
        if from_filled_queue:
            os.kill(ingest_pid, signal.SIGCONT)
            publisher = asyncio.create_task(asyncio.sleep(0, result=confirmed_at))
        else:
            publisher = asyncio.create_task(publish_all(infrastructure.amqp_url, bodies))
        stored = 0
        deadline = started + 300
        counts = 0
        while stored < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            # count(*) over the round's rows costs the server ~10 ms per 100k rows, on the 2 cores the run
            # measures: count only once everything is published and the queue holds no ready message, so
            # what is left are the messages gridloop-ingest has in hand (its prefetch), a fraction of a second.
            if not publisher.done() or await ready_messages(queue_probe) > 0:
                continue
            counts += 1
            stored = await monitor.fetchval(
                "SELECT count(*) FROM flux.mg_meter_readings WHERE time >= $1 AND time < $2", *window
            )
        committed_at = time.perf_counter()
        backends_committed = await backend_cpu(monitor, infrastructure.database)
        confirmed_at = await publisher
        # Then until the rollups caught up: no touched period left to recompute.
        while time.perf_counter() < deadline:
            if not await monitor.fetchval("SELECT EXISTS (SELECT FROM ingest.meter_rollup_dirty)"):
                break
            await asyncio.sleep(0.05)
        rollups_at = time.perf_counter()
        backends_after = await backend_cpu(monitor, infrastructure.database)
        ingest_cpu = cpu_seconds(ingest_pid) - ingest_cpu_before
        broker_cpu = sum(cpu_seconds(pid) for pid in brokers) - broker_cpu_before
        own_cpu = time.process_time() - own_cpu_before
        backend_cpu_s, backend_cpu_committed_s = (
            sum(
                value - backends_before.get(pid, 0.0)
                for pid, value in backends.items()
                if pid != monitor.get_server_pid()
            )
            for backends in (backends_after, backends_committed)
        )
        if stored < expected:
            raise RuntimeError(f"only {stored}/{expected} readings committed after 300 s")
        end_to_end_s = committed_at - started
        # The same rows, bare: COPY into a fresh copy of the table (no triggers), 10k and batch rows per transaction.
        copies: dict[str, float] = {}
        for label, size in (("copy_10k", 10_000), (f"copy_{batch}", batch)):
            await monitor.execute("DROP TABLE IF EXISTS public.bench_meter_copy")
            await monitor.execute(
                "CREATE TABLE public.bench_meter_copy (LIKE flux.mg_meter_readings"
                " INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
            )
            copy_started = time.perf_counter()
            for start in range(0, len(records), size):
                async with monitor.transaction():
                    await monitor.copy_records_to_table(
                        "bench_meter_copy",
                        schema_name="public",
                        records=records[start : start + size],
                        columns=list(COLUMNS),
                    )
            copies[label] = len(records) / (time.perf_counter() - copy_started)
        await monitor.execute("DROP TABLE IF EXISTS public.bench_meter_copy")
    finally:
        await broker_connection.close()
        await monitor.close()
    figures = {
        "round": round_number,
        "from_filled_queue": from_filled_queue,
        "readings": expected,
        "messages": len(bodies),
        "end_to_end_s": end_to_end_s,
        "end_to_end_rps": expected / end_to_end_s,
        "completion_counts": counts,
        "with_rollups_s": rollups_at - started,
        "with_rollups_rps": expected / (rollups_at - started),
        "publish_rps": None if from_filled_queue else expected / (confirmed_at - started),
        "bare_copy_10k_rps": copies["copy_10k"],
        f"bare_copy_{batch}_rps": copies[f"copy_{batch}"],
        "ratio_to_copy_10k": expected / end_to_end_s / copies["copy_10k"],
        f"ratio_to_copy_{batch}": expected / end_to_end_s / copies[f"copy_{batch}"],
        "ingest_cpu_us_per_reading": ingest_cpu / expected * 1e6,
        "postgres_cpu_us_per_reading": backend_cpu_s / expected * 1e6,
        "postgres_cpu_us_per_reading_until_committed": backend_cpu_committed_s / expected * 1e6,
        "publisher_cpu_us_per_reading": own_cpu / expected * 1e6,
        "broker_cpu_us_per_reading": broker_cpu / expected * 1e6,
    }
    print(
        f"  round {round_number}, {'from a filled queue' if from_filled_queue else 'publishing alongside'}:"
        f" end to end {figures['end_to_end_rps']:8,.0f} readings/s ({end_to_end_s:.2f} s;"
        f" rollups caught up {figures['with_rollups_s']:.2f} s)"
        f" | bare COPY 10k {copies['copy_10k']:8,.0f}/s, {batch}-row {copies[f'copy_{batch}']:8,.0f}/s"
        f" | ratio {figures['ratio_to_copy_10k']:.2f} / {figures[f'ratio_to_copy_{batch}']:.2f}"
        f" | CPU us/reading: ingest {figures['ingest_cpu_us_per_reading']:.1f},"
        f" postgres {figures['postgres_cpu_us_per_reading_until_committed']:.1f}"
        f" (with rollups {figures['postgres_cpu_us_per_reading']:.1f}),"
        f" publisher {figures['publisher_cpu_us_per_reading']:.1f},"
        f" broker {figures['broker_cpu_us_per_reading']:.1f}"
    )
    return figures


async def reorder(infrastructure: Infrastructure, environment: dict[str, str]) -> dict[str, Any]:
    """`gridloop-ingest reorder` over the filled days, as the service does once a day per closed day."""
    started = time.perf_counter()
    subprocess.run([str(BIN / "gridloop-ingest"), "reorder"], env=environment, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    connection = await asyncpg.connect(infrastructure.database_url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS days, coalesce(sum(row_count), 0)::bigint AS rows FROM ingest.reordered_days"
        )
    finally:
        await connection.close()
    figures = {"seconds": seconds, "days": row["days"], "rows": row["rows"]}
    print(
        f"reorder (closed days rewritten in device order, then vacuumed): {figures['rows']:,} readings of"
        f" {figures['days']} days in {seconds:.1f} s ({figures['rows'] / max(seconds, 1e-9):,.0f} rows/s)"
    )
    return figures


# ---------------------------------------------------------------------------------------------- part 3: api


@dataclass(frozen=True)
class RawResponse:
    status_code: int
    content: bytes


class RawHttpClient:
    """GET over one keep-alive HTTP/1.1 connection, reading only the status line, the headers and the
    Content-Length body: the API's latency without the client's parsing. httpx parses in Python and added ~3 ms
    to a 324 KiB response (p50 12.6 against curl's 9.1 ms on the same server, 300,000-reading table).
    """

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self._port = port
        self._headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __aenter__(self) -> RawHttpClient:
        await self._connect()
        return self

    async def _connect(self) -> None:
        self._streams = await asyncio.open_connection("127.0.0.1", self._port, limit=1 << 20)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._streams is not None:
            self._streams[1].close()
            await self._streams[1].wait_closed()

    async def get(self, path: str, params: list[tuple[str, str]]) -> RawResponse:
        assert self._streams is not None
        if self._streams[0].at_eof():
            # The server closes a connection idle for longer than its keep-alive timeout (uvicorn: 5 s), as while
            # the httpx targets run. The new connection is opened in a target's first warm-up request.
            self._streams[1].close()
            await self._connect()
        assert self._streams is not None
        reader, writer = self._streams
        target = f"{path}?{urllib.parse.urlencode(params)}"
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n{self._headers}\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = dict(line.split(":", 1) for line in head[1:] if ":" in line)
        length = {name.strip().lower(): value.strip() for name, value in fields.items()}.get("content-length")
        if length is None:
            raise RuntimeError(f"no Content-Length in the response to {target}")
        return RawResponse(int(head[0].split(" ", 2)[1]), await reader.readexactly(int(length)))


async def latencies(
    make_request: Callable[[], Awaitable[httpx.Response | RawResponse]], *, requests: int, limit_s: float, warmup: int
) -> dict[str, Any]:
    """Sequential requests until ``requests`` or ``limit_s``; failed ones count with their latency and status.

    ``warmup`` requests go first (for at most half of ``limit_s``); the first one's latency is reported apart, as
    ``first_ms``: it is the one that finds the buffer cache cold.
    """
    started = time.perf_counter()
    first_ms = None
    for _ in range(warmup):
        begun = time.perf_counter()
        await make_request()
        first_ms = (time.perf_counter() - begun) * 1000 if first_ms is None else first_ms
        if time.perf_counter() - started > limit_s / 2:
            break
    samples: list[float] = []
    sizes: list[int] = []
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    while len(samples) < requests and time.perf_counter() - started < limit_s:
        begun = time.perf_counter()
        response = await make_request()
        samples.append((time.perf_counter() - begun) * 1000)
        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
        sizes.append(len(response.content))
    return {
        "first_ms": first_ms,
        "requests": len(samples),
        "statuses": statuses,
        "errors": sum(count for status, count in statuses.items() if not status.startswith("2")),
        "p50_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples),
        "mean_response_bytes": statistics.mean(sizes),
    }


def page_reclaim_policy() -> list[dict[str, Any]]:
    """The kernel's DAMON schemes that page memory out proactively (some hosts evict idle page cache this way).

    Each scheme pages out memory that DAMON saw unaccessed for ``min_idle_s`` or longer, at most
    ``quota_mb_per_s``; PostgreSQL's pages then come from disk again, whatever memory is free.
    """
    schemes = []
    for scheme in sorted(Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/contexts/*/schemes/*/")):
        try:
            context = scheme.parents[1]
            if (scheme.parents[3] / "state").read_text().strip() != "on":
                continue
            aggregation_us = int((context / "monitoring_attrs/intervals/aggr_us").read_text())
            quota_bytes = int((scheme / "quotas/bytes").read_text())
            reset_ms = int((scheme / "quotas/reset_interval_ms").read_text()) or 1000
            schemes.append(
                {
                    "action": (scheme / "action").read_text().strip(),
                    "min_idle_s": int((scheme / "access_pattern/age/min").read_text()) * aggregation_us / 1e6,
                    "quota_mb_per_s": quota_bytes / 1048576 / (reset_ms / 1000),
                }
            )
        except (OSError, ValueError):
            continue
    return schemes


async def memory_residency(connection: asyncpg.Connection) -> dict[str, dict[str, float]] | None:
    """MiB of each of the run's biggest relations, how much is in the OS page cache (fincore) and in shared buffers.

    Only where this process can read the server's files (the same machine, as root); otherwise None.
    """
    if shutil.which("fincore") is None:
        return None
    data_directory = Path(await connection.fetchval("SHOW data_directory"))
    relations = await connection.fetch(
        "SELECT class.oid::regclass::text AS name, pg_relation_filepath(class.oid) AS path,"
        " pg_relation_size(class.oid) AS bytes FROM pg_class AS class"
        " WHERE class.relkind IN ('r', 'i') AND pg_relation_size(class.oid) > 50 * 1048576"
        " ORDER BY bytes DESC LIMIT 12"
    )
    # pg_buffercache: which of those pages PostgreSQL holds in its own shared buffers (the bench's private database).
    await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
    buffered = {
        row["name"]: row["mib"]
        for row in await connection.fetch(
            "SELECT class.oid::regclass::text AS name, count(*) * current_setting('block_size')::int / 1048576.0 AS mib"
            " FROM pg_buffercache AS buffers JOIN pg_class AS class"
            " ON buffers.relfilenode = pg_relation_filenode(class.oid)"
            " AND buffers.reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " GROUP BY class.oid"
        )
    }
    report: dict[str, dict[str, float]] = {}
    for relation in relations:
        base = data_directory / relation["path"]
        segments = [base, *sorted(base.parent.glob(base.name + ".*"))]
        try:
            printed = subprocess.run(
                ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, segments)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        resident = sum(int(line) for line in printed.split())
        report[relation["name"]] = {
            "mib": relation["bytes"] / 1048576,
            "resident_mib": resident / 1048576,
            "shared_buffers_mib": float(buffered.get(relation["name"], 0.0)),
        }
    return report


async def api(
    port: int, database_url: str, fleet: Fleet, *, filled_cycles: int, requests: int, limit_s: float
) -> dict[str, Any]:
    key = make_key(secret=JWT_SECRET, role="service_role")
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    rng = np.random.default_rng(11)
    data_end = fleet.cycle_time(filled_cycles)
    results: dict[str, Any] = {}
    # The fill leaves gigabytes of dirty buffers that the checkpointer writes back for minutes; in a full run
    # part 2 lies in between. Written now, so that the reads below do not queue behind that write-back.
    connection = await asyncpg.connect(database_url)
    try:
        begun = time.perf_counter()
        await connection.execute("CHECKPOINT")
        results["checkpoint_s"] = time.perf_counter() - begun
    finally:
        await connection.close()
    print(f"  (CHECKPOINT first: {results['checkpoint_s']:.1f} s)")
    connection = await asyncpg.connect(database_url)
    try:
        results["shared_buffers"] = await connection.fetchval("SHOW shared_buffers")
        results["page_cache_before"] = await memory_residency(connection)
    finally:
        await connection.close()
    results["page_reclaim_policy"] = page_reclaim_policy()
    for scheme in results["page_reclaim_policy"]:
        print(
            f"  NOTE: the kernel runs DAMON '{scheme['action']}' on memory idle for {scheme['min_idle_s']:.0f} s or"
            f" more (up to {scheme['quota_mb_per_s']:.0f} MiB/s): page cache PostgreSQL has not read for that long"
            " is dropped, and only shared_buffers (mapped memory) keeps pages warm"
        )
    print(f"  shared_buffers {results['shared_buffers']}; at the start, in the OS page cache | in shared buffers:")
    for name, sizes in (results["page_cache_before"] or {}).items():
        print(
            f"    {name:48s} {sizes['resident_mib']:8,.0f} | {sizes['shared_buffers_mib']:8,.0f}"
            f" of {sizes['mib']:8,.0f} MiB"
        )
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client,
        RawHttpClient(port, headers) as raw_client,
    ):

        def device() -> uuid.UUID:
            return fleet.devices[int(rng.integers(len(fleet.devices)))]

        def last_100_parameters() -> list[tuple[str, str]]:
            return [("device_id", f"eq.{device()}"), ("order", "time.desc"), ("limit", "100")]

        def one_day_parameters() -> list[tuple[str, str]]:
            days = max(1, (data_end - fleet.start).days)  # a random 24 h window inside the filled span
            day_start = fleet.start + timedelta(days=int(rng.integers(days)))
            return [
                ("device_id", f"eq.{device()}"),
                ("time", f"gte.{day_start.isoformat()}"),
                ("time", f"lt.{(day_start + timedelta(days=1)).isoformat()}"),
                ("order", "time.asc"),
            ]

        async def last_100() -> httpx.Response:
            return await client.get("/rest/v1/mg_meter_readings", params=last_100_parameters())

        async def one_day() -> httpx.Response:
            return await client.get("/rest/v1/mg_meter_readings", params=one_day_parameters())

        async def last_100_raw() -> RawResponse:
            return await raw_client.get("/rest/v1/mg_meter_readings", last_100_parameters())

        async def one_day_raw() -> RawResponse:
            return await raw_client.get("/rest/v1/mg_meter_readings", one_day_parameters())

        def rpc_30m(days: int) -> Callable[[], Awaitable[httpx.Response]]:
            async def call() -> httpx.Response:
                chosen = rng.choice(len(fleet.devices), size=min(50, len(fleet.devices)), replace=False)
                body = {
                    "start_time": (data_end - timedelta(days=days)).isoformat(),
                    "end_time": data_end.isoformat(),
                    "device_ids": [str(fleet.devices[int(index)]) for index in chosen],
                }
                return await client.post("/rest/v1/rpc/get_meter_readings_30m", json=body)

            return call

        # The last target has no aim of its own: it shows how the RPC scales when 30 days are too slow.
        targets: dict[str, tuple[Callable[[], Awaitable[httpx.Response | RawResponse]], float | None]] = {
            "last_100_of_one_device": (last_100, 20.0),
            "one_day_of_one_device": (one_day, 20.0),
            "last_100_of_one_device_raw_client": (last_100_raw, 20.0),
            "one_day_of_one_device_raw_client": (one_day_raw, 20.0),
            "rpc_30m_30_days_50_meters": (rpc_30m(30), 200.0),
            "rpc_30m_1_day_50_meters": (rpc_30m(1), None),
        }
        for name, (make_request, aim_ms) in targets.items():
            counters_before = cpu_times()
            figures = await latencies(make_request, requests=requests, limit_s=limit_s, warmup=10)
            figures["steal"] = steal_fraction(counters_before, cpu_times())
            figures["aim_p99_ms"] = aim_ms
            figures["aim_met"] = None if aim_ms is None else figures["errors"] == 0 and figures["p99_ms"] < aim_ms
            results[name] = figures
            verdict = (
                "no aim"
                if aim_ms is None
                else f"aim p99 < {aim_ms:.0f} ms: {'met' if figures['aim_met'] else 'NOT met'}"
            )
            print(
                f"  {name:34s} n={figures['requests']:4d}  p50 {figures['p50_ms']:8.1f} ms"
                f"  p99 {figures['p99_ms']:8.1f} ms  max {figures['max_ms']:8.1f} ms"
                f"  (first, cold {figures['first_ms']:6.0f} ms)"
                f"  ~{figures['mean_response_bytes'] / 1024:,.0f} KiB  statuses {figures['statuses']}"
                f"  steal {figures['steal']:.0%}  ({verdict})"
            )
    # The 30-day RPC's SQL function alone, without the API's 30 s statement timeout and without JSON. All its
    # rows are computed (count(*) alone would let the planner skip the output columns, the deltas included).
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("SET statement_timeout = '180s'")
        chosen = rng.choice(len(fleet.devices), size=min(50, len(fleet.devices)), replace=False)
        begun = time.perf_counter()
        rows = await connection.fetchval(
            "SELECT count(rpc) FROM flux.get_meter_readings_30m($1, $2, $3) AS rpc",
            data_end - timedelta(days=30),
            data_end,
            [fleet.devices[int(index)] for index in chosen],
        )
        results["rpc_30m_30_days_50_meters_sql_only"] = {"rows": rows, "ms": (time.perf_counter() - begun) * 1000}
        print(
            f"  get_meter_readings_30m, 30 days x 50 meters, in SQL only (all rows, count(rpc)): {rows:,} rows in"
            f" {results['rpc_30m_30_days_50_meters_sql_only']['ms']:,.0f} ms"
        )
    finally:
        await connection.close()
    return results


# --------------------------------------------------------------------------------------------------- main


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="readings to fill (default 10 M)")
    parser.add_argument("--devices", type=int, default=1000, help="meters (default 1,000)")
    parser.add_argument("--days", type=float, default=30.0, help="time span of the fill (default 30 days)")
    parser.add_argument("--fill-connections", type=int, default=2, help="parallel COPY streams for the fill")
    parser.add_argument("--fill-limit-s", type=float, default=360.0, help="stop the fill after this long")
    parser.add_argument("--e2e-readings", type=int, default=200_000, help="readings published per round")
    parser.add_argument("--batch", type=int, default=200, help="readings per message")
    parser.add_argument(
        "--rollup-settle-s",
        type=float,
        default=30.0,
        help="GRIDLOOP_ROLLUP_SETTLE_S of gridloop-ingest (default 30, the service's; 0: refreshed during the rounds)",
    )
    parser.add_argument(
        "--shared-buffers",
        help="run a private PostgreSQL server with this shared_buffers (e.g. 8GB) instead of the machine's",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved end-to-end / bare COPY rounds")
    parser.add_argument("--api-requests", type=int, default=300, help="requests per API target at most")
    parser.add_argument("--api-limit-s", type=float, default=30.0, help="seconds per API target at most")
    parser.add_argument(
        "--skip-ingest", action="store_true", help="skip part 2 (the ingest rounds): fill, then the API latencies"
    )
    return parser.parse_args()


async def main() -> None:
    options = arguments()
    if options.devices < 1 or options.rows < options.devices or options.e2e_readings < options.devices:
        raise SystemExit("need --rows and --e2e-readings >= --devices >= 1")
    with contextlib.suppress(AttributeError, OSError):
        if (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})  # the load generator on core 1, gridloop-ingest on core 0
    load = os.getloadavg()
    idle = idle_fraction()
    print(
        f"bench/telemetry.py on {platform.node()} ({os.cpu_count()} cores,"
        f" load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f},"
        f" {idle:.0%} idle over 1 s)"
    )
    run_started = time.perf_counter()
    run_counters = cpu_times()
    fill_cycles = options.rows // options.devices
    interval_s = max(1, int(options.days * 86400 // fill_cycles))
    cycles_per_round = options.e2e_readings // options.devices
    # All data lies in the past: the fill, then the rounds' cycles (two parts a round), ending about now.
    total_cycles = fill_cycles + cycles_per_round * options.rounds * 2
    now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
    fleet = Fleet(
        devices=[uuid.UUID(int=(0x6D657465 << 96) | index, version=4) for index in range(options.devices)],
        start=now - timedelta(seconds=interval_s * total_cycles),
        interval_s=interval_s,
    )
    results: dict[str, Any] = {
        "measured_at": datetime.now(tz=UTC).isoformat(),
        "machine": {
            "cores": os.cpu_count(),
            "load_average": load,
            "idle_before": idle,
            "python": platform.python_version(),
        },
        "options": vars(options),
    }
    async with contextlib.AsyncExitStack() as resources:
        server = SERVER
        if options.shared_buffers is not None:
            private = await resources.enter_async_context(PrivateServer({"shared_buffers": options.shared_buffers}))
            server = private.url
            results["private_server"] = private.applied
            print(
                f"PostgreSQL: a private server on port {private.port} with shared_buffers {options.shared_buffers}"
                " (other settings as the machine's: "
                + ", ".join(f"{name} {value}" for name, value in private.applied.items() if name != "shared_buffers")
                + ")"
            )
        infrastructure = await resources.enter_async_context(bench_infrastructure(server))
        port = free_port()
        # The service's default settle time (30 s) postpones the rollups past the end of a round; 0 makes the
        # refresher recompute touched periods every second while ingest runs, the most work it can do then.
        # The service's own reordering is off: the bench runs it once, after the fill, and times it.
        environment = infrastructure.environment(
            GRIDLOOP_INGEST_PORT=str(port),
            GRIDLOOP_ROLLUP_SETTLE_S=str(options.rollup_settle_s),
            GRIDLOOP_REORDER="off",
        )
        subprocess.run([str(BIN / "gridloop-ingest"), "migrate"], env=environment, check=True, capture_output=True)
        print(
            f"fill: {fill_cycles * options.devices:,} meter readings"
            f" ({options.devices:,} devices x {fill_cycles:,}, every"
            f" {interval_s} s), binary COPY on {options.fill_connections} connections, rollup trigger on:"
        )
        figures = await fill(
            infrastructure.database_url,
            fleet,
            cycles=fill_cycles,
            connections=options.fill_connections,
            limit_s=options.fill_limit_s,
        )
        results["fill"] = figures
        print(
            f"  {figures['rows']:,} rows in {figures['copy_s']:.1f} s"
            f" ({figures['rows_per_s']:,.0f} rows/s incl. rollups; ANALYZE {figures['analyze_s']:.1f} s),"
            f" {figures['rollup_rows']:,} rollup rows, table {figures['table_size']}"
        )
        if not figures["complete"]:
            print(f"  NOTE: the fill stopped at the {options.fill_limit_s:.0f} s limit; {figures['rows']:,} rows used")
        results["reorder"] = await reorder(infrastructure, environment)
        ingest_command = pinned([str(BIN / "gridloop-ingest")], core=0)
        async with process(ingest_command, environment, ready_url=f"http://127.0.0.1:{port}/readyz") as ingest_pid:
            if options.skip_ingest:
                print("queue -> committed rows: skipped (--skip-ingest)")
            else:
                print(
                    f"queue -> committed rows: {options.rounds} rounds of 2 x"
                    f" {cycles_per_round * options.devices:,} readings (from a filled queue, then publishing alongside)"
                    f" in batches of {options.batch} (gridloop-ingest on core 0, rollups settle"
                    f" {options.rollup_settle_s:g} s), beside bare COPY of the same rows:"
                )
                rounds = []
                for round_number in range(options.rounds):
                    for offset, from_filled_queue in enumerate((True, False)):
                        rounds.append(
                            await ingest_round(
                                infrastructure,
                                fleet,
                                ingest_pid,
                                first_cycle=fill_cycles + (2 * round_number + offset) * cycles_per_round,
                                cycles=cycles_per_round,
                                batch=options.batch,
                                round_number=round_number,
                                from_filled_queue=from_filled_queue,
                            )
                        )
                results["ingest"] = {"rounds": rounds}
                for key, from_filled_queue, label in (
                    ("from_filled_queue", True, "from a filled queue"),
                    ("publishing_alongside", False, "publishing alongside"),
                ):
                    chosen = [row for row in rounds if row["from_filled_queue"] is from_filled_queue]
                    ratios = [row["ratio_to_copy_10k"] for row in chosen]
                    rates = [row["end_to_end_rps"] for row in chosen]
                    summary = {
                        "end_to_end_rps_best": max(rates),
                        "end_to_end_rps_median": statistics.median(rates),
                        "bare_copy_10k_rps_best": max(row["bare_copy_10k_rps"] for row in chosen),
                        "ratio_best": max(ratios),
                        "ratio_median": statistics.median(ratios),
                        "aim_ratio": 0.5,
                        "aim_met": statistics.median(ratios) >= 0.5,
                    }
                    results["ingest"][key] = summary
                    print(
                        f"  {label}: end to end / bare COPY (10k-row transactions): best {max(ratios):.2f}, median"
                        f" {statistics.median(ratios):.2f} (aim >= 0.50: {'met' if summary['aim_met'] else 'NOT met'})"
                    )
            print(f"API latency (sequential requests over {figures['rows']:,}+ readings, service_role key):")
            results["api"] = await api(
                port,
                infrastructure.database_url,
                fleet,
                filled_cycles=figures["cycles_filled"],
                requests=options.api_requests,
                limit_s=options.api_limit_s,
            )
    results["total_s"] = time.perf_counter() - run_started
    results["machine"]["steal_over_run"] = steal_fraction(run_counters, cpu_times())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(f"CPU time stolen by the hypervisor over the run: {results['machine']['steal_over_run']:.1%}")
    print(f"total {results['total_s']:.0f} s; written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    # SIGTERM as Ctrl-C: the run's database, vhost and private server are removed on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main())
