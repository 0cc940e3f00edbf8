"""Group commit: the readings of concurrently handled messages share one transaction.

A transaction per 200-reading message spends more on its fixed costs (round trips, statement
triggers, the commit's WAL flush) than on the rows. Here each handler submits its records and waits;
while a flush is running, later submissions pile up and go together in the next one, up to
``max_rows``. Nothing waits on a timer: an idle writer flushes a lone submission at once, a busy one
flushes bigger batches, so batching grows with load and adds no latency when there is none.

A submission's waiter is released only after the transaction holding its rows has committed, so the
consumer still acks a message only once its readings are durable. If a shared transaction fails, each
submission of it is retried in a transaction of its own: one message's bad data (or a value that does
not fit its column) fails only that message, never its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from prometheus_client import Histogram

__all__ = ["GROUP_ROWS", "GroupCommitter"]

logger = logging.getLogger(__name__)

GROUP_ROWS: Final = Histogram(
    "gridloop_ingest_group_commit_rows",
    "Readings written per group-commit transaction.",
    ["kind"],
    buckets=(1, 10, 100, 200, 500, 1000, 2000, 5000, 10000, 20000),
)

KindT = TypeVar("KindT", bound=str)
RecordT = TypeVar("RecordT")


@dataclass
class _Submission(Generic[RecordT]):
    records: Sequence[RecordT]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommitter(Generic[KindT, RecordT]):
    """Writes submitted records with ``write_batch(kind, records)``, merging concurrent submissions.

    ``max_flushes`` transactions per kind run at once (two: one commits while the next fills).
    """

    def __init__(
        self,
        write_batch: Callable[[KindT, Sequence[RecordT]], Awaitable[int]],
        *,
        max_rows: int = 10_000,
        max_flushes: int = 2,
    ) -> None:
        if max_rows < 1 or max_flushes < 1:
            raise ValueError("max_rows and max_flushes must be at least 1")
        self._write_batch = write_batch
        self._max_rows = max_rows
        self._max_flushes = max_flushes
        self._pending: dict[KindT, deque[_Submission[RecordT]]] = {}
        self._flushers: dict[KindT, set[asyncio.Task[None]]] = {}

    async def write(self, kind: KindT, records: Sequence[RecordT]) -> None:
        """Return once ``records`` are committed; raise what writing them (on their own) raised."""
        if not records:
            return
        submission: _Submission[RecordT] = _Submission(records)
        self._pending.setdefault(kind, deque()).append(submission)
        flushers = self._flushers.setdefault(kind, set())
        if len(flushers) < self._max_flushes:
            task = asyncio.create_task(self._flush_while_pending(kind), name=f"group-commit-{kind}")
            flushers.add(task)
            task.add_done_callback(flushers.discard)
        # shield: a cancelled handler (shutdown) must not cancel the flush its neighbours wait on.
        await asyncio.shield(submission.done)

    async def _flush_while_pending(self, kind: KindT) -> None:
        pending = self._pending[kind]
        while pending:
            group = [pending.popleft()]
            rows = len(group[0].records)
            while pending and rows + len(pending[0].records) <= self._max_rows:
                rows += len(pending[0].records)
                group.append(pending.popleft())
            try:
                await self._flush(kind, group, rows)
            except BaseException:
                # Cancelled mid-flush (the event loop is closing): nobody may wait forever. Whether the
                # rows committed is unknown, so the waiters fail and their messages are redelivered.
                for submission in group:
                    _settle(submission.done, RuntimeError("the group commit was cancelled"))
                raise

    async def _flush(self, kind: KindT, group: list[_Submission[RecordT]], rows: int) -> None:
        if len(group) == 1:
            await self._flush_alone(kind, group[0])
            return
        records = [record for submission in group for record in submission.records]
        try:
            await self._write_batch(kind, records)
        except Exception as error:
            logger.info(
                "group commit failed; writing its submissions one by one",
                extra={"kind": str(kind), "submissions": len(group), "error": repr(error)},
            )
            for submission in group:
                await self._flush_alone(kind, submission)
            return
        GROUP_ROWS.labels(str(kind)).observe(rows)
        for submission in group:
            _settle(submission.done, None)

    async def _flush_alone(self, kind: KindT, submission: _Submission[RecordT]) -> None:
        try:
            await self._write_batch(kind, submission.records)
        except Exception as error:
            _settle(submission.done, error)
        else:
            GROUP_ROWS.labels(str(kind)).observe(len(submission.records))
            _settle(submission.done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
