"""Turning a verified upstream envelope into a confirmed message on ``gridloop.upstream``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gridloop_common.contracts import UNKNOWN_EVENT_TYPE, UpstreamEvent, routing
from gridloop_common.messaging import Publisher

__all__ = ["InvalidEvent", "UnknownEventType", "field_errors", "forward", "parse_event"]


class InvalidEvent(Exception):
    """An authentic delivery whose body breaks the upstream schema; ``errors`` name the fields."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{error['field']}: {error['message']}" for error in errors))
        self.errors = errors


class UnknownEventType(Exception):
    """An event type this version does not know: accepted and ignored, so the sender does not retry."""


def field_errors(error: ValidationError, *, prefix: str = "", limit: int = 10) -> list[dict[str, str]]:
    """Pydantic errors as ``{"field": "a.b", "message": "..."}``, at most ``limit``."""
    found = []
    for detail in error.errors()[:limit]:
        location = ".".join(str(part) for part in detail["loc"])
        found.append(
            {"field": f"{prefix}{location}" if location else prefix.rstrip(".") or "body", "message": detail["msg"]}
        )
    return found


def parse_event(payload: Any) -> UpstreamEvent:
    """Validate the envelope and, for command events, the Command it carries."""
    if not isinstance(payload, dict):
        raise InvalidEvent([{"field": "body", "message": "must be a JSON object"}])
    try:
        event = UpstreamEvent.model_validate(payload)
    except ValidationError as error:
        # Only a well-formed but unknown type is "ignored"; one too long for a routing key is invalid.
        if [detail["type"] for detail in error.errors()] == [UNKNOWN_EVENT_TYPE]:
            raise UnknownEventType(payload["event_type"]) from error
        errors = field_errors(error)
        raise InvalidEvent(errors) from error
    try:
        event.command()
    except ValidationError as error:
        raise InvalidEvent(field_errors(error, prefix="event_object.")) from error
    return event


async def forward(publisher: Publisher, event: UpstreamEvent, *, body: bytes, webhook_id: str) -> None:
    """Publish the envelope as received; the webhook id becomes the message id (the dedupe key)."""
    await publisher.publish(
        exchange=routing.UPSTREAM_EXCHANGE,
        routing_key=event.event_type,
        body=body,
        message_id=webhook_id,
        headers={"x-gridloop-intake": "webhook"},
    )
