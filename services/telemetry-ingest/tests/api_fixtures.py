"""Fixtures of the REST API tests: keys, a controllable clock and the app served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gridloop_common.db import apply_migrations, load_migrations, open_pool
from gridloop_common.observability import Health, serve_http
from telemetry_ingest.api.auth import issue_key
from telemetry_ingest.api.postgrest import load_catalogue
from telemetry_ingest.api.routes import build_app
from telemetry_ingest.settings import IngestSettings

SECRET = "test-secret-of-the-flux-api-0123456789abcdef"
OWNER = "telemetry-ingest"


class ControlledClock:
    """A ``Clock`` that follows the real clock plus an offset the test can move forward.

    The server runs on its own thread and loop, so sleeping is real; calling it gives the Unix time.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen_at: float | None = None

    def __call__(self) -> float:
        return (time.time() if self.frozen_at is None else self.frozen_at) + self.offset

    def freeze(self) -> None:
        """Stop following the real clock; only advance() moves time."""
        self.frozen_at = time.time()

    def unfreeze(self) -> None:
        if self.frozen_at is not None:
            self.offset -= time.time() - self.frozen_at  # time never steps back
            self.frozen_at = None

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self(), tz=UTC)

    def monotonic(self) -> float:
        return self()  # never steps back: advance() only moves forward and unfreeze() keeps the reading

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def key(role: str, **claims: Any) -> str:
    """An API key for ``role`` signed with the test secret."""
    return issue_key(SECRET, role, **claims)


def headers_for(token: str) -> dict[str, str]:
    """The headers supabase-js / supabase-py send: the key as apikey and as the bearer token."""
    return {"apikey": token, "Authorization": f"Bearer {token}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServedApi:
    """build_app on a real uvicorn server, in its own thread and event loop, so that sync clients
    (schemathesis, requests) and async ones (postgrest, supabase, httpx) from any loop can call it."""

    def __init__(self, database_url: str, clock: ControlledClock) -> None:
        self.database_url = database_url
        self.clock = clock
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="flux-api", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # surfaced to the test thread in start()
            self._failure = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with open_pool(self.database_url, min_size=1, max_size=8) as pool:
            await apply_migrations(pool, owner=OWNER, migrations=load_migrations("telemetry_ingest"))
            async with pool.acquire() as connection:
                catalogue = await load_catalogue(connection)
            app = build_app(
                pool=pool,
                catalogue=catalogue,
                settings=IngestSettings(jwt_secret=SECRET),
                health=Health(service="telemetry-ingest-test"),
                clock=self.clock,
            )
            async with serve_http(app, host="127.0.0.1", port=self.port):
                self._ready.set()
                await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise TimeoutError("the API server did not start within 60 s")
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def api_clock() -> ControlledClock:
    return ControlledClock()


@pytest.fixture(scope="module")
def api_server(database_url: str, api_clock: ControlledClock) -> Iterator[ServedApi]:
    """The Flux API served on a free port of 127.0.0.1 against the session's migrated database."""
    served = ServedApi(database_url, api_clock)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def api_url(api_server: ServedApi) -> str:
    return api_server.url
