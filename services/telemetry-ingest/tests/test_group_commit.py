"""Group commit: concurrent submissions share a transaction, failures stay with their submission."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from telemetry_ingest.ingest.group_commit import GroupCommitter


class _Store:
    """A write_batch that records each call; it blocks until released, and refuses a poisoned record."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.committed: list[int] = []
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()

    async def write_batch(self, kind: str, records: Sequence[int]) -> int:
        self.batches.append(list(records))
        self.started.set()
        await self.release.wait()
        if any(record < 0 for record in records):
            raise ValueError(f"{kind}: negative record")
        self.committed.extend(records)
        return len(records)


async def test_submissions_arriving_during_a_flush_share_the_next_transaction() -> None:
    store = _Store()
    store.release.clear()
    writer: GroupCommitter[str, int] = GroupCommitter(store.write_batch, max_flushes=1)
    first = asyncio.create_task(writer.write("meter", [1, 2]))
    await store.started.wait()
    later = [asyncio.create_task(writer.write("meter", [10 * index, 10 * index + 1])) for index in range(1, 6)]
    await asyncio.sleep(0)  # let them all submit while the first flush is held
    assert not any(task.done() for task in [first, *later])  # nobody returns before its commit
    store.release.set()
    await asyncio.gather(first, *later)
    assert store.batches == [[1, 2], [10, 11, 20, 21, 30, 31, 40, 41, 50, 51]]
    assert sorted(store.committed) == sorted([1, 2, 10, 11, 20, 21, 30, 31, 40, 41, 50, 51])


async def test_a_group_never_exceeds_max_rows() -> None:
    store = _Store()
    store.release.clear()
    writer: GroupCommitter[str, int] = GroupCommitter(store.write_batch, max_rows=5, max_flushes=1)
    tasks = [asyncio.create_task(writer.write("meter", [index] * 2)) for index in range(1, 7)]
    await store.started.wait()
    store.release.set()
    await asyncio.gather(*tasks)
    assert [len(batch) for batch in store.batches] == [4, 4, 4]


async def test_a_bad_submission_fails_alone_and_its_neighbours_commit() -> None:
    store = _Store()
    store.release.clear()
    writer: GroupCommitter[str, int] = GroupCommitter(store.write_batch, max_flushes=1)
    first = asyncio.create_task(writer.write("meter", [1]))
    await store.started.wait()
    good = asyncio.create_task(writer.write("meter", [2, 3]))
    bad = asyncio.create_task(writer.write("meter", [4, -5]))
    also_good = asyncio.create_task(writer.write("meter", [6]))
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.gather(first, good, also_good)
    with pytest.raises(ValueError, match="negative record"):
        await bad
    assert sorted(store.committed) == [1, 2, 3, 6]
    # The shared attempt, then each submission of the failed group on its own.
    assert store.batches[1] == [2, 3, 4, -5, 6]
    assert store.batches[2:] == [[2, 3], [4, -5], [6]]


async def test_kinds_are_written_in_separate_transactions() -> None:
    store = _Store()
    writer: GroupCommitter[str, int] = GroupCommitter(store.write_batch)
    await asyncio.gather(writer.write("meter", [1]), writer.write("bess", [2]))
    assert sorted(store.batches) == [[1], [2]]


async def test_a_cancelled_waiter_does_not_cancel_the_flush_its_neighbours_wait_on() -> None:
    store = _Store()
    store.release.clear()
    writer: GroupCommitter[str, int] = GroupCommitter(store.write_batch, max_flushes=1)
    first = asyncio.create_task(writer.write("meter", [1]))
    await store.started.wait()
    cancelled = asyncio.create_task(writer.write("meter", [2]))
    neighbour = asyncio.create_task(writer.write("meter", [3]))
    await asyncio.sleep(0)
    cancelled.cancel()
    store.release.set()
    await asyncio.gather(first, neighbour)
    assert cancelled.cancelled()
    # The cancelled handler's message is requeued and redelivered; its rows may be stored, which is harmless
    # (the insert is idempotent), but the neighbour's rows must be.
    assert 3 in store.committed


async def test_an_empty_submission_writes_nothing() -> None:
    store = _Store()
    writer: GroupCommitter[str, int] = GroupCommitter(store.write_batch)
    await writer.write("meter", [])
    assert store.batches == []
