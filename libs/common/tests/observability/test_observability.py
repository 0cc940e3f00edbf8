"""JSON log lines and the health endpoints."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from starlette.applications import Starlette

import gridloop_common.messaging  # noqa: F401  (registers the messaging metrics)
from gridloop_common.observability import Health, configure_logging, correlation_id, health_routes
from gridloop_common.testing import FakeClock


def test_log_lines_are_json_with_service_and_correlation_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(service="scheduler", level="INFO")
    try:
        with correlation_id("abc123"):
            logging.getLogger("scheduler.handlers").info("command scheduled", extra={"command_id": "c-1"})
        logging.getLogger("scheduler.handlers").debug("hidden")
    finally:
        logging.getLogger().handlers.clear()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["service"] == "scheduler"
    assert record["message"] == "command scheduled"
    assert record["correlation_id"] == "abc123"
    assert record["command_id"] == "c-1"
    assert record["level"] == "info"


async def test_readiness_reflects_checks_and_shutdown() -> None:
    health = Health(service="example")
    state = {"database": True}

    async def database() -> bool:
        return state["database"]

    async def broken() -> bool:
        raise ConnectionError("down")

    health.add_check("database", database)
    transport = httpx.ASGITransport(app=Starlette(routes=health_routes(health)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/healthz")).json() == {"status": "alive", "service": "example"}
        assert (await client.get("/readyz")).status_code == 200
        state["database"] = False
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {"database": False}
        state["database"] = True
        health.add_check("broker", broken)
        assert (await client.get("/readyz")).json()["checks"] == {"database": True, "broker": False}
        health.add_check("broker", database)
        assert (await client.get("/readyz")).status_code == 200
        health.shutting_down = True
        assert (await client.get("/readyz")).status_code == 503
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "gridloop_messages_published_total" in metrics.text


async def test_fake_clock_wakes_sleepers_only_when_advanced() -> None:
    import asyncio

    clock = FakeClock()
    start = clock.now()
    sleeper = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    clock.advance(5)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(5)
    await asyncio.wait_for(sleeper, 1)
    assert (clock.now() - start).total_seconds() == 10


def test_log_lines_carry_no_token_material(capsys: pytest.CaptureFixture[str]) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2lnbmF0dXJlLW9mLXRoZS1rZXk"
    opaque = "upstream-bearer-7f3a9c"
    configure_logging(service="telemetry-ingest", level="INFO")
    try:
        log = logging.getLogger("uvicorn.error")
        # uvicorn's websocket handshake line, with its arguments, and its colour variant as an extra.
        log.info(
            '%s - "WebSocket %s" [accepted]',
            "127.0.0.1:5000",
            f"/realtime/v1/websocket?apikey={token}&vsn=1.0.0",
            extra={"color_message": f"/realtime/v1/websocket?access_token={token}"},
        )
        log.info("headers %s", [(b"authorization", f"Bearer {opaque}".encode()), (b"apikey", token.encode())])
        log.warning(
            "upstream refused", extra={"request": f"Authorization: Bearer {opaque}", "url": f"/x?token={opaque}"}
        )
        try:
            raise ValueError(f"bad key {token}")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    text = capsys.readouterr().err
    lines = [json.loads(line) for line in text.strip().splitlines()]
    assert len(lines) == 4
    assert "apikey=[redacted]&vsn=1.0.0" in lines[0]["message"]
    assert "[redacted]" in lines[3]["exception"]
    for part in [*token.split("."), opaque]:
        assert part not in text
