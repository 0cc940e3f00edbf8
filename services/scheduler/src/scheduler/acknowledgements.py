"""Delivering acknowledgements upstream from the outbox: PATCH, retried with backoff until accepted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

import aiohttp
import asyncpg

from gridloop_common.clock import Clock
from scheduler import planning
from scheduler.metrics import ACK_FAILURES, ACKS_DELIVERED, ACKS_PENDING
from scheduler.repository import AckRow, CommandRepository

__all__ = ["AckSender"]

logger = logging.getLogger(__name__)

_PENDING_COUNT_INTERVAL_S = 1.0


class AckSender:
    """Claims due acks (FOR UPDATE SKIP LOCKED) and PATCHes them to the upstream."""

    def __init__(
        self,
        *,
        repository: CommandRepository,
        session: aiohttp.ClientSession,
        upstream_url: str,
        path_template: str,
        clock: Clock,
        poll_interval_s: float = 0.5,
        batch_size: int = 50,
    ) -> None:
        self._repository = repository
        self._session = session
        # Concatenated, not joined: a path prefix in the upstream URL (https://host/api) must be kept.
        self._url_template = upstream_url.rstrip("/") + "/" + path_template.lstrip("/")
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._wake = asyncio.Event()

    def wake(self, *_: object) -> None:
        """Run the next pass now (called on NOTIFY scheduler_acks)."""
        self._wake.set()

    async def run_forever(self) -> None:
        next_count_at = self._clock.monotonic()
        while True:
            # As in the dispatcher: cleared before the pass, and another pass at once only after a full one.
            self._wake.clear()
            tried = 0
            try:
                tried = await self.deliver_due()
                # The backlog gauge is a count over the outbox: once a second is enough for a dashboard.
                if self._clock.monotonic() >= next_count_at:
                    ACKS_PENDING.set(await self._repository.pending_acks())
                    next_count_at = self._clock.monotonic() + _PENDING_COUNT_INTERVAL_S
            except (asyncpg.PostgresError, OSError) as error:
                logger.warning("ack pass failed; will retry", extra={"error": repr(error)})
            if tried >= self._batch_size:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def deliver_due(self) -> int:
        """Try every due ack once; returns how many were tried."""
        repository = self._repository
        async with repository.pool.acquire() as connection, connection.transaction():
            acks = await repository.claim_due_acks(connection, now=self._clock.now(), limit=self._batch_size)
            results = await asyncio.gather(*(self._patch(ack) for ack in acks))
            now = self._clock.now()
            delivered: list[AckRow] = []
            failed: list[tuple[AckRow, datetime, str]] = []
            for ack, error in zip(acks, results, strict=True):
                if error is None:
                    delivered.append(ack)
                    ACKS_DELIVERED.labels(ack.device_status).inc()
                    logger.info(
                        "acknowledged upstream",
                        extra={
                            "command_id": str(ack.command_id),
                            "device_status": ack.device_status,
                            "reason": ack.device_status_reason,
                        },
                    )
                else:
                    delay = planning.ack_retry_delay_s(ack.attempts + 1)
                    failed.append((ack, now + timedelta(seconds=delay), error))
                    logger.warning(
                        "acknowledgement failed; will retry",
                        extra={"command_id": str(ack.command_id), "error": error, "retry_in_s": delay},
                    )
            await repository.record_ack_attempts(connection, delivered=delivered, failed=failed, now=now)
        return len(acks)

    async def _patch(self, ack: AckRow) -> str | None:
        """PATCH one ack; returns None on success or the error text."""
        body: dict[str, str | None] = {"device_status": ack.device_status}
        if ack.device_status_reason is not None:
            body["device_status_reason"] = ack.device_status_reason
        url = self._url_template.replace("{id}", str(ack.command_id))
        try:
            async with self._session.patch(
                url, json=body, headers={"Idempotency-Key": str(ack.idempotency_key)}
            ) as response:
                status = response.status
                answer = (await response.read())[:200].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as error:
            ACK_FAILURES.labels("transport").inc()
            return f"{type(error).__name__}: {error}"
        if 200 <= status < 300:
            return None
        ACK_FAILURES.labels(str(status)).inc()
        return f"HTTP {status}: {answer}"
