"""SQL of the scheduler's tables (schema ``scheduler``); each public method is one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from gridloop_common.contracts import Command, DeviceAvailability, DeviceOutcome
from scheduler.planning import ActiveCommand, DeviceFacts

__all__ = [
    "AckRow",
    "CommandRepository",
    "EventRepository",
    "RegistryUnavailable",
    "TimerRow",
]


class RegistryUnavailable(Exception):
    """flux.mg_device_registry does not exist yet (telemetry-ingest has not migrated)."""


class EventRepository:
    """Upstream events, stored once each."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record_event(
        self, *, event_key: str, event_type: str, envelope: dict[str, Any], correlation_id: str | None
    ) -> bool:
        """Store an event; returns False when it was already stored (a redelivery)."""
        status = await self._pool.execute(
            "INSERT INTO scheduler.upstream_events (event_key, event_type, correlation_id, envelope)"
            " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (event_key) DO NOTHING",
            event_key,
            event_type,
            correlation_id,
            envelope,
        )
        return bool(status.endswith(" 1"))


@dataclass(frozen=True)
class TimerRow:
    id: int
    device_id: str
    command_id: UUID | None
    kind: str


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

    # -- reading what decisions need -------------------------------------------------------------

    @staticmethod
    async def device_facts(connection: asyncpg.Connection, device_id: str) -> DeviceFacts | None:
        try:
            row = await connection.fetchrow(
                "SELECT r.name, r.type, r.active, r.metadata, a.online, a.reason, a.observed_at"
                " FROM flux.mg_device_registry r"
                " LEFT JOIN scheduler.device_availability a ON a.device_id = r.name"
                " WHERE r.name = $1",
                device_id,
            )
        except asyncpg.exceptions.UndefinedTableError as error:
            raise RegistryUnavailable("flux.mg_device_registry does not exist yet") from error
        if row is None:
            return None
        metadata = row["metadata"]
        return DeviceFacts.from_registry(
            name=row["name"],
            device_type=row["type"],
            active=row["active"],
            metadata=metadata if isinstance(metadata, dict) else None,
            online=row["online"],
            offline_reason=row["reason"],
            observed_at=row["observed_at"],
        )

    @staticmethod
    async def stored_version(connection: asyncpg.Connection, command_id: UUID) -> tuple[datetime, str] | None:
        row = await connection.fetchrow(
            "SELECT updated_at, state FROM scheduler.commands WHERE command_id = $1 FOR UPDATE", command_id
        )
        return None if row is None else (row["updated_at"], row["state"])

    @staticmethod
    async def add_version(
        connection: asyncpg.Connection, command: Command, *, event_type: str, correlation_id: str | None
    ) -> bool:
        status = await connection.execute(
            "INSERT INTO scheduler.command_versions (command_id, updated_at, event_type, correlation_id, command)"
            " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING",
            command.id,
            command.updated_at,
            event_type,
            correlation_id,
            command.model_dump(mode="json"),
        )
        return bool(status.endswith(" 1"))

    @staticmethod
    async def history(connection: asyncpg.Connection, command_id: UUID, kind: str, detail: str) -> None:
        await connection.execute(
            "INSERT INTO scheduler.command_history (command_id, kind, detail) VALUES ($1, $2, $3)",
            command_id,
            kind,
            detail,
        )

    @staticmethod
    async def count_stale(connection: asyncpg.Connection, command_id: UUID) -> None:
        await connection.execute(
            "UPDATE scheduler.commands SET stale_versions_ignored = stale_versions_ignored + 1 WHERE command_id = $1",
            command_id,
        )

    @staticmethod
    async def save_command(
        connection: asyncpg.Connection,
        command: Command,
        *,
        state: str,
        reason: str | None,
        correlation_id: str | None,
    ) -> None:
        await connection.execute(
            """
            INSERT INTO scheduler.commands (command_id, device_id, created_at, updated_at, starts_at, ends_at,
                upstream_status, state, state_reason, command, correlation_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11)
            ON CONFLICT (command_id) DO UPDATE SET
                device_id = EXCLUDED.device_id, created_at = EXCLUDED.created_at,
                updated_at = EXCLUDED.updated_at, starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at,
                upstream_status = EXCLUDED.upstream_status, state = EXCLUDED.state,
                state_reason = EXCLUDED.state_reason, command = EXCLUDED.command,
                correlation_id = COALESCE(EXCLUDED.correlation_id, scheduler.commands.correlation_id),
                changed_at = now()
            """,
            command.id,
            command.device_id,
            command.created_at,
            command.updated_at,
            command.starts_at,
            command.ends_at,
            str(command.status),
            state,
            reason,
            command.model_dump(mode="json"),
            correlation_id,
        )

    @staticmethod
    async def replace_timers(
        connection: asyncpg.Connection,
        *,
        device_id: str,
        command_id: UUID,
        timers: list[tuple[str, datetime]],
    ) -> None:
        """Drop the command's timers that have not fired and add ``timers`` (kind, due_at)."""
        await connection.execute("DELETE FROM scheduler.timers WHERE command_id = $1 AND fired_at IS NULL", command_id)
        if timers:
            await connection.executemany(
                "INSERT INTO scheduler.timers (device_id, command_id, kind, due_at) VALUES ($1, $2, $3, $4)",
                [(device_id, command_id, kind, due_at) for kind, due_at in timers],
            )
        await connection.execute("NOTIFY scheduler_timers")

    @staticmethod
    async def enqueue_ack(
        connection: asyncpg.Connection, *, command_id: UUID, device_status: str, reason: str | None
    ) -> None:
        await connection.execute(
            "INSERT INTO scheduler.ack_outbox (command_id, device_status, device_status_reason) VALUES ($1, $2, $3)",
            command_id,
            device_status,
            reason,
        )
        await connection.execute("NOTIFY scheduler_acks")

    # -- timers ----------------------------------------------------------------------------------

    @staticmethod
    async def claim_due_timers(connection: asyncpg.Connection, *, now: datetime, limit: int) -> list[TimerRow]:
        """Lock due timers for this transaction; other replicas skip them (FOR UPDATE SKIP LOCKED)."""
        rows = await connection.fetch(
            "SELECT id, device_id, command_id, kind FROM scheduler.timers"
            " WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit,
        )
        return [TimerRow(row["id"], row["device_id"], row["command_id"], row["kind"]) for row in rows]

    @staticmethod
    async def commands_in_force(connection: asyncpg.Connection, device_id: str) -> list[ActiveCommand]:
        rows = await connection.fetch(
            "SELECT command_id, created_at, starts_at, ends_at, command FROM scheduler.commands"
            " WHERE device_id = $1 AND state IN ('scheduled', 'active') AND upstream_status = 'OK'",
            device_id,
        )
        return [
            ActiveCommand(
                command_id=row["command_id"],
                created_at=row["created_at"],
                starts_at=row["starts_at"],
                ends_at=row["ends_at"],
                command=Command.model_validate(row["command"]),
            )
            for row in rows
        ]

    @staticmethod
    async def mark_fired(
        connection: asyncpg.Connection, timer_ids: list[int], *, now: datetime, action_id: UUID
    ) -> None:
        await connection.execute(
            "UPDATE scheduler.timers SET fired_at = $2, action_id = $3 WHERE id = ANY($1::bigint[])",
            timer_ids,
            now,
            action_id,
        )

    @staticmethod
    async def settle_states(
        connection: asyncpg.Connection, *, device_id: str, active_command_id: UUID | None, now: datetime
    ) -> list[tuple[UUID, str]]:
        """After a dispatch: the winner is active, commands past their end are completed, others wait."""
        rows = await connection.fetch(
            """
            UPDATE scheduler.commands SET
                state = CASE
                    WHEN command_id = $2 THEN 'active'
                    WHEN ends_at IS NOT NULL AND ends_at <= $3 THEN 'completed'
                    ELSE 'scheduled' END,
                changed_at = now()
            WHERE device_id = $1 AND state IN ('scheduled', 'active')
              AND state IS DISTINCT FROM CASE
                    WHEN command_id = $2 THEN 'active'
                    WHEN ends_at IS NOT NULL AND ends_at <= $3 THEN 'completed'
                    ELSE 'scheduled' END
            RETURNING command_id, state
            """,
            device_id,
            active_command_id,
            now,
        )
        return [(row["command_id"], row["state"]) for row in rows]

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
    async def ack_delivered(connection: asyncpg.Connection, ack: AckRow, *, now: datetime) -> None:
        await connection.execute(
            "UPDATE scheduler.ack_outbox SET delivered_at = $2, attempts = attempts + 1 WHERE id = $1",
            ack.id,
            now,
        )
        await CommandRepository.history(
            connection,
            ack.command_id,
            "acknowledged",
            f"PATCH device_status={ack.device_status}"
            + (f" reason={ack.device_status_reason!r}" if ack.device_status_reason else "")
            + f" accepted after {ack.attempts + 1} attempt(s)",
        )

    @staticmethod
    async def ack_failed(connection: asyncpg.Connection, ack: AckRow, *, retry_at: datetime, error: str) -> None:
        await connection.execute(
            "UPDATE scheduler.ack_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3"
            " WHERE id = $1",
            ack.id,
            retry_at,
            error[:500],
        )

    async def pending_acks(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM scheduler.ack_outbox WHERE delivered_at IS NULL"))

    # -- agent reports ---------------------------------------------------------------------------

    async def record_outcome(self, outcome: DeviceOutcome) -> bool:
        """Store an outcome once; on a failure of a command in force, mark it failed and ack FAILED."""
        async with self.pool.acquire() as connection, connection.transaction():
            status = await connection.execute(
                "INSERT INTO scheduler.device_outcomes (action_id, command_id, device_id, applied, reason,"
                " applied_setpoint_w, observed_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                outcome.action_id,
                outcome.command_id,
                outcome.device_name,
                outcome.applied,
                outcome.reason,
                outcome.applied_setpoint_w,
                outcome.observed_at,
            )
            if not status.endswith(" 1"):
                return False
            if outcome.command_id is None:
                return True
            detail = (
                f"applied on {outcome.device_name}"
                + (f" at {outcome.applied_setpoint_w} W" if outcome.applied_setpoint_w is not None else "")
                if outcome.applied
                else f"failed on {outcome.device_name}: {outcome.reason}"
            )
            await self.history(connection, outcome.command_id, "outcome", detail)
            state = await connection.fetchval(
                "UPDATE scheduler.commands SET last_outcome = $2::jsonb, changed_at = now() WHERE command_id = $1"
                " RETURNING state",
                outcome.command_id,
                outcome.model_dump(mode="json"),
            )
            if not outcome.applied and state in ("scheduled", "active"):
                await connection.execute(
                    "UPDATE scheduler.commands SET state = 'failed', state_reason = $2 WHERE command_id = $1",
                    outcome.command_id,
                    outcome.reason,
                )
                await self.enqueue_ack(
                    connection, command_id=outcome.command_id, device_status="FAILED", reason=outcome.reason
                )
        return True

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


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    # Timestamps, UUIDs and jsonb values, as the JSON the RPC reply carries.
    converted: dict[str, Any] = json.loads(json.dumps(row, default=str))
    return converted
