"""SQL of the scheduler's tables (schema ``scheduler``); each public method is one transaction."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from gridloop_common.contracts import Command, DeviceAvailability, DevicePlan
from scheduler.lifecycle import (
    RUNNING,
    CommandLook,
    CommandState,
    DispatchFacts,
    DueTimer,
    LifecyclePlan,
    PlanLook,
    RunningCommand,
    StoreResult,
    TimerKind,
)
from scheduler.planning import ActiveCommand, ControlSource, DeviceFacts

__all__ = [
    "AckRow",
    "CommandRepository",
    "EventRepository",
    "RegistryUnavailable",
    "UpstreamRecord",
]


class RegistryUnavailable(Exception):
    """flux.mg_device_registry does not exist yet (telemetry-ingest has not migrated)."""


class EventRepository:
    """Upstream events, stored once each."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record_event(self, record: UpstreamRecord) -> bool:
        """Store an event; returns False when it was already stored (a redelivery)."""
        status = await self._pool.execute(
            "INSERT INTO scheduler.upstream_events (event_key, event_type, correlation_id, envelope)"
            " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (event_key) DO NOTHING",
            record.event_key,
            record.event_type,
            record.correlation_id,
            record.envelope,
        )
        return bool(status.endswith(" 1"))


@dataclass(frozen=True)
class UpstreamRecord:
    """An upstream envelope as stored once in scheduler.upstream_events (keyed by the AMQP message id)."""

    event_key: str
    event_type: str
    envelope: dict[str, Any]
    correlation_id: str | None


@dataclass(frozen=True)
class AckRow:
    id: int
    command_id: UUID
    device_status: str
    device_status_reason: str | None
    idempotency_key: UUID
    attempts: int


class CommandRepository:
    """Commands, their versions and history, timers, the ack outbox, device outcomes."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- receiving a command version -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def command_locked(self, command_id: UUID) -> AsyncIterator[asyncpg.Connection]:
        """A transaction holding ``command_id``'s lock, for a decision no other delivery can overtake."""
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", str(command_id))
            yield connection

    async def look(
        self,
        command: Command,
        *,
        connection: asyncpg.Connection | None = None,
        record: UpstreamRecord | None = None,
    ) -> CommandLook:
        """What deciding on ``command`` needs, in one round trip: is the version known, the stored one, the device.

        With ``record``, the same statement stores the upstream event that carried the command (once).
        """
        try:
            row = await (connection or self.pool).fetchrow(
                """
                WITH stored_event AS (
                    INSERT INTO scheduler.upstream_events (event_key, event_type, correlation_id, envelope)
                    SELECT $4::text, $5::text, $6::text, $7::jsonb WHERE $4::text IS NOT NULL
                    ON CONFLICT (event_key) DO NOTHING
                )
                SELECT EXISTS (SELECT 1 FROM scheduler.command_versions v
                               WHERE v.command_id = $1 AND v.updated_at = $2) AS version_known,
                       c.updated_at AS stored_updated_at, c.state AS stored_state,
                       r.name, r.type, r.active, r.metadata, a.online, a.reason, a.observed_at
                FROM (VALUES (1)) AS one (anchor)
                LEFT JOIN scheduler.commands c ON c.command_id = $1
                LEFT JOIN flux.mg_device_registry r ON r.name = $3
                LEFT JOIN scheduler.device_availability a ON a.device_id = r.name
                """,
                command.id,
                command.updated_at,
                command.device_id,
                record.event_key if record else None,
                record.event_type if record else None,
                record.correlation_id if record else None,
                record.envelope if record else None,
            )
        except asyncpg.exceptions.UndefinedTableError as error:
            raise RegistryUnavailable("flux.mg_device_registry does not exist yet") from error
        assert row is not None  # the VALUES anchor always gives one row
        return CommandLook(
            version_known=row["version_known"],
            stored_updated_at=row["stored_updated_at"],
            stored_state=row["stored_state"],
            device=_device_facts(row),
        )

    async def store(self, plan: LifecyclePlan, *, connection: asyncpg.Connection | None = None) -> StoreResult:
        """Write one plan of scheduler.lifecycle in one statement (``scheduler.store_plan``); it decides nothing."""
        result: str = await (connection or self.pool).fetchval(
            "SELECT scheduler.store_plan($1::jsonb)", plan.document()
        )
        return StoreResult(result)

    async def look_plan(self, plan: DevicePlan) -> PlanLook:
        """What carrying out ``plan`` needs, in one round trip: is it stored, the device's newest plan, its running
        plan steps, the device."""
        try:
            row = await self.pool.fetchrow(
                """
                SELECT EXISTS (SELECT 1 FROM scheduler.device_plans p WHERE p.plan_id = $1) AS known,
                       (SELECT max(p.issued_at) FROM scheduler.device_plans p WHERE p.device_id = $2)
                           AS newest_issued_at,
                       ARRAY(SELECT c.command_id FROM scheduler.commands c
                             WHERE c.device_id = $2 AND c.source = $3 AND c.state = ANY($4::text[])
                             ORDER BY c.starts_at) AS superseded,
                       r.name, r.type, r.active, r.metadata, a.online, a.reason, a.observed_at
                FROM (VALUES (1)) AS one (anchor)
                LEFT JOIN flux.mg_device_registry r ON r.name = $2
                LEFT JOIN scheduler.device_availability a ON a.device_id = r.name
                """,
                plan.plan_id,
                plan.device_name,
                ControlSource.PLAN,
                sorted(RUNNING),
            )
        except asyncpg.exceptions.UndefinedTableError as error:
            raise RegistryUnavailable("flux.mg_device_registry does not exist yet") from error
        assert row is not None  # the VALUES anchor always gives one row
        return PlanLook(
            known=row["known"],
            newest_issued_at=row["newest_issued_at"],
            superseded=tuple(row["superseded"]),
            device=_device_facts(row),
        )

    # -- timers ----------------------------------------------------------------------------------

    @staticmethod
    async def claim_due_timers(connection: asyncpg.Connection, *, now: datetime, limit: int) -> list[DueTimer]:
        """Lock due timers for this transaction; other replicas skip them (FOR UPDATE SKIP LOCKED)."""
        rows = await connection.fetch(
            "SELECT id, device_id, command_id, kind FROM scheduler.timers"
            " WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        return [DueTimer(row["id"], row["device_id"], row["command_id"], TimerKind(row["kind"])) for row in rows]

    @staticmethod
    async def lock_devices(connection: asyncpg.Connection, device_ids: list[str]) -> None:
        """Take the devices' dispatch locks for this transaction, in the order given (sorted: no deadlock)."""
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('device:' || device.id))"
            " FROM unnest($1::text[]) WITH ORDINALITY AS device (id, position) ORDER BY device.position",
            device_ids,
        )

    @staticmethod
    async def dispatch_facts(
        connection: asyncpg.Connection, *, device_ids: list[str], command_ids: list[UUID]
    ) -> DispatchFacts:
        """The running commands on ``device_ids`` (those upstream still wants may win), and the trace ids and
        states of those and of ``command_ids``."""
        rows = await connection.fetch(
            """
            SELECT command_id, device_id, created_at, starts_at, ends_at, command, correlation_id, state, source,
                   upstream_status, (device_id = ANY($1::text[]) AND state = ANY($3::text[])) AS running
            FROM scheduler.commands
            WHERE (device_id = ANY($1::text[]) AND state = ANY($3::text[])) OR command_id = ANY($2::uuid[])
            """,
            device_ids,
            command_ids,
            sorted(RUNNING),
        )
        in_force: dict[str, list[ActiveCommand]] = {device_id: [] for device_id in device_ids}
        running: dict[str, list[RunningCommand]] = {device_id: [] for device_id in device_ids}
        correlation_ids: dict[UUID, str | None] = {}
        states: dict[UUID, str] = {}
        sources: dict[UUID, ControlSource] = {}
        for row in rows:
            correlation_ids[row["command_id"]] = row["correlation_id"]
            states[row["command_id"]] = row["state"]
            sources[row["command_id"]] = ControlSource(row["source"])
            if not row["running"]:
                continue
            running[row["device_id"]].append(
                RunningCommand(row["command_id"], CommandState(row["state"]), row["ends_at"])
            )
            # What upstream no longer wants (cancelled, opted out) never wins, whatever its state says.
            if row["upstream_status"] == "OK":
                in_force[row["device_id"]].append(
                    ActiveCommand(
                        command_id=row["command_id"],
                        created_at=row["created_at"],
                        starts_at=row["starts_at"],
                        ends_at=row["ends_at"],
                        command=Command.model_validate(row["command"]),
                        source=ControlSource(row["source"]),
                    )
                )
        return DispatchFacts(
            in_force=in_force, running=running, correlation_ids=correlation_ids, states=states, sources=sources
        )

    # -- acknowledgements ------------------------------------------------------------------------

    @staticmethod
    async def claim_due_acks(connection: asyncpg.Connection, *, now: datetime, limit: int) -> list[AckRow]:
        """Lock the oldest undelivered ack of each command that is due (acks of a command go in order)."""
        rows = await connection.fetch(
            """
            SELECT o.id, o.command_id, o.device_status, o.device_status_reason, o.idempotency_key, o.attempts
            FROM scheduler.ack_outbox o
            WHERE o.delivered_at IS NULL AND o.next_attempt_at <= $1
              AND NOT EXISTS (
                  SELECT 1 FROM scheduler.ack_outbox earlier
                  WHERE earlier.command_id = o.command_id AND earlier.delivered_at IS NULL AND earlier.id < o.id)
            ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED
            """,
            now,
            limit,
        )
        return [
            AckRow(
                row["id"],
                row["command_id"],
                row["device_status"],
                row["device_status_reason"],
                row["idempotency_key"],
                row["attempts"],
            )
            for row in rows
        ]

    @staticmethod
    async def record_ack_attempts(
        connection: asyncpg.Connection,
        *,
        delivered: list[AckRow],
        failed: list[tuple[AckRow, datetime, str]],
        now: datetime,
    ) -> None:
        """Record one pass of PATCHes: one statement for the delivered (with history), one for the failed."""
        if delivered:
            await connection.execute(
                """
                WITH delivered AS (
                    UPDATE scheduler.ack_outbox SET delivered_at = $2, attempts = attempts + 1
                    WHERE id = ANY($1::bigint[])
                )
                INSERT INTO scheduler.command_history (command_id, kind, detail)
                SELECT entry.command_id, 'acknowledged', entry.detail
                FROM unnest($3::uuid[], $4::text[]) WITH ORDINALITY AS entry (command_id, detail, position)
                ORDER BY entry.position
                """,
                [ack.id for ack in delivered],
                now,
                [ack.command_id for ack in delivered],
                [
                    f"PATCH device_status={ack.device_status}"
                    + (f" reason={ack.device_status_reason!r}" if ack.device_status_reason else "")
                    + f" accepted after {ack.attempts + 1} attempt(s)"
                    for ack in delivered
                ],
            )
        if failed:
            await connection.execute(
                "UPDATE scheduler.ack_outbox SET attempts = attempts + 1, next_attempt_at = attempt.retry_at,"
                " last_error = attempt.error"
                " FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS attempt (id, retry_at, error)"
                " WHERE scheduler.ack_outbox.id = attempt.id",
                [ack.id for ack, _, _ in failed],
                [retry_at for _, retry_at, _ in failed],
                [error[:500] for _, _, error in failed],
            )

    async def pending_acks(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM scheduler.ack_outbox WHERE delivered_at IS NULL"))

    # -- agent reports ---------------------------------------------------------------------------

    async def record_availability(self, availability: DeviceAvailability) -> None:
        await self.pool.execute(
            """
            INSERT INTO scheduler.device_availability (device_id, online, reason, observed_at)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (device_id) DO UPDATE SET online = EXCLUDED.online, reason = EXCLUDED.reason,
                observed_at = EXCLUDED.observed_at
            WHERE scheduler.device_availability.observed_at < EXCLUDED.observed_at
            """,
            availability.device_name,
            availability.online,
            availability.reason,
            availability.observed_at,
        )

    # -- inspection (the `gridloop commands` RPC) --------------------------------------------------

    async def list_commands(self, *, limit: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """
            SELECT c.command_id, c.device_id, c.state, c.state_reason, c.upstream_status, c.starts_at, c.ends_at,
                   c.updated_at, c.command->'battery_commands'->>'mode' AS mode,
                   c.command->'battery_commands'->>'setpoint_w' AS setpoint_w,
                   (SELECT count(*) FROM scheduler.ack_outbox o WHERE o.command_id = c.command_id
                        AND o.delivered_at IS NULL) AS acks_pending
            FROM scheduler.commands c ORDER BY c.changed_at DESC LIMIT $1
            """,
            limit,
        )
        return [_jsonable(dict(row)) for row in rows]

    async def show_command(self, command_id: UUID) -> dict[str, Any] | None:
        command = await self.pool.fetchrow("SELECT * FROM scheduler.commands WHERE command_id = $1", command_id)
        if command is None:
            return None
        history = await self.pool.fetch(
            "SELECT at, kind, detail FROM scheduler.command_history WHERE command_id = $1 ORDER BY id",
            command_id,
        )
        versions = await self.pool.fetch(
            "SELECT updated_at, received_at, event_type FROM scheduler.command_versions WHERE command_id = $1"
            " ORDER BY updated_at",
            command_id,
        )
        acks = await self.pool.fetch(
            "SELECT device_status, device_status_reason, attempts, created_at, delivered_at, last_error"
            " FROM scheduler.ack_outbox WHERE command_id = $1 ORDER BY id",
            command_id,
        )
        return {
            "command": _jsonable(dict(command)),
            "history": [_jsonable(dict(row)) for row in history],
            "versions": [_jsonable(dict(row)) for row in versions],
            "acknowledgements": [_jsonable(dict(row)) for row in acks],
        }


def _device_facts(row: asyncpg.Record) -> DeviceFacts | None:
    """The device of a look's row (registry columns and the agent's last report), None when not registered."""
    if row["name"] is None:
        return None
    return DeviceFacts.from_registry(
        name=row["name"],
        device_type=row["type"],
        active=row["active"],
        metadata=row["metadata"],
        online=row["online"],
        offline_reason=row["reason"],
        observed_at=row["observed_at"],
    )


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    # Timestamps, UUIDs and jsonb values, as the JSON the RPC reply carries.
    converted: dict[str, Any] = json.loads(json.dumps(row, default=str))
    return converted
