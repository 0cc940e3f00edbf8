"""The limits of every HTTP server gridloop runs: header size, header and body read deadlines, connections.

uvicorn (0.54) bounds neither: with httptools it buffers a request's headers without limit (and joins
their fragments at quadratic cost: one 64 MB header took seconds of CPU), waits for headers and bodies
forever, and accepts connections until the process runs out of descriptors. h11 would bound the headers
(with a 400, not a 431) but parses several times slower and has no read deadlines either. So gridloop
keeps httptools and adds, in this module only, what it lacks:

- headers (request line included) larger than ``http_max_header_bytes`` are refused with 431 before the
  parser sees the excess;
- a connection must deliver a request's headers within ``http_header_timeout_s`` of its first byte (or of
  the connection opening), however slowly it trickles them: else 408 and close;
- a body must arrive within ``http_body_timeout_s`` of its headers: else 408 (if no answer started) and close;
- a connection past ``http_max_connections`` open ones (websockets included) is closed as it is accepted.

uvicorn itself closes idle keep-alive connections (``timeout_keep_alive``) and answers 503 past
``limit_concurrency``.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gridloop_common.settings import HttpServerSettings

__all__ = ["server_config"]


def _plain_response(status: int, reason: str) -> bytes:
    body = reason.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


_HEADERS_TOO_LARGE = _plain_response(431, "Request Header Fields Too Large")
_REQUEST_TIMEOUT = _plain_response(408, "Request Timeout")


class _GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol with a header size limit, read deadlines and a connection cap."""

    limits: ClassVar[HttpServerSettings]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_headers = True
        self._header_bytes = 0
        self._read_deadline: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.http_max_connections:
            # Refused at once, without a word: under a flood of half-open connections every byte and
            # log line would be spent on the attacker.
            transport.abort()
            return
        # Until its first request's headers are in, a connection is held to the header deadline, so a
        # client that connects and sends nothing is closed too.
        self._arm(self.limits.http_header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._reading_headers:
            super().data_received(data)
            return
        room = self.limits.http_max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what the limit allows: if the headers end inside it, the rest is body (or the next
        # protocol's, after a websocket upgrade); if not, they are too large.
        self._header_bytes += room
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._reading_headers:
            self._refuse(_HEADERS_TOO_LARGE)
            return
        protocol = self.transport.get_protocol()
        protocol.data_received(data[room:])

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:
            self._arm(self.limits.http_header_timeout_s)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm()
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.limits.http_body_timeout_s)

    def on_message_complete(self) -> None:
        self._disarm()
        # The bytes of the next request count from here. Those that came in the same read as the end of
        # this one are parsed uncounted, so the limit may be passed by at most one read (256 KiB).
        self._reading_headers = True
        self._header_bytes = 0
        super().on_message_complete()

    # -- deadlines ---------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._reading_headers:
            # Silence for a connection that never began a request (nothing to answer), 408 otherwise.
            self._refuse(_REQUEST_TIMEOUT if self._header_bytes else b"")
        elif self.cycle is None or not self.cycle.response_started:
            self._refuse(_REQUEST_TIMEOUT)
        else:
            self._refuse(b"")

    def _refuse(self, response: bytes) -> None:
        self._disarm()
        if response:
            self.transport.write(response)
        self.transport.close()


def server_config(app: Any, *, host: str, port: int, settings: HttpServerSettings) -> uvicorn.Config:
    """The uvicorn configuration of a gridloop HTTP server: httptools guarded as above, proxy trust explicit."""
    trusted = settings.forwarded_allow_list()
    protocol = type("GuardedHttpToolsProtocol", (_GuardedHttpToolsProtocol,), {"limits": settings})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.http_keep_alive_timeout_s,
        limit_concurrency=settings.http_limit_concurrency,
        # uvicorn falls back to $FORWARDED_ALLOW_IPS, then 127.0.0.1, when given None: always pass the list.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or [],
    )
