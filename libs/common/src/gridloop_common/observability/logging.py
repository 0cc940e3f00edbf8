"""JSON log lines carrying the service name and the correlation id of the work in hand."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

__all__ = ["configure_logging", "correlation_id", "current_correlation_id", "new_correlation_id"]

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

# Attributes every LogRecord has; anything else passed through ``extra=`` is emitted as a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def current_correlation_id() -> str | None:
    """The correlation id of the message or request being handled, if any."""
    return _correlation_id.get()


def new_correlation_id() -> str:
    """A fresh correlation id."""
    return os.urandom(16).hex()  # as unique as uuid4().hex, at a third of the cost on the request path


@contextlib.contextmanager
def correlation_id(value: str | None) -> Iterator[str]:
    """Bind a correlation id (a new one when ``value`` is None) to the code run inside."""
    bound = value or new_correlation_id()
    token = _correlation_id.set(bound)
    try:
        yield bound
    finally:
        _correlation_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, correlation id, extras."""

    def __init__(self, *, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = _correlation_id.get()
        if bound is not None:
            line["correlation_id"] = bound
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key != "color_message" and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(*, service: str, level: str = "INFO") -> None:
    """Send every log record to stderr as a JSON line tagged with ``service``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service=service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiormq logs every reconnect attempt at error level with a traceback; one line from us is enough.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
