"""`gridloop status`: health of every service, queue depths and dead letters, in one table."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aio_pika
import httpx

from gridloop_cli.services import SERVICES
from gridloop_common.contracts import routing
from gridloop_common.messaging import QUEUES

__all__ = ["DeviceFreshness", "QueueDepth", "ServiceHealth", "collect", "render", "table"]


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    port: int
    state: str
    detail: str


@dataclass(frozen=True)
class QueueDepth:
    name: str
    ready: int | None
    consumers: int | None
    dead_letters: int | None


async def _service_health(client: httpx.AsyncClient, name: str, port: int, host: str) -> ServiceHealth:
    try:
        response = await client.get(f"http://{host}:{port}/readyz")
    except httpx.HTTPError as error:
        return ServiceHealth(name, port, "down", type(error).__name__)
    try:
        body = response.json()
    except ValueError:
        return ServiceHealth(name, port, "unknown", f"HTTP {response.status_code}")
    checks = body.get("checks", {}) if isinstance(body, dict) else {}
    failing = [check for check, ok in checks.items() if not ok]
    if response.status_code == 200:
        return ServiceHealth(name, port, "ready", ", ".join(f"{check} ok" for check in checks) or "ok")
    return ServiceHealth(name, port, "not ready", "failing: " + (", ".join(failing) or "shutting down"))


async def _queue_depths(amqp_url: str) -> list[QueueDepth] | str:
    try:
        connection = await asyncio.wait_for(aio_pika.connect(amqp_url), 5)
    except Exception as error:
        return f"broker unreachable: {error}"
    depths: list[QueueDepth] = []
    async with connection:
        for spec in QUEUES:
            ready = consumers = dead = None
            # A passive declare fails and closes its channel when the queue is missing, so one channel each.
            with contextlib.suppress(Exception):
                channel = await connection.channel()
                queue = await channel.declare_queue(spec.name, passive=True)
                ready = queue.declaration_result.message_count
                consumers = queue.declaration_result.consumer_count
                await channel.close()
            with contextlib.suppress(Exception):
                channel = await connection.channel()
                dlq = await channel.declare_queue(routing.dead_letter_queue(spec.name), passive=True)
                dead = dlq.declaration_result.message_count
                await channel.close()
            depths.append(QueueDepth(spec.name, ready, consumers, dead))
    return depths


@dataclass(frozen=True)
class DeviceFreshness:
    name: str
    last_reading_at: str | None
    age_s: float | None
    stale: bool


async def _device_freshness(
    client: httpx.AsyncClient, host: str, port: int, service_key: str | None
) -> list[DeviceFreshness] | str:
    if service_key is None:
        return "device telemetry unknown (GRIDLOOP_JWT_SECRET not set: /status/devices takes the service_role key)"
    try:
        response = await client.get(
            f"http://{host}:{port}/status/devices",
            headers={"apikey": service_key, "Authorization": f"Bearer {service_key}"},
        )
        response.raise_for_status()
        rows = response.json()
    except (httpx.HTTPError, ValueError) as error:
        return f"device telemetry unknown (telemetry-ingest: {type(error).__name__})"
    return [
        DeviceFreshness(
            str(row.get("name") or row.get("device")),
            row.get("last_reading_at"),
            row.get("age_s"),
            bool(row.get("stale")),
        )
        for row in rows
    ]


async def collect(
    *,
    amqp_url: str,
    host: str = "127.0.0.1",
    ports: dict[str, int] | None = None,
    service_key: str | None = None,
) -> tuple[list[ServiceHealth], list[QueueDepth] | str, list[DeviceFreshness] | str]:
    """Ask every service for /readyz, the broker for each queue's depth, ingest for device freshness (which
    takes the service_role key)."""
    chosen = {service.name: (ports or {}).get(service.name, service.port or 0) for service in SERVICES}
    async with httpx.AsyncClient(timeout=3.0) as client:
        services = await asyncio.gather(*(_service_health(client, name, port, host) for name, port in chosen.items()))
        devices = await _device_freshness(client, host, chosen["telemetry-ingest"], service_key)
    return list(services), await _queue_depths(amqp_url), devices


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(headers[index]), *(len(row[index]) for row in rows)) for index in range(len(headers))]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def render(
    services: list[ServiceHealth], queues: list[QueueDepth] | str, devices: list[DeviceFreshness] | str = ""
) -> str:
    """The status report as text."""
    text = table(
        ["SERVICE", "PORT", "STATE", "DETAIL"],
        [[service.name, str(service.port), service.state, service.detail] for service in services],
    )
    if isinstance(queues, str):
        return f"{text}\n\n{queues}"

    def show(value: int | None) -> str:
        return "missing" if value is None else str(value)

    text += "\n\n" + table(
        ["QUEUE", "READY", "CONSUMERS", "DEAD-LETTERED"],
        [[queue.name, show(queue.ready), show(queue.consumers), show(queue.dead_letters)] for queue in queues],
    )
    if isinstance(devices, str):
        return f"{text}\n\n{devices}" if devices else text
    if devices:
        text += "\n\n" + table(
            ["DEVICE", "LAST READING", "AGE", "STATE"],
            [
                [
                    device.name,
                    (device.last_reading_at or "never")[:19].replace("T", " "),
                    "-" if device.age_s is None else f"{device.age_s:.0f} s",
                    "STALE: not reporting" if device.stale else "reporting",
                ]
                for device in devices
            ],
        )
    return text
