"""Hypothesis-generated junk on every surface of telemetry-ingest, served by uvicorn on a real database.

The REST API (`/rest/v1/<table>` with junk query strings, headers and bodies under every key role,
`/rest/v1/rpc/*`, `/rest/v1/`), `/status/devices`, the health routes, and the realtime websocket (junk
text frames, Phoenix messages of both serializers, binary frames). No answer may be a 5xx, a websocket
must answer or close with a code other than 1011, and nothing may be logged at ERROR or with a traceback.
Schemathesis (test_rest_api_schemathesis.py) covers what the OpenAPI description can say; this covers
what it cannot: query grammar, headers, non-JSON bodies and the websocket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from gridloop_common.observability import Health, serve_http
from telemetry_ingest.api.auth import Authenticator
from telemetry_ingest.api.device_status import DeviceFreshness, device_status_route
from telemetry_ingest.api.postgrest import load_catalogue
from telemetry_ingest.api.routes import build_app
from telemetry_ingest.ingest.repository import ReadingsRepository
from telemetry_ingest.realtime import RealtimeHub, realtime_route
from telemetry_ingest.realtime.protocol import close_reason
from telemetry_ingest.settings import IngestSettings

from .api_fixtures import OWNER, SECRET, ControlledClock, ServedApi, key

pytestmark = pytest.mark.connected

JUNK_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
ROLES = ("anon", "authenticated", "service_role")
TABLES = ("mg_device_registry", "mg_bess_readings", "mg_meter_readings", "market_data", "market_data_types", "nothing")
COLUMNS = ("device_id", "ts", "soc_pct", "power_w", "energy_wh", "device_type", "metadata", "created_at", "*", "")
RPCS = ("get_meter_readings_5m", "get_meter_readings_30m", "no_such_function")
# Internal-error and unavailable answers the server may give under load; junk must cause neither.
SERVER_ERROR = 500


class ErrorRecords(logging.Handler):
    """Every log record at ERROR or above, or carrying a traceback, from any logger and thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def take(self) -> list[str]:
        found = [f"{record.name}: {record.getMessage()} {record.exc_info!r}" for record in self.records]
        self.records.clear()
        return found


class ServedIngest(ServedApi):
    """The API as the service assembles it: REST, /status/devices and realtime, on uvicorn in a thread."""

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with open_pool(self.database_url, min_size=1, max_size=8) as pool:
            await apply_migrations(pool, owner=OWNER, migrations=load_migrations("telemetry_ingest"))
            async with pool.acquire() as connection:
                catalogue = await load_catalogue(connection)
            async with RealtimeHub(self.database_url) as hub:
                app = build_app(
                    pool=pool,
                    catalogue=catalogue,
                    settings=IngestSettings(jwt_secret=SECRET),
                    health=Health(service="telemetry-ingest-test"),
                    clock=self.clock,
                    extra_routes=[
                        device_status_route(
                            DeviceFreshness(pool, ReadingsRepository(pool), poll_interval_s=5.0),
                            authenticator=Authenticator(SECRET),
                        ),
                        realtime_route(hub, SECRET),
                    ],
                )
                async with serve_http(app, host="127.0.0.1", port=self.port):
                    self._ready.set()
                    await self._stop.wait()


@pytest.fixture(scope="module")
def junk_database_url(database_url: str) -> Iterator[str]:
    """A database of this module's own: the junk deletes and updates rows, which other tests must not see."""
    server, name = database_url.rsplit("/", 1)
    junk_name = f"{name}_junk"

    async def execute(statement: str) -> None:
        connection = await asyncpg.connect(f"{server}/postgres")
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f'CREATE DATABASE "{junk_name}"'))
    try:
        yield f"{server}/{junk_name}"
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{junk_name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def error_records() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


@pytest.fixture(scope="module")
def served(junk_database_url: str, error_records: ErrorRecords) -> Iterator[ServedIngest]:
    clock = ControlledClock()
    server = ServedIngest(junk_database_url, clock)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert error_records.take() == []


@pytest.fixture(scope="module")
def client(served: ServedIngest) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30.0) as opened:
        yield opened


def _check(response: httpx.Response, errors: ErrorRecords) -> None:
    assert response.status_code < SERVER_ERROR, (response.status_code, response.text[:2000])
    assert errors.take() == []


# --- junk values ---------------------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["battery-1", "bess", "meter", "2026-12-07T10:00:00Z", "\x00", "\ud800", "²", "9" * 400])
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(COLUMNS) | st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def _dump(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", errors="surrogatepass")


_fragments = st.sampled_from(
    [
        "eq.",
        "neq.",
        "gt.",
        "lte.",
        "in.(",
        "in.()",
        ")",
        "(",
        ",",
        ".",
        "is.null",
        "is.",
        "not.",
        "like.*",
        "ilike.",
        "fts.",
        "plfts(english).",
        "cs.{",
        "cd.{}",
        "ov.[",
        "sl.(1,2)",
        "match.",
        "imatch.",
        "isdistinct.",
        "any",
        "all",
        "{",
        "}",
        '"',
        "\\",
        "*",
        ":",
        "::text",
        "->",
        "->>",
        "!inner",
        "asc",
        "desc.nullsfirst",
        "²",
        "1",
        "-1",
        "9" * 30,
        "battery-1",
        "device_id",
        "ts",
        "count()",
        "sum",
        "é",
        "\U0001f600",
        " ",
        "%",
        "&",
        "=",
    ]
)
junk_text = st.lists(_fragments | st.text(max_size=6), max_size=8).map("".join)
_parameter_names = (
    st.sampled_from(
        [
            "select",
            "order",
            "limit",
            "offset",
            "or",
            "and",
            "not.or",
            "columns",
            "on_conflict",
            "p_device_ids",
            "p_start",
        ]
    )
    | st.sampled_from(COLUMNS)
    | junk_text
)
# Parameter lists httpx encodes, and raw query strings sent as they are (bad escapes, invalid UTF-8 in them).
_raw_fragments = st.sampled_from(
    ["%80", "%C3%28", "%ED%A0%80", "%zz", "%", "%0", "%00", "&", "=", "+", ";", "select=", "limit=", "order=", "or="]
)
query_parameters = st.lists(st.tuples(_parameter_names, junk_text), max_size=6) | st.lists(
    _raw_fragments | _fragments, max_size=12
).map("".join)

# Header values an HTTP/1.1 client can send: printable ASCII, no surrounding whitespace.
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)
_header_values = _header_text | st.sampled_from(
    [
        "0-9",
        "5-",
        "-1",
        "²-³",
        "items=0-1",
        "return=representation",
        "return=minimal,count=exact",
        "count=planned",
        "count=estimated",
        "resolution=merge-duplicates",
        "missing=default",
        "tx=rollback",
        "handling=strict,unknown=1",
        "application/json",
        "application/vnd.pgrst.object+json",
        "application/vnd.pgrst.plan+json",
        "text/csv",
        "application/geo+json",
        "*/*;q=junk",
        "flux",
        "public",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin1",
        "Bearer",
        "Bearer x.y.z",
    ]
)
junk_headers = st.dictionaries(
    st.sampled_from(["Range", "Range-Unit", "Prefer", "Accept", "Content-Type"]), _header_values, max_size=4
) | st.dictionaries(
    st.sampled_from(["Range", "Prefer", "Accept", "Content-Type", "Accept-Profile", "Content-Profile", "apikey"]),
    _header_values,
    max_size=6,
)
# Mostly valid keys, so that the junk reaches the query parser and the database, not only the key check.
# Mostly valid keys, so that the junk reaches the query parser and the database, not only the key check;
# also tokens signed with the right secret whose claims are junk.
_claims = st.dictionaries(
    st.sampled_from(["role", "exp", "nbf", "iat", "aud", "sub", "iss", "email"]), json_values, max_size=5
).map(lambda claims: {"role": "anon", **claims})
credentials = st.sampled_from([*ROLES, *ROLES, *ROLES, "none", "junk"]) | _claims
bodies = (
    json_values.map(_dump)
    | st.binary(max_size=300)
    | st.just(b"")
    | st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(0, 5000))
)
_methods = st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "POST", "PATCH", "PATCH", "DELETE", "PUT", "OPTIONS"])


def _signed_token(claims: dict[str, Any]) -> str:
    """An HS256 JWT of any claims, signed with the API's secret (PyJWT refuses to encode junk claims)."""

    def segment(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signed = segment(b'{"alg":"HS256","typ":"JWT"}') + b"." + segment(_dump(claims))
    signature = hmac.new(SECRET.encode(), signed, hashlib.sha256).digest()
    return (signed + b"." + segment(signature)).decode("ascii")


def _credential_headers(credential: str | dict[str, Any]) -> dict[str, str]:
    if credential == "none":
        return {}
    if isinstance(credential, dict):
        token = _signed_token(credential)
    else:
        token = "x.y.z" if credential == "junk" else key(credential)
    return {"apikey": token, "Authorization": f"Bearer {token}"}


def _request(
    client: httpx.Client,
    clock: ControlledClock,
    method: str,
    path: str,
    parameters: list[tuple[str, str]] | str,
    headers: dict[str, str],
    credential: str | dict[str, Any],
    body: bytes,
) -> httpx.Response:
    clock.advance(3600)  # every example starts with full rate-limit buckets: this is about inputs, not rates
    content = body if method in ("POST", "PATCH", "DELETE", "PUT") else None
    # UTF-8 on the wire, as a client that does not check its header values sends them.
    sent = {name: value.encode("utf-8") for name, value in {**headers, **_credential_headers(credential)}.items()}
    if isinstance(parameters, str):
        return client.request(method, f"{path}?{parameters}", headers=sent, content=content)
    return client.request(method, path, params=parameters, headers=sent, content=content)


@given(
    method=_methods,
    table=st.sampled_from(TABLES),
    parameters=query_parameters,
    headers=junk_headers,
    credential=credentials,
    body=bodies,
)
@example(method="GET", table="mg_bess_readings", parameters=[("limit", "²")], headers={}, credential="anon", body=b"")
@example(method="GET", table="mg_bess_readings", parameters=[("offset", "²")], headers={}, credential="anon", body=b"")
@settings(JUNK_SETTINGS, max_examples=300)
def test_junk_table_requests_get_no_server_error(
    served: ServedIngest,
    client: httpx.Client,
    error_records: ErrorRecords,
    method: str,
    table: str,
    parameters: list[tuple[str, str]] | str,
    headers: dict[str, str],
    credential: str | dict[str, Any],
    body: bytes,
) -> None:
    response = _request(client, served.clock, method, f"/rest/v1/{table}", parameters, headers, credential, body)
    _check(response, error_records)


@given(
    method=_methods,
    function=st.sampled_from(RPCS),
    parameters=query_parameters,
    headers=junk_headers,
    credential=credentials,
    body=bodies,
)
@example(
    method="GET", function="get_meter_readings_5m", parameters=[("limit", "²")], headers={}, credential="anon", body=b""
)
@JUNK_SETTINGS
def test_junk_rpc_requests_get_no_server_error(
    served: ServedIngest,
    client: httpx.Client,
    error_records: ErrorRecords,
    method: str,
    function: str,
    parameters: list[tuple[str, str]] | str,
    headers: dict[str, str],
    credential: str | dict[str, Any],
    body: bytes,
) -> None:
    response = _request(client, served.clock, method, f"/rest/v1/rpc/{function}", parameters, headers, credential, body)
    _check(response, error_records)


_other_paths = st.sampled_from(
    ["/rest/v1/", "/rest/v1", "/status/devices", "/healthz", "/readyz", "/metrics", "/", "/rest/v1/rpc/", "/rest/v2/x"]
) | junk_text.map(lambda tail: "/rest/v1/" + quote(tail, safe="/(),.*:!"))


@given(
    method=_methods,
    path=_other_paths,
    parameters=query_parameters,
    headers=junk_headers,
    credential=credentials,
    body=bodies,
)
@JUNK_SETTINGS
def test_junk_requests_on_the_other_routes_get_no_server_error(
    served: ServedIngest,
    client: httpx.Client,
    error_records: ErrorRecords,
    method: str,
    path: str,
    parameters: list[tuple[str, str]] | str,
    headers: dict[str, str],
    credential: str | dict[str, Any],
    body: bytes,
) -> None:
    response = _request(client, served.clock, method, path, parameters, headers, credential, body)
    _check(response, error_records)


# --- realtime ------------------------------------------------------------------------------------------------

_topics = st.sampled_from(["phoenix", "realtime:public", "realtime:flux:mg_bess_readings", "realtime:", ""]) | st.text(
    max_size=30
)
_events = st.sampled_from(
    ["phx_join", "phx_join", "phx_join", "phx_leave", "heartbeat", "access_token", "broadcast", "presence"]
) | st.text(max_size=12)
_bindings = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(["*", "INSERT", "UPDATE", "DELETE", "junk"]) | json_values,
        "schema": st.sampled_from(["flux", "public", "*"]) | json_values,
        "table": st.sampled_from(TABLES) | json_values,
        "filter": junk_text | json_values,
    },
)
_configs = st.fixed_dictionaries(
    {},
    optional={
        "postgres_changes": st.lists(_bindings | json_values, max_size=3) | json_values,
        "broadcast": json_values,
        "presence": json_values,
        "private": json_values,
    },
)
# Keys of every role, tokens signed with the right secret whose claims are junk, and tokens that are not JWTs.
_tokens = (
    st.sampled_from(ROLES).map(key) | _claims.map(lambda claims: _signed_token(claims)) | st.sampled_from(["x.y.z", ""])
)
_payloads = st.fixed_dictionaries(
    {}, optional={"config": _configs | json_values, "access_token": _tokens | json_values}
) | st.dictionaries(st.text(max_size=10), json_values, max_size=3)
_refs = st.none() | st.text(max_size=8) | json_values


def _message_v1(topic: Any, event: Any, payload: Any, ref: Any, join_ref: Any) -> str:
    return json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref})


def _message_v2(topic: Any, event: Any, payload: Any, ref: Any, join_ref: Any) -> str:
    return json.dumps([join_ref, ref, topic, event, payload])


# Mostly well-shaped messages (string topic and event, object payload), so the junk reaches the channel logic.
phoenix_messages = st.tuples(_topics, _events, _payloads, _refs, _refs) | st.tuples(
    _topics | json_values, _events | json_values, _payloads | json_values, _refs, _refs
)
text_frames = (
    st.text(max_size=200)
    | json_values.map(lambda value: json.dumps(value))
    | st.integers(0, 120_000).map(lambda depth: "[" * depth + "]" * depth)
)
binary_frames = st.binary(max_size=200) | st.builds(
    lambda header, rest: bytes(header) + rest,
    st.lists(st.integers(0, 255), min_size=4, max_size=4).map(lambda numbers: [3, *numbers[1:]]),
    st.binary(max_size=40),
)
frames = st.one_of(
    *[phoenix_messages.map(lambda message: ("phoenix", message))] * 6,
    text_frames.map(lambda text: ("text", text)),
    binary_frames.map(lambda data: ("binary", data)),
)


def _heartbeat(vsn: str) -> str:
    if vsn == "2.0.0":
        return json.dumps([None, "heartbeat-check", "phoenix", "heartbeat", {}])
    return json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "heartbeat-check"})


def _is_heartbeat_reply(text: str, vsn: str) -> bool:
    message = json.loads(text)
    if vsn == "2.0.0":
        return isinstance(message, list) and message[1] == "heartbeat-check" and message[3] == "phx_reply"
    return isinstance(message, dict) and message.get("ref") == "heartbeat-check" and message.get("event") == "phx_reply"


def _answer_or_clean_close(socket: ClientConnection, vsn: str) -> None:
    """After the junk, a heartbeat is answered, or the socket was closed with a code other than 1011."""
    try:
        socket.send(_heartbeat(vsn))
        while True:
            answer = socket.recv(timeout=10)
            if isinstance(answer, str) and _is_heartbeat_reply(answer, vsn):
                return
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd is not None else None
        assert code is not None, "the server dropped the socket without a close frame"
        assert 1000 <= code < 2000 and code != 1011, closed


@given(vsn=st.sampled_from(["1.0.0", "2.0.0"]), credential=st.sampled_from(ROLES), junk=st.lists(frames, max_size=4))
@example(
    vsn="1.0.0",
    credential="anon",
    junk=[("phoenix", ("realtime:x", "phx_join", {"config": {"postgres_changes": 5}}, "1", "1"))],
)
@example(vsn="1.0.0", credential="anon", junk=[("text", "[" * 100_000 + "]" * 100_000)])
@example(vsn="1.0.0", credential="anon", junk=[("binary", b"\x00")])
@example(vsn="2.0.0", credential="anon", junk=[("binary", b"\x03\xff\xff\xff")])
@JUNK_SETTINGS
def test_junk_realtime_frames_are_answered_or_closed_cleanly(
    served: ServedIngest, error_records: ErrorRecords, vsn: str, credential: str, junk: list[tuple[str, Any]]
) -> None:
    url = served.url.replace("http://", "ws://") + f"/realtime/v1/websocket?apikey={key(credential)}&vsn={vsn}"
    with connect(url, max_size=None, open_timeout=10, close_timeout=5) as socket:
        try:
            for kind, frame in junk:
                if kind == "phoenix":
                    socket.send((_message_v2 if vsn == "2.0.0" else _message_v1)(*frame))
                else:
                    socket.send(frame)
        except ConnectionClosed:
            pass  # closed by an earlier frame: the close code is checked below
        _answer_or_clean_close(socket, vsn)
    assert error_records.take() == []


@given(
    apikey=_tokens | junk_text,
    vsn=st.sampled_from(["1.0.0", "2.0.0", "", "3.0.0"]) | junk_text,
    extra=st.lists(st.tuples(junk_text, junk_text), max_size=3),
)
# Found by this test: the refusal quoted the vsn in a close reason over the 123 bytes a close frame holds, and
# the server's websocket layer raised (a traceback) instead of closing.
@example(apikey=key("anon"), vsn="\U0001f600" * 32, extra=[])
@example(apikey=key("anon"), vsn="\x01" * 40, extra=[])
@JUNK_SETTINGS
def test_junk_realtime_handshakes_are_refused_or_served_cleanly(
    served: ServedIngest, error_records: ErrorRecords, apikey: str, vsn: str, extra: list[tuple[str, str]]
) -> None:
    query = str(httpx.QueryParams([("apikey", apikey), ("vsn", vsn), *extra]))
    url = served.url.replace("http://", "ws://") + f"/realtime/v1/websocket?{query}"
    try:
        with connect(url, max_size=None, open_timeout=10, close_timeout=5) as socket:
            _answer_or_clean_close(socket, vsn if vsn == "2.0.0" else "1.0.0")
    except InvalidStatus as refused:
        assert refused.response.status_code < SERVER_ERROR, refused
    assert error_records.take() == []


@pytest.mark.parametrize(
    "reason", ["a" * 200, "é" * 100, "\U0001f600" * 40, "unsupported vsn '\ud800'", "short"], ids=str.__len__
)
def test_a_close_reason_fits_a_close_frame_without_splitting_a_character(reason: str) -> None:
    cut = close_reason(reason)
    assert len(cut.encode("utf-8")) <= 123
    assert reason.encode("utf-8", "replace").startswith(cut.encode("utf-8"))
    if len(reason.encode("utf-8", "replace")) <= 123:
        assert cut.encode("utf-8") == reason.encode("utf-8", "replace")
