"""Fixtures for cross-service tests: the environment a service process gets, and free ports."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def service_environment(amqp_url: str, database_url: str) -> dict[str, str]:
    """Environment for a service process on the test vhost and database, with fresh ports."""
    import os

    environment = {key: value for key, value in os.environ.items() if not key.startswith("GRIDLOOP_")}
    environment.update(
        {
            "GRIDLOOP_AMQP_URL": amqp_url,
            "GRIDLOOP_DATABASE_URL": database_url,
            "GRIDLOOP_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "GRIDLOOP_JWT_SECRET": "test-secret-with-at-least-thirty-two-characters",
            "GRIDLOOP_GATEWAY_PORT": str(free_port()),
            "GRIDLOOP_SCHEDULER_PORT": str(free_port()),
            "GRIDLOOP_OPTIMIZER_PORT": str(free_port()),
            "GRIDLOOP_INGEST_PORT": str(free_port()),
            "GRIDLOOP_AGENT_PORT": str(free_port()),
            "GRIDLOOP_OCPP_PORT": str(free_port()),
            "GRIDLOOP_STARTUP_TIMEOUT_S": "20",
        }
    )
    return environment
