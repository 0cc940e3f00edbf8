"""The limits of gridloop's HTTP servers, against a real uvicorn server on loopback (serve_http).

Each attack is made with raw sockets, as an attacker would: oversized headers, headers or a body trickled
slowly, connections that never finish a request. While it runs, another client must still be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gridloop_common.observability import serve_http
from gridloop_common.settings import HttpServerSettings

# Well above what a loopback request takes, even on a loaded 2-core machine.
SERVED_WITHIN_S = 5.0


async def _client_address(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.client.host if request.client else "")


async def _body_length(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


APP = Starlette(routes=[Route("/client", _client_address), Route("/echo", _body_length, methods=["POST"])])


@contextlib.asynccontextmanager
async def running(settings: HttpServerSettings | None = None) -> AsyncIterator[tuple[int, object]]:
    async with serve_http(APP, host="127.0.0.1", port=0, settings=settings) as server:
        yield server.servers[0].sockets[0].getsockname()[1], server


def limits(**overrides: object) -> HttpServerSettings:
    return HttpServerSettings.model_validate(overrides)


async def served(port: int) -> None:
    """Another client gets its answer within the generous bound."""
    async with httpx.AsyncClient(timeout=SERVED_WITHIN_S) as client:
        response = await client.get(f"http://127.0.0.1:{port}/client")
    assert response.status_code == 200


async def status_or_eof(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """The status line the server answered with, or b"" if it closed without one."""
    return (await asyncio.wait_for(reader.readline(), timeout_s)).rstrip()


async def test_a_64_mb_header_gets_431_at_once_and_other_clients_are_served() -> None:
    async with running() as (port, _):
        attacker = socket.create_connection(("127.0.0.1", port))
        attacker.settimeout(30)

        def attack() -> bytes:
            # The probe's repro: the answer comes while the header is still being sent.
            with contextlib.suppress(OSError):
                attacker.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (64 << 20) + b"\r\n\r\n")
            try:
                return attacker.recv(80)
            except OSError:
                return b""

        started = time.monotonic()
        answer = asyncio.create_task(asyncio.to_thread(attack))
        await served(port)
        status = await asyncio.wait_for(answer, 30)
        attacker.close()
        assert status.startswith(b"HTTP/1.1 431 "), status
        assert time.monotonic() - started < SERVED_WITHIN_S * 2


async def test_headers_within_the_limit_and_a_large_body_in_one_read_are_served() -> None:
    async with running(limits(http_max_header_bytes=8192)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"x" * 100_000
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 7000 + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert await status_or_eof(reader, SERVED_WITHIN_S) == b"HTTP/1.1 200 OK"
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /client HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 8200 + b"\r\n\r\n")
        assert (await status_or_eof(reader, SERVED_WITHIN_S)).startswith(b"HTTP/1.1 431 ")
        writer.close()


async def test_trickled_headers_are_cut_off_at_the_header_timeout() -> None:
    async with running(limits(http_header_timeout_s=1.0)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /client HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = asyncio.create_task(status_or_eof(reader, 30))
        lines = 0
        while not closed.done() and lines < 100:
            # One header line every 0.2 s: each arrives well within any per-read timeout.
            writer.write(f"X-Line-{lines}: a\r\n".encode())
            lines += 1
            await asyncio.wait([closed], timeout=0.2)
        assert closed.done(), "the server kept reading trickled headers for 20 s"
        assert closed.result() == b"HTTP/1.1 408 Request Timeout"
        assert time.monotonic() - started < 1.0 + SERVED_WITHIN_S
        await served(port)
        writer.close()


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout() -> None:
    async with running(limits(http_header_timeout_s=1.0, http_keep_alive_timeout_s=1)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await status_or_eof(reader, 1.0 + SERVED_WITHIN_S) == b""
        writer.close()
        # An idle keep-alive connection, after its answer, is closed too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /client HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_or_eof(reader, SERVED_WITHIN_S) == b"HTTP/1.1 200 OK"
        assert (await asyncio.wait_for(reader.read(), 1.0 + SERVED_WITHIN_S)).endswith(b"127.0.0.1")
        writer.close()


async def test_a_body_sent_at_5_bytes_a_second_is_cut_off_at_the_body_timeout() -> None:
    async with running(limits(http_body_timeout_s=1.0)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        closed = asyncio.create_task(status_or_eof(reader, 30))
        sent = 0
        while not closed.done() and sent < 100:
            writer.write(b"x")
            sent += 1
            await asyncio.wait([closed], timeout=0.2)
        assert closed.done() and sent < 100, "the whole body was taken at 5 bytes a second"
        assert closed.result() == b"HTTP/1.1 408 Request Timeout"
        await served(port)
        writer.close()


async def test_half_sent_requests_are_bounded_by_the_connection_cap() -> None:
    settings = limits(http_max_connections=20, http_limit_concurrency=20, http_header_timeout_s=60.0)
    async with running(settings) as (port, server):
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
        for _, writer in connections:
            writer.write(b"GET /client HTTP/1.1\r\nHost: x\r\n")
        reads = [asyncio.create_task(reader.read()) for reader, _ in connections]
        # The 40 past the cap are closed as they are accepted; wait for those closes, not for a time.
        for closed, read in enumerate(asyncio.as_completed(reads, timeout=SERVED_WITHIN_S * 2), start=1):
            assert await read == b""
            if closed == 40:
                break
        assert len(server.server_state.connections) == 20  # type: ignore[attr-defined]
        assert sum(read.done() for read in reads) == 40
        for read in reads:
            read.cancel()
        for _, writer in connections:
            writer.close()


async def test_requests_past_the_concurrency_limit_get_503() -> None:
    async with running(limits(http_limit_concurrency=5, http_max_connections=50)) as (port, _):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _, writer in held:
            writer.write(b"GET /client HTTP/1.1\r\nHost: x\r\n")
        async with httpx.AsyncClient(timeout=SERVED_WITHIN_S) as client:
            response = await client.get(f"http://127.0.0.1:{port}/client")
        assert response.status_code == 503
        for _, writer in held:
            writer.close()


async def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    async with running() as (port, _), httpx.AsyncClient(timeout=SERVED_WITHIN_S) as client:
        response = await client.get(f"http://127.0.0.1:{port}/client", headers=forwarded)
        assert response.text == "127.0.0.1"
    async with (
        running(limits(forwarded_allow_ips="10.0.0.0/8, 127.0.0.1")) as (port, _),
        httpx.AsyncClient(timeout=SERVED_WITHIN_S) as client,
    ):
        response = await client.get(f"http://127.0.0.1:{port}/client", headers=forwarded)
        assert response.text == "203.0.113.9"


def test_the_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert limits().forwarded_allow_list() == []
    assert limits(forwarded_allow_ips="*").forwarded_allow_list() == ["*"]
    with pytest.raises(ValidationError, match="'ingress' is not an IP address"):
        limits(forwarded_allow_ips="10.0.0.1,ingress")
    with pytest.raises(ValidationError, match="at least GRIDLOOP_HTTP_LIMIT_CONCURRENCY"):
        limits(http_max_connections=10, http_limit_concurrency=20)
