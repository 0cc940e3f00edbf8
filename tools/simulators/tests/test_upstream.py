"""The upstream simulator over real HTTP: commands API, ack recording, auth, failure injection, webhooks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gridloop_simulators import upstream
from gridloop_simulators.upstream import UpstreamSimulator, demo_command
from webhook_gateway.signatures import SignatureError, verify

SECRET = "whsec_" + base64.b64encode(b"upstream-simulator-test-secret!!").decode()
FAST_RETRIES = (0.01, 0.02, 0.04)
COMMAND_FIELDS = {
    "id",
    "event_id",
    "device_id",
    "starts_at",
    "ends_at",
    "duration_s",
    "is_preparatory_action",
    "battery_commands",
    "status",
    "device_status",
    "device_status_reason",
    "created_at",
    "updated_at",
}


def a_command(**overrides: Any) -> dict[str, Any]:
    command: dict[str, Any] = {
        "device_id": "battery-1",
        "starts_at": "2025-01-15T13:00:00.000Z",
        "ends_at": "2025-01-15T14:00:00.000Z",
        "battery_commands": {"mode": "DISCHARGE", "power_mode": "SETPOINT", "setpoint_w": 3000},
    }
    command.update(overrides)
    return command


class _QuietServer(uvicorn.Server):
    # pytest owns the signal handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port; yields its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    server = _QuietServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(5):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        listener.close()


class Receiver:
    """A webhook endpoint that verifies each delivery and can be told to fail the first ones."""

    def __init__(self, *, fail_first: int = 0, fail_status: int = 503) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self._arrival = asyncio.Event()
        self.app = Starlette(routes=[Route("/v1/webhooks", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        try:
            webhook_id = verify(headers=request.headers, body=body, secrets=[SECRET], now=datetime.now(UTC))
        except SignatureError as error:
            self._record(request, error=str(error))
            return JSONResponse({"error": error.code, "message": str(error)}, status_code=error.http_status)
        if self.fail_first > 0:
            self.fail_first -= 1
            self._record(request, error="told to fail")
            return Response(status_code=self.fail_status)
        self.accepted.append(
            {
                "webhook_id": webhook_id,
                "timestamp": int(request.headers["webhook-timestamp"]),
                "envelope": json.loads(body),
            }
        )
        self._record(request, error=None)
        return Response(status_code=204)

    def _record(self, request: Request, *, error: str | None) -> None:
        self.requests.append(
            {
                "webhook_id": request.headers.get("webhook-id"),
                "timestamp": request.headers.get("webhook-timestamp"),
                "error": error,
            }
        )
        self._arrival.set()

    async def wait_for_accepted(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout_s):
            while len(self.accepted) < count:
                self._arrival.clear()
                await self._arrival.wait()
        return self.accepted


@pytest.fixture
async def simulator() -> AsyncIterator[UpstreamSimulator]:
    async with UpstreamSimulator() as running:
        yield running


@pytest.fixture
async def client(simulator: UpstreamSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=simulator.url, timeout=5) as http:
        yield http


async def test_get_commands_lists_full_seed_commands(simulator: UpstreamSimulator, client: httpx.AsyncClient) -> None:
    first = simulator.add_command(a_command(), notify=False)
    simulator.add_command(a_command(device_id="battery-2"), notify=False)

    response = await client.get("/v1/commands")
    assert response.status_code == 200
    commands = response.json()
    assert [command["device_id"] for command in commands] == ["battery-1", "battery-2"]
    assert set(commands[0]) == COMMAND_FIELDS
    assert commands[0] == first
    assert first["status"] == "OK"
    assert first["device_status"] == "PENDING"
    assert first["duration_s"] == 3600
    assert first["battery_commands"]["enable_grid_import"] is None

    filtered = await client.get("/v1/commands", params={"device_id": "battery-2"})
    assert [command["device_id"] for command in filtered.json()] == ["battery-2"]


async def test_patch_is_recorded_and_applied_on_both_path_forms(
    simulator: UpstreamSimulator, client: httpx.AsyncClient
) -> None:
    command = simulator.add_command(a_command(), notify=False)
    plural = await client.patch(
        f"/v1/commands/{command['id']}", json={"device_status": "OK", "device_status_reason": "Scheduled"}
    )
    assert plural.status_code == 200
    assert plural.json()["device_status"] == "OK"
    assert simulator.command(command["id"])["device_status_reason"] == "Scheduled"
    # An ack is the integrator's field; the upstream's version stamp stays.
    assert plural.json()["updated_at"] == command["updated_at"]

    singular = await client.patch(
        f"/v1/command/{command['id']}",
        json={"device_status": "FAILED", "device_status_reason": "Device offline"},
    )
    assert singular.status_code == 200
    assert simulator.command(command["id"])["device_status"] == "FAILED"

    acks = (await client.get("/_sim/acks")).json()
    assert acks == simulator.acks
    assert [(ack["path"], ack["device_status"], ack["status_code"]) for ack in acks] == [
        (f"/v1/commands/{command['id']}", "OK", 200),
        (f"/v1/command/{command['id']}", "FAILED", 200),
    ]
    assert all(datetime.fromisoformat(ack["received_at"]).tzinfo is not None for ack in acks)


@pytest.mark.parametrize(
    ("body", "status_code"),
    [
        ({"device_status": "PENDING"}, 422),
        ({"device_status": "FAILED"}, 422),
        ({"device_status": "OK", "note": "typo"}, 422),
        ({"device_status": ["OK"]}, 422),
        (["OK"], 400),
    ],
)
async def test_a_bad_ack_is_refused_and_recorded(
    simulator: UpstreamSimulator, client: httpx.AsyncClient, body: object, status_code: int
) -> None:
    command = simulator.add_command(a_command(), notify=False)
    response = await client.patch(f"/v1/commands/{command['id']}", json=body)
    assert response.status_code == status_code
    assert response.json()["message"]
    assert simulator.command(command["id"])["device_status"] == "PENDING"
    assert [ack["status_code"] for ack in simulator.acks] == [status_code]
    assert simulator.acks[0]["error"]


async def test_an_ack_for_an_unknown_command_is_404(client: httpx.AsyncClient) -> None:
    response = await client.patch("/v1/commands/497f6eca-6276-4993-bfeb-53cbbbba6f08", json={"device_status": "OK"})
    assert response.status_code == 404


async def test_the_token_is_required_when_configured() -> None:
    async with (
        UpstreamSimulator(token="client-token") as simulator,
        httpx.AsyncClient(base_url=simulator.url) as client,
    ):
        command = simulator.add_command(a_command(), notify=False)
        missing = await client.get("/v1/commands")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await client.get("/v1/commands", headers={"Authorization": "Bearer other"})
        assert wrong.status_code == 403
        refused_ack = await client.patch(f"/v1/commands/{command['id']}", json={"device_status": "OK"})
        assert refused_ack.status_code == 401
        assert simulator.command(command["id"])["device_status"] == "PENDING"

        authorised = {"Authorization": "Bearer client-token"}
        assert (await client.get("/v1/commands", headers=authorised)).status_code == 200
        ack = await client.patch(f"/v1/commands/{command['id']}", json={"device_status": "OK"}, headers=authorised)
        assert ack.status_code == 200
        assert [ack["status_code"] for ack in simulator.acks] == [401, 200]


async def test_fail_next_gives_the_status_then_recovers(
    simulator: UpstreamSimulator, client: httpx.AsyncClient
) -> None:
    simulator.fail_next(2, 503, retry_after_s=7)
    first = await client.get("/v1/commands")
    assert first.status_code == 503
    assert first.headers["retry-after"] == "7"
    assert (await client.get("/v1/commands")).status_code == 503
    assert (await client.get("/v1/commands")).status_code == 200
    # The test endpoints themselves never fail.
    assert (await client.get("/_sim/acks")).status_code == 200


async def test_fail_over_http_and_for_a_duration(simulator: UpstreamSimulator, client: httpx.AsyncClient) -> None:
    command = simulator.add_command(a_command(), notify=False)
    assert (await client.post("/_sim/fail", json={"status": 500, "count": 1})).status_code == 200
    failed = await client.patch(f"/v1/commands/{command['id']}", json={"device_status": "OK"})
    assert failed.status_code == 500
    assert simulator.command(command["id"])["device_status"] == "PENDING"
    assert simulator.acks[-1]["status_code"] == 500

    assert (await client.post("/_sim/fail", json={"status": 502, "duration_s": 0.2})).status_code == 200
    assert (await client.get("/v1/commands")).status_code == 502
    async with asyncio.timeout(5):
        while (await client.get("/v1/commands")).status_code != 200:
            await asyncio.sleep(0.02)
    assert (await client.post("/_sim/fail", json={"status": 200})).status_code == 422


async def test_commands_can_be_added_replaced_and_canceled_over_http(
    simulator: UpstreamSimulator, client: httpx.AsyncClient
) -> None:
    created = await client.post("/_sim/commands", params={"notify": "false"}, json=a_command())
    assert created.status_code == 201
    command = created.json()

    replacement = a_command(id=command["id"], battery_commands={"mode": "STANDBY"})
    replaced = await client.post("/_sim/commands", params={"notify": "false"}, json=replacement)
    assert replaced.status_code == 200
    assert replaced.json()["created_at"] == command["created_at"]
    assert replaced.json()["updated_at"] > command["updated_at"]
    assert replaced.json()["battery_commands"]["mode"] == "STANDBY"

    canceled = await client.post(f"/_sim/commands/{command['id']}/cancel", json={"status": "OPT_OUT"})
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "OPT_OUT"
    assert canceled.json()["device_status"] == "PENDING"
    assert canceled.json()["updated_at"] > replaced.json()["updated_at"]

    assert (await client.post("/_sim/commands/unknown/cancel")).status_code == 404
    invalid = await client.post("/_sim/commands", json=a_command(colour="blue"))
    assert invalid.status_code == 422
    assert "colour" in invalid.json()["message"]
    assert len(simulator.commands) == 1


def test_commands_outside_seed_002_are_refused() -> None:
    simulator = UpstreamSimulator()
    with pytest.raises(ValueError, match="mode"):
        simulator.add_command(a_command(battery_commands={"mode": "TURBO"}), notify=False)
    with pytest.raises(ValueError, match="time zone"):
        simulator.add_command(a_command(starts_at="2025-01-15T13:00:00"), notify=False)
    with pytest.raises(ValueError, match="UUID"):
        simulator.add_command(a_command(id="not-a-uuid"), notify=False)


async def test_webhooks_are_signed_and_carry_the_envelope() -> None:
    receiver = Receiver()
    async with (
        serve(receiver.app) as receiver_url,
        UpstreamSimulator(webhook_url=f"{receiver_url}/v1/webhooks", webhook_secret=SECRET) as simulator,
    ):
        command = simulator.add_command(a_command())
        replaced = simulator.add_command(a_command(id=command["id"], battery_commands={"mode": "BACKUP"}))
        canceled = simulator.cancel(command["id"])
        accepted = await receiver.wait_for_accepted(3)
        for delivery in simulator.deliveries:
            await delivery.wait(5)

    # Deliveries run concurrently, so compare by event type rather than by arrival order.
    by_type = {delivery["envelope"]["event_type"]: delivery for delivery in accepted}
    assert set(by_type) == {"command.created", "command.updated", "command.canceled"}
    assert by_type["command.created"]["envelope"]["event_object"] == command
    assert by_type["command.updated"]["envelope"]["event_object"] == replaced
    assert by_type["command.canceled"]["envelope"]["event_object"] == canceled
    assert canceled["status"] == "CANCELED"
    assert canceled["device_status"] == "PENDING"
    assert canceled["updated_at"] > replaced["updated_at"] > command["updated_at"]
    assert len({delivery["webhook_id"] for delivery in accepted}) == 3
    for received in accepted:
        assert set(received["envelope"]) == {"event_type", "event_object", "timestamp"}
    assert all(delivery.state == "delivered" for delivery in simulator.deliveries)


async def test_a_failed_delivery_is_retried_with_the_same_id() -> None:
    receiver = Receiver(fail_first=2, fail_status=503)
    async with (
        serve(receiver.app) as receiver_url,
        UpstreamSimulator(
            webhook_url=f"{receiver_url}/v1/webhooks", webhook_secret=SECRET, retry_delays_s=FAST_RETRIES
        ) as simulator,
    ):
        simulator.add_command(a_command())
        delivery = simulator.deliveries[-1]
        await delivery.wait(5)
        accepted = await receiver.wait_for_accepted(1)

    assert delivery.state == "delivered"
    assert [attempt.status_code for attempt in delivery.attempts] == [503, 503, 204]
    assert [request["webhook_id"] for request in receiver.requests] == [delivery.webhook_id] * 3
    assert accepted[0]["webhook_id"] == delivery.webhook_id


async def test_delivery_gives_up_after_the_last_retry() -> None:
    receiver = Receiver(fail_first=100, fail_status=500)
    async with (
        serve(receiver.app) as receiver_url,
        UpstreamSimulator(
            webhook_url=f"{receiver_url}/v1/webhooks", webhook_secret=SECRET, retry_delays_s=FAST_RETRIES
        ) as simulator,
    ):
        simulator.add_command(a_command())
        delivery = simulator.deliveries[-1]
        await delivery.wait(5)
        async with httpx.AsyncClient(base_url=simulator.url) as client:
            listed = (await client.get("/_sim/deliveries")).json()

    assert delivery.state == "failed"
    assert len(delivery.attempts) == 1 + len(FAST_RETRIES)
    assert listed[0]["state"] == "failed"
    assert [attempt["status_code"] for attempt in listed[0]["attempts"]] == [500] * 4


async def test_an_unreachable_receiver_is_retried_then_given_up() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here now
    async with UpstreamSimulator(
        webhook_url=f"http://127.0.0.1:{port}/v1/webhooks", webhook_secret=SECRET, retry_delays_s=FAST_RETRIES
    ) as simulator:
        simulator.add_command(a_command())
        delivery = simulator.deliveries[-1]
        await delivery.wait(5)
    assert delivery.state == "failed"
    assert all(attempt.status_code is None and attempt.error for attempt in delivery.attempts)


async def test_gone_disables_the_endpoint() -> None:
    receiver = Receiver(fail_first=1, fail_status=410)
    async with (
        serve(receiver.app) as receiver_url,
        UpstreamSimulator(
            webhook_url=f"{receiver_url}/v1/webhooks", webhook_secret=SECRET, retry_delays_s=FAST_RETRIES
        ) as simulator,
    ):
        simulator.add_command(a_command())
        await simulator.deliveries[-1].wait(5)
        assert simulator.webhooks_disabled
        assert len(simulator.deliveries[-1].attempts) == 1
        skipped = simulator.send_event("command.updated", {"id": "x"})
        assert skipped.state == "failed"

        simulator.enable_webhooks()
        simulator.add_command(a_command())
        await receiver.wait_for_accepted(1)


async def test_a_skewed_sender_clock_is_refused_by_the_receiver() -> None:
    receiver = Receiver()
    async with (
        serve(receiver.app) as receiver_url,
        UpstreamSimulator(
            webhook_url=f"{receiver_url}/v1/webhooks",
            webhook_secret=SECRET,
            retry_delays_s=(),
            clock=lambda: datetime.now(UTC) - timedelta(minutes=10),
        ) as simulator,
    ):
        simulator.add_command(a_command())
        delivery = simulator.deliveries[-1]
        await delivery.wait(5)
    assert [attempt.status_code for attempt in delivery.attempts] == [401]
    assert "past" in (receiver.requests[0]["error"] or "")


def test_the_simulator_signer_matches_the_gateway_verifier() -> None:
    body = b'{"event_type":"command.created"}'
    now = datetime.now(UTC)
    timestamp = int(now.timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": upstream.sign(secret=SECRET, webhook_id="msg_1", timestamp=timestamp, body=body),
    }
    assert verify(headers=headers, body=body, secrets=[SECRET], now=now) == "msg_1"


def test_the_demo_command_is_a_five_minute_discharge_starting_in_a_minute() -> None:
    now = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
    command = UpstreamSimulator().add_command(demo_command(now=now), notify=False)
    assert command["device_id"] == "battery-1"
    assert datetime.fromisoformat(command["starts_at"]) == now + timedelta(minutes=1)
    assert datetime.fromisoformat(command["ends_at"]) == now + timedelta(minutes=6)
    assert command["duration_s"] == 300
    assert command["battery_commands"]["mode"] == "DISCHARGE"
    assert command["battery_commands"]["power_mode"] == "SETPOINT"
    assert command["battery_commands"]["setpoint_w"] == 3000


async def test_main_with_demo_sends_the_demo_command() -> None:
    receiver = Receiver()
    async with serve(receiver.app) as receiver_url:
        arguments = ["--port", "0", "--webhook-url", f"{receiver_url}/v1/webhooks", "--webhook-secret", SECRET]
        running = asyncio.create_task(upstream.main([*arguments, "--demo"]))
        try:
            accepted = await receiver.wait_for_accepted(1)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    envelope = accepted[0]["envelope"]
    assert envelope["event_type"] == "command.created"
    assert envelope["event_object"]["battery_commands"]["setpoint_w"] == 3000


async def test_main_refuses_a_webhook_url_without_a_secret() -> None:
    with pytest.raises(SystemExit) as caught:
        await upstream.main(["--webhook-url", "http://127.0.0.1:1/v1/webhooks"])
    assert caught.value.code == 2
