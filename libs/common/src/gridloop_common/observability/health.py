"""Liveness, readiness and metrics over HTTP, and a uvicorn server run as an async context manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from gridloop_common.lifecycle import StartupError
from gridloop_common.observability.http_server import server_config
from gridloop_common.settings import HttpServerSettings

__all__ = ["Health", "health_routes", "serve_http"]

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]


class Health:
    """Readiness checks a service registers as it opens each dependency."""

    def __init__(self, *, service: str, check_timeout_s: float = 2.0) -> None:
        self.service = service
        self._checks: dict[str, ReadinessCheck] = {}
        self._check_timeout_s = check_timeout_s
        self.shutting_down = False

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """Register a dependency check: it returns True while the dependency is usable."""
        self._checks[name] = check

    async def readiness(self) -> dict[str, bool]:
        """Run every check concurrently; a check that raises or times out counts as not ready."""

        async def run(check: ReadinessCheck) -> bool:
            try:
                return await asyncio.wait_for(check(), self._check_timeout_s)
            except Exception:
                return False

        names = list(self._checks)
        results = await asyncio.gather(*(run(self._checks[name]) for name in names))
        return dict(zip(names, results, strict=True))


def health_routes(health: Health) -> list[Route]:
    """The /healthz, /readyz and /metrics routes for a Starlette app."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "service": health.service})

    async def readyz(request: Request) -> Response:
        checks = await health.readiness()
        ready = all(checks.values()) and not health.shutting_down
        body = {
            "status": "ready" if ready else "not ready",
            "service": health.service,
            "checks": checks,
            "shutting_down": health.shutting_down,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


class _EmbeddedServer(uvicorn.Server):
    # The process owns SIGTERM/SIGINT (see lifecycle.run_service); uvicorn must not take them over.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serve_http(
    app: ASGIApp, *, host: str, port: int, settings: HttpServerSettings | None = None
) -> AsyncIterator[uvicorn.Server]:
    """Serve ``app`` until the block exits; raises StartupError at entry when the port cannot be bound.

    ``settings`` bounds the server (see http_server); None takes the defaults, not the environment.
    """
    limits = settings if settings is not None else HttpServerSettings.model_construct()
    config = server_config(app, host=host, port=port, settings=limits)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(), name=f"http:{port}")
    while not server.started:
        if task.done():
            # uvicorn exits the task (SystemExit) when it cannot bind; surface it as an OSError.
            with contextlib.suppress(BaseException):
                task.result()
            raise StartupError(f"could not serve HTTP on {host}:{port}: the port is in use or not allowed")
        await asyncio.sleep(0.01)
    logger.info("serving http", extra={"host": host, "port": port})
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await task
