"""Polling mode: fetch GET {upstream}/v1/commands and publish new or changed commands."""

from __future__ import annotations

import json
import logging
import random

import httpx
from prometheus_client import Counter
from pydantic import ValidationError

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import Command, routing
from gridloop_common.messaging import Publisher, PublishError

__all__ = ["CommandPoller"]

logger = logging.getLogger(__name__)

POLLS = Counter("gridloop_upstream_polls_total", "Polls of GET /v1/commands, by outcome.", ["outcome"])
POLLED_COMMANDS = Counter("gridloop_upstream_polled_commands_total", "Commands published by the poller.")


class CommandPoller:
    """Polls every ``interval_s`` (±10 % jitter); on errors backs off up to ten intervals, never crashes."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        publisher: Publisher,
        interval_s: float = 60.0,
        path: str = "/v1/commands",
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._clock: Clock = clock or SystemClock()
        self._publisher = publisher
        self._interval_s = interval_s
        self._path = path
        # (id, updated_at) already published by this process; the scheduler dedupes across restarts.
        self._published: set[tuple[str, str]] = set()
        self._failures = 0

    async def run_forever(self) -> None:
        while True:
            try:
                published = await self.poll_once()
                self._failures = 0
                POLLS.labels("ok").inc()
                if published:
                    logger.info("poll published commands", extra={"count": published})
            except (httpx.HTTPError, ValueError, PublishError) as error:
                self._failures += 1
                POLLS.labels("error").inc()
                logger.warning(
                    "upstream poll failed; backing off",
                    extra={"error": f"{type(error).__name__}: {error}", "failures": self._failures},
                )
            await self._clock.sleep(self._next_delay())

    def _next_delay(self) -> float:
        factor = min(2**self._failures, 10) if self._failures else 1
        return self._interval_s * factor * random.uniform(0.9, 1.1)

    async def poll_once(self) -> int:
        """One poll; returns how many commands were published."""
        response = await self._client.get(self._path)
        response.raise_for_status()
        payload = response.json()
        items = payload.get("data", payload.get("commands")) if isinstance(payload, dict) else payload
        if not isinstance(items, list):
            raise ValueError("GET /v1/commands did not return a list of commands")
        published = 0
        for item in items:
            try:
                command = Command.model_validate(item)
            except ValidationError as error:
                logger.warning("polled command skipped: invalid", extra={"error": str(error)[:300]})
                continue
            key = (str(command.id), command.updated_at.isoformat())
            if key in self._published:
                continue
            envelope = {
                "event_type": "command.updated",
                "event_object": item,
                "timestamp": self._clock.now().isoformat(),
            }
            await self._publisher.publish(
                exchange=routing.UPSTREAM_EXCHANGE,
                routing_key="command.updated",
                body=json.dumps(envelope).encode(),
                message_id=f"poll:{key[0]}:{key[1]}",
                headers={"x-gridloop-intake": "poll"},
            )
            self._published.add(key)
            published += 1
            POLLED_COMMANDS.inc()
        return published
