"""The readings consumer handler (batch in, valid rows stored, bad rows dead-lettered)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec
from pydantic import BaseModel, ValidationError

from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import EvSession, routing
from gridloop_common.messaging import (
    DEAD_LETTER_REASON_HEADER,
    Delivery,
    PoisonMessage,
    Publisher,
    PublishError,
    RetryableError,
)
from telemetry_ingest.ingest.group_commit import GroupCommitter
from telemetry_ingest.ingest.reading_rows import READING_MODELS, REAL_MAX, decoder
from telemetry_ingest.ingest.repository import ReadingKind, ReadingRecord, ReadingsRepository, record_of

__all__ = ["readings_handler"]

logger = logging.getLogger(__name__)

_KINDS: Final = {
    routing.RoutingKeys.TELEMETRY_BESS: ReadingKind.BESS,
    routing.RoutingKeys.TELEMETRY_METER: ReadingKind.METER,
    routing.RoutingKeys.TELEMETRY_EV_CHARGER: ReadingKind.EV_CHARGER,
}


def _invalid_reason(model: type[BaseModel], item: Any, *, noun: str = "reading") -> tuple[BaseModel | None, str | None]:
    try:
        reading = model.model_validate(item)
    except ValidationError as error:
        parts = []
        for detail in error.errors()[:5]:
            location = ".".join(str(part) for part in detail["loc"]) or "reading"
            parts.append(f"{location}: {detail['msg']}")
        return None, f"invalid {noun}: " + "; ".join(parts)
    for name, value in reading:
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= REAL_MAX):
            return None, f"invalid {noun}: {name}: {value!r} does not fit a real column"
    return reading, None


def readings_handler(
    repository: ReadingsRepository,
    publisher: Publisher,
    *,
    queue_name: str = routing.Queues.INGEST_READINGS,
    writer: GroupCommitter[ReadingKind, ReadingRecord] | None = None,
    clock: Clock | None = None,
) -> Callable[[Delivery], Awaitable[None]]:
    """Handle one batch message (a JSON list of readings, kind from the routing key).

    Readings that fail validation are dead-lettered one by one, with the reason, and the rest of the
    batch is kept. The valid readings are committed first and only then are the bad ones
    dead-lettered, so a retry after a failed dead-letter publish re-inserts nothing (the insert is
    idempotent) and nothing is lost; the handler returns, and the message is acked, only after both.

    Writes go through ``writer`` (a group committer over ``repository.insert_records``, by default), so
    the readings of concurrently handled messages share transactions.
    """
    group_writer = writer or GroupCommitter(repository.insert_records)
    clock = clock or SystemClock()

    async def handle(delivery: Delivery) -> None:
        if delivery.routing_key == routing.RoutingKeys.TELEMETRY_EV_SESSION:
            await _store_sessions(delivery)
            return
        kind = _KINDS.get(delivery.routing_key)
        if kind is None:
            raise PoisonMessage(f"no reading kind for routing key {delivery.routing_key!r}")
        # Whole-batch decoding straight from the JSON bytes into COPY rows (reading_rows.py); a batch it
        # refuses takes the careful path, which finds and dead-letters the bad readings.
        try:
            rows = decoder(kind).rows(delivery.body)
        except msgspec.DecodeError:
            pass
        else:
            try:
                await group_writer.write(kind, rows)
                return
            except (ValueError, asyncpg.DataError) as error:
                # A value pydantic accepts but the column cannot hold (a float beyond float4's range).
                logger.info(
                    "batch has a value its columns cannot hold; checking item by item", extra={"error": str(error)}
                )
        await _store_item_by_item(delivery, kind)

    async def _store_item_by_item(delivery: Delivery, kind: ReadingKind) -> None:
        items = delivery.json()
        if not isinstance(items, list):
            raise PoisonMessage(f"a readings batch is a JSON list, got {type(items).__name__}")
        model = READING_MODELS[kind]
        row_of = decoder(kind).row
        model_record = record_of(kind)
        valid: list[ReadingRecord] = []
        rejected: list[tuple[int, Any, str]] = []
        for index, item in enumerate(items):
            # The fast path's conversion first, so a reading becomes the same row whichever path its batch
            # takes; the model decides only what that conversion refuses (and says why it is invalid).
            row = row_of(item)
            if row is not None:
                valid.append(row)
                continue
            reading, reason = _invalid_reason(model, item)
            if reading is None:
                rejected.append((index, item, reason or "invalid reading"))
            else:
                valid.append(model_record(reading))
        await group_writer.write(kind, valid)
        for index, item, reason in rejected:
            await _dead_letter(publisher, queue_name, delivery, index, item, reason, at=clock.now())
        logger.debug("readings stored", extra={"kind": str(kind), "valid": len(valid), "rejected": len(rejected)})

    async def _store_sessions(delivery: Delivery) -> None:
        # EV sessions share the readings queue (telemetry.#) rather than a queue and consumer of their own: a few
        # messages per car visit, so the group commit and the fast decoder have nothing to gain; each valid
        # session is upserted, each invalid one dead-lettered with its reason, as readings are.
        items = delivery.json()
        if not isinstance(items, list):
            raise PoisonMessage(f"a sessions batch is a JSON list, got {type(items).__name__}")
        valid: list[EvSession] = []
        rejected: list[tuple[int, Any, str]] = []
        for index, item in enumerate(items):
            session, reason = _invalid_reason(EvSession, item, noun="session")
            if isinstance(session, EvSession):
                valid.append(session)
            else:
                rejected.append((index, item, reason or "invalid session"))
        await repository.upsert_sessions(valid)
        for index, item, reason in rejected:
            await _dead_letter(publisher, queue_name, delivery, index, item, reason, at=clock.now())

    return handle


async def _dead_letter(
    publisher: Publisher, queue_name: str, delivery: Delivery, index: int, item: Any, reason: str, *, at: datetime
) -> None:
    # Deterministic per (message, position): a redelivered batch's rejects carry the same ids.
    message_id = f"{delivery.message_id}:{index}" if delivery.message_id else None
    try:
        await publisher.publish(
            exchange=routing.DEAD_LETTER_EXCHANGE,
            routing_key=queue_name,
            body=json.dumps(item).encode(),
            message_id=message_id,
            headers={
                DEAD_LETTER_REASON_HEADER: reason[:1000],
                "x-gridloop-original-exchange": delivery.exchange,
                "x-gridloop-original-routing-key": delivery.routing_key,
                "x-gridloop-original-message-id": delivery.message_id or "",
                "x-gridloop-batch-index": index,
                "x-gridloop-dead-lettered-at": at.isoformat(),
            },
        )
    except PublishError as error:
        # The valid rows are committed; a retry re-inserts nothing and dead-letters again.
        raise RetryableError(f"could not dead-letter reading {index}: {error}") from error
    logger.warning("reading dead-lettered", extra={"index": index, "reason": reason, "message_id": message_id})
