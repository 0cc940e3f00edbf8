"""Logs, metrics and health endpoints shared by every service."""

from gridloop_common.observability.health import Health, health_routes, serve_http
from gridloop_common.observability.logging import (
    configure_logging,
    correlation_id,
    current_correlation_id,
    new_correlation_id,
)

__all__ = [
    "Health",
    "configure_logging",
    "correlation_id",
    "current_correlation_id",
    "health_routes",
    "new_correlation_id",
    "serve_http",
]
