"""The operator endpoints on the real broker: keys, bodies, and one RPC each to a stand-in optimizer.

The stand-in (conftest ``responder``) consumes the real ``optimizer.rpc`` queue, bound on ``gridloop.rpc``,
in the session's private vhost, and answers with an OperatorReply; by default it echoes what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gridloop_common.auth import issue_key
from gridloop_common.clock import Clock
from gridloop_common.contracts import OPERATOR_REQUESTS, OperatorReply, routing
from gridloop_common.messaging import Broker, PoisonMessage, open_broker
from gridloop_common.testing import FakeClock, TcpProxy
from webhook_gateway.operator_endpoints import ENDPOINTS, NOT_BUILT
from webhook_gateway.settings import GatewaySettings

from .conftest import JWT_SECRET, Responder, gateway_application, gateway_settings, key
from .operator_bodies import BAD_FIELDS, MISSING, VALID_BODIES, mutated

pytestmark = pytest.mark.connected

OPERATOR = key("grid_operator")
ROUTING_KEYS = {
    "/calculate_mpc": "optimizer.calculate_mpc",
    "/coordinatedac": "optimizer.coordinatedac",
    "/request_optimization_status": "optimizer.optimization_status",
    "/flattariff": "optimizer.flattariff",
    "/toutariff": "optimizer.toutariff",
    "/shift-consumption-tariff": "optimizer.shift_consumption_tariff",
}


@contextlib.asynccontextmanager
async def serving(
    settings: GatewaySettings, *, url: str, clock: Clock | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Broker]]:
    """The gateway on ``url`` (the test vhost, or a proxy in front of it) as an HTTP client, and its broker."""
    async with (
        open_broker(settings.amqp, client_name="test-gateway-operator", url=url) as broker,
        gateway_application(settings, broker, clock=clock) as application,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://gateway") as client,
    ):
        yield client, broker


@pytest.fixture
async def operator(amqp_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway (10 s RPC timeout) as an HTTP client."""
    async with serving(gateway_settings(amqp_url), url=amqp_url) as (client, _):
        yield client


def test_the_routing_keys_are_the_contract_and_reach_the_optimizer_queue() -> None:
    assert {endpoint.path: endpoint.routing_key for endpoint in ENDPOINTS} == ROUTING_KEYS
    assert set(routing.OperatorRpc.ALL) == set(OPERATOR_REQUESTS) == {*ROUTING_KEYS.values(), "optimizer.stop_mpc"}
    for endpoint in ENDPOINTS:
        assert OPERATOR_REQUESTS[endpoint.routing_key] is endpoint.request
        assert endpoint.routing_key.startswith("optimizer.")  # bound to optimizer.rpc by optimizer.#


@pytest.mark.parametrize("path", list(VALID_BODIES))
@pytest.mark.parametrize("role", ["grid_operator", "service_role"])
async def test_a_valid_body_is_sent_on_its_routing_key_and_the_reply_is_the_answer(
    operator: httpx.AsyncClient, responder: Responder, path: str, role: str
) -> None:
    response = await operator.post(path, json=VALID_BODIES[path], headers=key(role))

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["routing_key"] == ROUTING_KEYS[path]
    # What the optimizer got is the contract model's JSON of the body: parse both and compare.
    model = OPERATOR_REQUESTS[ROUTING_KEYS[path]]
    assert model.model_validate(answer["request"]) == model.model_validate(VALID_BODIES[path])
    assert response.headers["x-correlation-id"]


async def test_the_site_scope_is_sent_as_a_list(operator: httpx.AsyncClient, responder: Responder) -> None:
    one = await operator.post("/flattariff", json={**VALID_BODIES["/flattariff"], "site": "north"}, headers=OPERATOR)
    every = await operator.post("/flattariff", json=VALID_BODIES["/flattariff"], headers=OPERATOR)

    assert one.json()["request"]["site"] == ["north"]
    assert every.json()["request"]["site"] is None


@pytest.mark.parametrize("path", ["/coordinatedac", "/request_optimization_status"])
async def test_an_empty_body_is_every_default(operator: httpx.AsyncClient, responder: Responder, path: str) -> None:
    response = await operator.post(path, headers=OPERATOR)

    assert response.status_code == 200, response.text
    model = OPERATOR_REQUESTS[ROUTING_KEYS[path]]
    assert model.model_validate(response.json()["request"]) == model()


async def test_calculate_mpc_without_a_body_stops_the_mpc_for_the_scope(
    operator: httpx.AsyncClient, responder: Responder
) -> None:
    everywhere = await operator.post("/calculate_mpc", headers=OPERATOR)
    two_sites = await operator.post("/calculate_mpc", params=[("site", "north"), ("site", "south")], headers=OPERATOR)

    assert everywhere.status_code == 200, everywhere.text
    assert everywhere.json() == {"routing_key": "optimizer.stop_mpc", "request": {"site": None}}
    assert two_sites.json() == {"routing_key": "optimizer.stop_mpc", "request": {"site": ["north", "south"]}}


async def test_the_scope_goes_in_the_body_when_there_is_one(operator: httpx.AsyncClient, responder: Responder) -> None:
    response = await operator.post(
        "/flattariff", params={"site": "north"}, json=VALID_BODIES["/flattariff"], headers=OPERATOR
    )

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["query.site"]
    assert responder.requests == []


async def test_mpc_start_and_stop_default_to_the_next_step_boundary_and_two_hours_later(
    amqp_url: str, responder: Responder
) -> None:
    clock = FakeClock(datetime(2026, 6, 1, 18, 7, 30, tzinfo=UTC))
    body = {name: value for name, value in VALID_BODIES["/calculate_mpc"].items() if name not in ("start", "stop")}
    # Issued at the gateway's time, which is in the past: a key issued now would be from its future.
    headers = {"Authorization": f"Bearer {issue_key(JWT_SECRET, 'grid_operator', clock=clock)}"}
    async with serving(gateway_settings(amqp_url), url=amqp_url, clock=clock) as (client, _):
        quarter = await client.post("/calculate_mpc", json={**body, "interval": 15}, headers=headers)
        clock.advance(3600)
        ten = await client.post("/calculate_mpc", json=body, headers=headers)
        stop_only = await client.post("/calculate_mpc", json={**body, "stop": "2026-06-01T19:00:00Z"}, headers=headers)

    assert quarter.status_code == 200, quarter.text
    sent = quarter.json()["request"]
    assert (sent["start"], sent["stop"]) == ("2026-06-01T18:15:00Z", "2026-06-01T20:15:00Z")
    sent = ten.json()["request"]
    assert (sent["start"], sent["stop"]) == ("2026-06-01T19:10:00Z", "2026-06-01T21:10:00Z")
    # The default start (19:10) is after the stop given: the stop is what is wrong.
    assert stop_only.status_code == 422
    assert [error["field"] for error in stop_only.json()["errors"]] == ["stop"]


@pytest.mark.parametrize(
    ("path", "field", "value"),
    BAD_FIELDS,
    ids=[
        f"{path}-{field}-{'missing' if value is MISSING else json.dumps(value)[:20]}"
        for path, field, value in BAD_FIELDS
    ],
)
async def test_each_bad_field_is_a_422_naming_it(
    operator: httpx.AsyncClient, path: str, field: str, value: Any
) -> None:
    response = await operator.post(path, json=mutated(path, field, value), headers=OPERATOR)

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_request"
    named = {error["field"].split(".")[0] for error in answer["errors"]}
    assert named == {field}, answer
    assert field in answer["message"]


async def test_every_bad_field_of_a_body_is_named(operator: httpx.AsyncClient) -> None:
    body = {
        **VALID_BODIES["/calculate_mpc"],
        "interval": 0,
        "site": [],
        "water_heater": "maybe",
        "power_limit": {},
        "extra": 1,
    }
    del body["prices"]
    response = await operator.post("/calculate_mpc", json=body, headers=OPERATOR)

    assert response.status_code == 422
    named = {error["field"].split(".")[0] for error in response.json()["errors"]}
    assert named == {"interval", "site", "water_heater", "power_limit", "prices", "extra"}


@pytest.mark.parametrize("path", list(VALID_BODIES))
@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"[1, 2]", 422, "invalid_request"),
        (b'"text"', 422, "invalid_request"),
        (b"null", 422, "invalid_request"),
        (b"{not json", 400, "invalid_json"),
        (b'{"interval": NaN}', 400, "invalid_json"),
        (b'{"site": "\\u0000"}', 400, "invalid_json"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_refused(
    operator: httpx.AsyncClient, path: str, body: bytes, status: int, error: str
) -> None:
    response = await operator.post(path, content=body, headers={**OPERATOR, "content-type": "application/json"})

    assert (response.status_code, response.json()["error"]) == (status, error), response.text
    assert response.json()["errors"]


async def test_content_type_and_size(operator: httpx.AsyncClient) -> None:
    as_text = await operator.post("/flattariff", content=b"{}", headers={**OPERATOR, "content-type": "text/plain"})
    too_large = await operator.post(
        "/flattariff", content=b" " * 1_048_577 + b"{}", headers={**OPERATOR, "content-type": "application/json"}
    )

    assert (as_text.status_code, as_text.json()["error"]) == (415, "unsupported_media_type")
    assert (too_large.status_code, too_large.json()["error"]) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("reply", "status", "body"),
    [
        (OperatorReply(body={"run_id": "r1", "state": "optimal"}), 200, {"run_id": "r1", "state": "optimal"}),
        (
            OperatorReply.refused(409, "no_prices", "no tariff and no market prices for 2026-06-02"),
            409,
            {"error": "no_prices", "message": "no tariff and no market prices for 2026-06-02"},
        ),
        (
            OperatorReply.refused(
                422, "invalid_request", "site: unknown", errors=[{"field": "site", "message": "unknown site"}]
            ),
            422,
            {
                "error": "invalid_request",
                "message": "site: unknown",
                "errors": [{"field": "site", "message": "unknown site"}],
            },
        ),
    ],
)
async def test_the_services_status_and_body_are_the_answer(
    operator: httpx.AsyncClient, responder: Responder, reply: OperatorReply, status: int, body: dict[str, Any]
) -> None:
    responder.reply = lambda routing_key, request: reply.model_dump_json().encode()

    response = await operator.post("/coordinatedac", json={}, headers=OPERATOR)

    assert (response.status_code, response.json()) == (status, body)


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        b'{"status": 200, "body": {"objective": NaN}}',
        b'{"status": 500, "body": {}}',
        b'{"status": 200, "body": [1, 2]}',
        b'{"body": {}, "status": 200, "extra": true}',
        b"[]",
    ],
)
async def test_a_reply_that_is_not_an_operator_reply_is_a_502(
    operator: httpx.AsyncClient, responder: Responder, reply: bytes
) -> None:
    responder.reply = lambda routing_key, request: reply

    response = await operator.post("/request_optimization_status", headers=OPERATOR)

    assert (response.status_code, response.json()["error"]) == (502, "bad_gateway")
    assert "optimizer.optimization_status" in response.json()["message"]


async def test_a_failing_service_is_a_502_with_its_reason(operator: httpx.AsyncClient, responder: Responder) -> None:
    def fail(routing_key: str, request: Any) -> bytes:
        raise PoisonMessage(f"unknown optimizer request {routing_key!r}")

    responder.reply = fail

    response = await operator.post("/toutariff", json=VALID_BODIES["/toutariff"], headers=OPERATOR)

    assert response.status_code == 502
    assert response.json()["message"] == ("optimizer.toutariff failed: unknown optimizer request 'optimizer.toutariff'")


async def test_no_reply_in_time_is_a_504(amqp_url: str) -> None:
    # Nothing consumes optimizer.rpc: the request waits in the queue and expires with the timeout.
    settings = gateway_settings(amqp_url, gateway_rpc_timeout_s=0.3)
    async with serving(settings, url=amqp_url) as (client, _):
        response = await client.post("/flattariff", json=VALID_BODIES["/flattariff"], headers=OPERATOR)

    assert response.status_code == 504
    assert response.json() == {
        "error": "gateway_timeout",
        "message": "no reply to 'optimizer.flattariff' within 0.3 s: is the serving service running?",
    }


async def test_an_unreachable_broker_is_a_503(amqp_url: str) -> None:
    settings = gateway_settings(amqp_url)
    async with TcpProxy(upstream_host="127.0.0.1", upstream_port=5672) as proxy:
        proxied = amqp_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        async with serving(settings, url=proxied) as (client, broker):
            proxy.refusing = True
            proxy.cut()
            async with asyncio.timeout(10):
                while broker.connection.connected.is_set():
                    await asyncio.sleep(0.02)
            response = await client.post("/coordinatedac", json={}, headers=OPERATOR)
            proxy.refusing = False

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "broker_unavailable"


@pytest.mark.parametrize(("path", "method"), [(each.path, each.method) for each in NOT_BUILT])
async def test_the_endpoints_later_issues_build_answer_501_naming_the_issue(
    operator: httpx.AsyncClient, path: str, method: str
) -> None:
    response = await operator.request(method, path, headers=OPERATOR)
    unauthenticated = await operator.request(method, path)

    assert response.status_code == 501
    assert response.json()["error"] == "not_implemented"
    assert "gridloop issue 20" in response.json()["message"]
    assert unauthenticated.status_code == 401


@pytest.mark.parametrize("path", [*VALID_BODIES, *(each.path for each in NOT_BUILT if each.method == "POST")])
@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "invalid_token"),
        ({"Authorization": "Bearer a.b.c"}, 401, "invalid_token"),
        ({"apikey": "not-a-jwt"}, 401, "invalid_token"),
        (key("grid_operator", exp=1_000_000_000), 401, "invalid_token"),  # expired in 2001
        ({"Authorization": "Bearer " + key("grid_operator")["Authorization"][7:-2] + "xx"}, 401, "invalid_token"),
        (key("anon"), 403, "forbidden"),
        (key("authenticated"), 403, "forbidden"),
        (key("postgres"), 403, "forbidden"),
        (key("grid_operators"), 403, "forbidden"),
        # A valid operator apikey does not cover an invalid Bearer key.
        ({**key("grid_operator"), "apikey": "x.y.z"}, 401, "invalid_token"),
    ],
)
async def test_keys_401_and_403(
    operator: httpx.AsyncClient, responder: Responder, path: str, headers: dict[str, str], status: int, error: str
) -> None:
    response = await operator.post(path, json=VALID_BODIES.get(path, {}), headers=headers)

    assert (response.status_code, response.json()["error"]) == (status, error), response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert responder.requests == []


async def test_a_key_signed_with_another_secret_is_refused_and_an_apikey_header_is_taken(
    operator: httpx.AsyncClient, responder: Responder
) -> None:
    forged = issue_key("another-secret-of-at-least-thirty-two-chars", "grid_operator")
    apikey = issue_key(JWT_SECRET, "service_role")

    refused = await operator.post("/coordinatedac", json={}, headers={"Authorization": f"Bearer {forged}"})
    accepted = await operator.post("/coordinatedac", json={}, headers={"apikey": apikey})

    assert (refused.status_code, refused.json()["message"]) == (401, "JWT cryptographic operation failed")
    assert accepted.status_code == 200, accepted.text
