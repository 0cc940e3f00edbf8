"""Benchmark of the command path: webhook intake beside bare Starlette, and end-to-end latency.

Part 1 measures confirmed webhooks per second from one gateway process (verify the signature, validate
the envelope, publish with a publisher confirm) beside a bare Starlette endpoint (parse JSON, answer
202) in the same run, with wrk as the load generator (pinned to the other core when taskset exists),
then p50/p99 latency at fixed offered loads with an open-loop generator (a minimal keep-alive HTTP client,
with how late the generator itself started requests, so its own limits show).

Part 2 sends 1,000 commands that start at once to 100 simulated SunSpec batteries through the real
gateway, scheduler and device-agent, and measures webhook -> upstream PATCH OK and webhook -> device
write (the agent's outcome, recorded after read-back), and the CPU per command of each service.

Traffic goes to 127.0.0.1 only, is bounded in count and time, and stops by itself. Figures are printed
and written to bench/results/commands.json. Run: `uv run python bench/commands.py` (or `make bench`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from infrastructure import Infrastructure, free_port

from gridloop_simulators.upstream import UpstreamSimulator
from webhook_gateway.signatures import sign

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "commands.json"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BIN = Path(sys.executable).parent

BARE_APP = """
import json
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def receive(request):
    payload = json.loads(await request.body())
    return JSONResponse({"status": "accepted", "event_type": payload["event_type"]}, status_code=202)

app = Starlette(routes=[Route("/v1/webhooks", receive, methods=["POST"])])
"""


def fleet_base_port(count: int) -> int:
    """A run of ``count`` free consecutive ports."""
    for base in range(41000, 60000, 500):
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free run of ports for the battery fleet")


async def wait_for_port(port: int, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") and os.cpu_count() else command


def bench_infrastructure() -> Infrastructure:
    return Infrastructure(
        {
            "GRIDLOOP_WEBHOOK_SECRET": SECRET,
            "GRIDLOOP_JWT_SECRET": "bench-secret-with-at-least-thirty-two-characters",
            "GRIDLOOP_AGENT_REGISTRY_REFRESH_S": "2",
            "GRIDLOOP_DATABASE_POOL_MAX": "20",
        }
    )


@contextlib.asynccontextmanager
async def process(command: list[str], environment: dict[str, str], *, ready_url: str) -> AsyncIterator[int]:
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
                    if response.status_code < 500:
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


def signed_request(event_type: str = "event.bench") -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {"event_type": event_type, "event_object": {"id": "bench"}, "timestamp": datetime.now(tz=UTC).isoformat()}
    ).encode()
    webhook_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    return body, {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret=SECRET, webhook_id=webhook_id, timestamp=timestamp, body=body),
    }


def wrk(url: str, body: bytes, headers: dict[str, str], *, seconds: int, connections: int) -> dict[str, float]:
    """Closed-loop throughput with wrk; returns rps and latency percentiles in ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = 'POST'\nwrk.body = {json.dumps(body.decode())}\n")
        for name, value in headers.items():
            script.write(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n")
        script.write(
            "done = function(summary, latency, requests)\n"
            "  io.write(string.format('RESULT %d %d %.0f %.0f %.0f\\n', summary.requests, summary.duration, "
            "latency:percentile(50), latency:percentile(99), summary.errors.status))\n"
            "end\n"
        )
    command = pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url], core=1)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()
    requests, duration_us, p50_us, p99_us, status_errors = (
        float(part) for part in output.split("RESULT", 1)[1].split()
    )
    return {
        "rps": requests / (duration_us / 1e6),
        "p50_ms": p50_us / 1000,
        "p99_ms": p99_us / 1000,
        "non_2xx": status_errors,
    }


class _KeepAliveClient:
    """A minimal HTTP/1.1 client over keep-alive connections, for the fixed-rate part.

    httpx spends about a millisecond of the generator's CPU per request; at 500 requests per second on a
    2-core host that alone was enough to queue requests inside the generator, so its latencies measured the
    generator rather than the server. This client costs tens of microseconds per request.
    """

    def __init__(self, url: str) -> None:
        parsed = httpx.URL(url)
        self._host = parsed.host
        self._port = parsed.port or 80
        self._path = parsed.raw_path.decode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body``; returns the response status. A broken connection is dropped, not reused."""
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self._host, self._port)
            self._all.append(writer)
        head = f"POST {self._path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        try:
            writer.write(head.encode() + b"\r\n" + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            writer.close()
            raise
        self._idle.append((reader, writer))
        return status

    def close(self) -> None:
        for writer in self._all:
            writer.close()


async def open_loop(url: str, *, rate: int, seconds: float) -> dict[str, float]:
    """Fixed offered load: requests start on schedule whatever the latency; returns percentiles in ms."""
    latencies: list[float] = []
    errors = 0
    client = _KeepAliveClient(url)
    total = int(rate * seconds)
    # Signed before the clock starts, so the generator's own CPU does not delay the schedule.
    prepared = [signed_request() for _ in range(total)]
    lateness: list[float] = []

    async def one(body: bytes, headers: dict[str, str]) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            if await client.post(body, headers) != 202:
                errors += 1
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            errors += 1
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    start = time.perf_counter()
    try:
        for index, (body, headers) in enumerate(prepared):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # How late the generator itself started the request: large values mean the figures are its own.
            lateness.append((time.perf_counter() - due) * 1000)
            tasks.append(asyncio.create_task(one(body, headers)))
        await asyncio.gather(*tasks)
    finally:
        client.close()
    return {
        "offered_rps": rate,
        "requests": total,
        "errors": errors,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "generator_late_p99_ms": percentile(lateness, 0.99),
    }


async def intake(infrastructure: Infrastructure) -> dict[str, Any]:
    gateway_port, bare_port = free_port(), free_port()
    environment = infrastructure.environment(GRIDLOOP_GATEWAY_PORT=str(gateway_port))
    bare_dir = Path(tempfile.mkdtemp())
    (bare_dir / "bare_app.py").write_text(BARE_APP)
    bare_command = pinned(
        [str(BIN / "uvicorn"), "bare_app:app", "--port", str(bare_port), "--log-level", "warning", "--no-access-log"],
        core=0,
    )
    gateway_command = pinned([str(BIN / "gridloop-gateway")], core=0)
    results: dict[str, Any] = {"throughput": [], "fixed_load": []}
    bare_environment = {**environment, "PYTHONPATH": str(bare_dir)}
    async with (
        process(gateway_command, environment, ready_url=f"http://127.0.0.1:{gateway_port}/readyz") as gateway_pid,
        process(bare_command, bare_environment, ready_url=f"http://127.0.0.1:{bare_port}/v1/webhooks") as bare_pid,
    ):
        pids = {"gateway": gateway_pid, "bare_starlette": bare_pid}
        body, headers = signed_request()
        targets = {
            "gateway": f"http://127.0.0.1:{gateway_port}/v1/webhooks",
            "bare_starlette": f"http://127.0.0.1:{bare_port}/v1/webhooks",
        }
        for url in targets.values():  # warm-up
            wrk(url, body, headers, seconds=2, connections=16)
        for round_number in range(3):  # interleaved A/B rounds, as the measurement protocol asks
            for name, url in targets.items():
                cpu_before = cpu_seconds(pids[name])
                figures = wrk(url, body, headers, seconds=5, connections=32)
                # CPU per request of the server process alone: steadier than rps on a shared box.
                figures["server_cpu_us_per_request"] = (
                    (cpu_seconds(pids[name]) - cpu_before) / (figures["rps"] * 5) * 1e6
                )
                results["throughput"].append({"target": name, "round": round_number, **figures})
                print(
                    f"  {name:15s} round {round_number}: {figures['rps']:8.0f} rps  p50 {figures['p50_ms']:.1f} ms  "
                    f"p99 {figures['p99_ms']:.1f} ms  non-2xx {figures['non_2xx']:.0f}  "
                    f"server CPU {figures['server_cpu_us_per_request']:.0f} us/request"
                )
        for rate in (100, 250, 500):
            for name, url in targets.items():
                figures = await open_loop(url, rate=rate, seconds=4)
                results["fixed_load"].append({"target": name, **figures})
                print(
                    f"  {name:15s} at {rate:4d} rps offered: p50 {figures['p50_ms']:.1f} ms"
                    f"  p99 {figures['p99_ms']:.1f} ms  errors {figures['errors']}"
                    f"  (generator late p99 {figures['generator_late_p99_ms']:.1f} ms)"
                )
    best = {name: max(row["rps"] for row in results["throughput"] if row["target"] == name) for name in targets}
    median = {
        name: statistics.median(row["rps"] for row in results["throughput"] if row["target"] == name)
        for name in targets
    }
    results["best_rps"] = best
    results["median_rps"] = median
    results["gateway_to_bare_ratio_best"] = best["gateway"] / best["bare_starlette"]
    results["gateway_to_bare_ratio_median"] = median["gateway"] / median["bare_starlette"]
    cpu = {
        name: statistics.median(
            row["server_cpu_us_per_request"] for row in results["throughput"] if row["target"] == name
        )
        for name in targets
    }
    results["server_cpu_us_per_request_median"] = cpu
    # The same ratio by server CPU: what one core could do, without the broker's share of the box.
    results["gateway_to_bare_ratio_by_cpu"] = cpu["bare_starlette"] / cpu["gateway"]
    return results


async def end_to_end(infrastructure: Infrastructure, *, batteries: int = 100, commands: int = 1000) -> dict[str, Any]:
    ports = {name: free_port() for name in ("gateway", "scheduler", "agent")}
    async with UpstreamSimulator(webhook_secret=SECRET) as upstream:
        environment = infrastructure.environment(
            GRIDLOOP_GATEWAY_PORT=str(ports["gateway"]),
            GRIDLOOP_SCHEDULER_PORT=str(ports["scheduler"]),
            GRIDLOOP_AGENT_PORT=str(ports["agent"]),
            GRIDLOOP_OCPP_PORT=str(free_port()),
            GRIDLOOP_UPSTREAM_URL=upstream.url,
        )
        for script in ("gridloop-ingest", "gridloop-scheduler"):
            subprocess.run([str(BIN / script), "migrate"], env=environment, check=True, capture_output=True)
        pool = await asyncpg.create_pool(environment["GRIDLOOP_DATABASE_URL"], min_size=1, max_size=4)
        assert pool is not None
        # The fleet runs in its own process, as real batteries would, so it does not share the load generator's CPU.
        base_port = fleet_base_port(batteries)
        fleet = subprocess.Popen(
            [str(BIN / "gridloop"), "sim", "battery", "--count", str(batteries), "--port", str(base_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_for_port(base_port + batteries - 1)
            for index in range(batteries):
                metadata = {
                    "max_power_kw": 5,
                    "capacity_kwh": 13.5,
                    "modbus": {"host": "127.0.0.1", "port": base_port + index, "unit_id": 1},
                }
                await pool.execute(
                    "INSERT INTO flux.mg_device_registry (name, type, site, metadata)"
                    " VALUES ($1, 'bess', 'BENCH', $2::jsonb)",
                    f"bench-battery-{index}",
                    json.dumps(metadata),
                )
            async with (
                process(
                    [str(BIN / "gridloop-scheduler")],
                    environment,
                    ready_url=f"http://127.0.0.1:{ports['scheduler']}/readyz",
                ) as scheduler_pid,
                process(
                    [str(BIN / "gridloop-agent")], environment, ready_url=f"http://127.0.0.1:{ports['agent']}/readyz"
                ) as agent_pid,
                process(
                    [str(BIN / "gridloop-gateway")],
                    environment,
                    ready_url=f"http://127.0.0.1:{ports['gateway']}/readyz",
                ) as gateway_pid,
            ):
                await asyncio.sleep(3)  # the agent discovers all batteries (registry refresh 2 s)
                service_pids = {"gateway": gateway_pid, "scheduler": scheduler_pid, "device_agent": agent_pid}
                cpu_before = {name: cpu_seconds(pid) for name, pid in service_pids.items()}
                sent_at: dict[str, float] = {}
                wall_sent: dict[str, datetime] = {}
                url = f"http://127.0.0.1:{ports['gateway']}/v1/webhooks"
                async with httpx.AsyncClient(timeout=15) as client:
                    started = time.perf_counter()
                    rate = 50.0  # commands per second offered

                    async def send(index: int) -> None:
                        now = datetime.now(tz=UTC)
                        stored = upstream.add_command(
                            {
                                "device_id": f"bench-battery-{index % batteries}",
                                "starts_at": now.isoformat(),
                                "ends_at": (now + timedelta(minutes=30)).isoformat(),
                                "battery_commands": {
                                    "mode": "DISCHARGE",
                                    "power_mode": "SETPOINT",
                                    "setpoint_w": 1000 + (index % 40) * 100,
                                },
                            },
                            notify=False,
                        )
                        body = json.dumps(
                            {"event_type": "command.created", "event_object": stored, "timestamp": now.isoformat()}
                        ).encode()
                        webhook_id = f"msg_{uuid.uuid4().hex}"
                        stamp = int(time.time())
                        headers = {
                            "content-type": "application/json",
                            "webhook-id": webhook_id,
                            "webhook-timestamp": str(stamp),
                            "webhook-signature": sign(secret=SECRET, webhook_id=webhook_id, timestamp=stamp, body=body),
                        }
                        sent_at[stored["id"]] = time.time()
                        wall_sent[stored["id"]] = now
                        response = await client.post(url, content=body, headers=headers)
                        response.raise_for_status()

                    tasks = []
                    for index in range(commands):
                        delay = started + index / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        tasks.append(asyncio.create_task(send(index)))
                    await asyncio.gather(*tasks)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    acked = {ack["command_id"] for ack in upstream.acks if ack["status_code"] == 200}
                    applied = await pool.fetchval(
                        "SELECT count(DISTINCT command_id) FROM scheduler.device_outcomes WHERE applied"
                    )
                    if len(acked) >= commands and applied >= commands:
                        break
                    await asyncio.sleep(0.5)
                # CPU per command of each service over the run (the agent's includes its telemetry polls).
                cpu_ms_per_command = {
                    name: (cpu_seconds(pid) - cpu_before[name]) / commands * 1000 for name, pid in service_pids.items()
                }
                ack_latency = [
                    (
                        datetime.fromisoformat(str(ack["received_at"]).replace("Z", "+00:00")).timestamp()
                        - sent_at[ack["command_id"]]
                    )
                    * 1000
                    for ack in upstream.acks
                    if ack["status_code"] == 200 and ack["command_id"] in sent_at
                ]
                rows = await pool.fetch(
                    "SELECT command_id, min(observed_at) AS observed_at FROM scheduler.device_outcomes "
                    "WHERE applied GROUP BY command_id"
                )
                write_latency = [
                    (row["observed_at"].timestamp() - sent_at[str(row["command_id"])]) * 1000
                    for row in rows
                    if str(row["command_id"]) in sent_at
                ]
        finally:
            fleet.send_signal(signal.SIGTERM)
            try:
                fleet.wait(10)
            except subprocess.TimeoutExpired:
                fleet.kill()
            await pool.close()
    figures = {
        "commands": commands,
        "batteries": batteries,
        "offered_rate_per_s": 50,
        "acked": len(ack_latency),
        "cpu_ms_per_command": cpu_ms_per_command,
        "applied": len(write_latency),
        "webhook_to_patch_ok_ms": {
            "p50": statistics.median(ack_latency),
            "p99": percentile(ack_latency, 0.99),
            "max": max(ack_latency),
        }
        if ack_latency
        else None,
        "webhook_to_device_write_ms": {
            "p50": statistics.median(write_latency),
            "p99": percentile(write_latency, 0.99),
            "max": max(write_latency),
        }
        if write_latency
        else None,
    }
    print(f"  end to end: {figures['acked']}/{commands} acked, {figures['applied']}/{commands} applied")
    print(f"  webhook -> PATCH OK      : {figures['webhook_to_patch_ok_ms']}")
    print(f"  webhook -> device write  : {figures['webhook_to_device_write_ms']}")
    print("  CPU per command: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms_per_command.items()))
    return figures


async def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 else "all"
    if part not in ("all", "intake", "e2e"):
        raise SystemExit("usage: bench/commands.py [all|intake|e2e]")
    load = os.getloadavg()
    print(f"bench/commands.py on {platform.node()} ({os.cpu_count()} cores, load {load[0]:.2f})")
    intake_figures: dict[str, Any] | None = None
    e2e_figures: dict[str, Any] | None = None
    if part in ("all", "intake"):
        if shutil.which("wrk") is None:
            raise SystemExit("bench/commands.py intake needs wrk: `apt-get install -y wrk` (`make bench` does it)")
        async with bench_infrastructure() as infrastructure:
            print("webhook intake (wrk, 32 connections, 5 s per round):")
            intake_figures = await intake(infrastructure)
            print(
                f"  gateway / bare Starlette: best {intake_figures['gateway_to_bare_ratio_best']:.2f}, "
                f"median {intake_figures['gateway_to_bare_ratio_median']:.2f}, by server CPU "
                f"{intake_figures['gateway_to_bare_ratio_by_cpu']:.2f} (aim >= 0.40)"
            )
    if part in ("all", "e2e"):
        async with bench_infrastructure() as infrastructure:
            print("end to end (1,000 commands over 100 batteries, starting at once):")
            e2e_figures = await end_to_end(infrastructure)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # A partial run keeps the other part's last figures.
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = {
        **previous,
        "measured_at": datetime.now(tz=UTC).isoformat(),
        "machine": {"cores": os.cpu_count(), "load_average": load, "python": platform.python_version()},
    }
    if intake_figures is not None:
        results["intake"] = intake_figures
    if e2e_figures is not None:
        results["end_to_end"] = e2e_figures
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
