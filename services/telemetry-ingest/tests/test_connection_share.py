"""The Flux API's share of the pool, without a database: per-client and whole-API caps, waits and refusals."""

from __future__ import annotations

import asyncio

import pytest

from telemetry_ingest.api.connection_share import ConnectionsBusy, ConnectionShare, client_key
from telemetry_ingest.settings import IngestSettings


class Holders:
    """Requests holding a slot until released; ``all_in`` is set once ``expected`` of them hold one."""

    def __init__(self, share: ConnectionShare, expected: int) -> None:
        self.share = share
        self.expected = expected
        self.holding = 0
        self.all_in = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self, client: str) -> None:
        async with self.share.hold(client):
            self.holding += 1
            if self.holding == self.expected:
                self.all_in.set()
            await self.release.wait()


async def test_a_client_holds_at_most_its_share_and_the_next_waits_then_is_refused_with_429() -> None:
    share = ConnectionShare(total=8, per_client=2, wait_s=0.05)
    holders = Holders(share, 3)
    first = [asyncio.create_task(holders.hold("address:10.0.0.1")) for _ in range(2)]
    other = asyncio.create_task(holders.hold("address:10.0.0.2"))
    await holders.all_in.wait()
    with pytest.raises(ConnectionsBusy) as refused:
        async with share.hold("address:10.0.0.1"):
            pass
    assert (refused.value.status, refused.value.code, refused.value.retry_after) == (429, "over_connection_limit", 1)
    assert "At most 2 database connections" in (refused.value.details or "")
    holders.release.set()
    await asyncio.gather(*first, other)
    assert share.clients == 0  # nothing kept for clients that are gone


async def test_a_waiting_request_gets_the_slot_its_client_frees() -> None:
    share = ConnectionShare(total=8, per_client=1, wait_s=5.0)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with share.hold("key:a"):
            entered.set()
            await release.wait()

    task = asyncio.create_task(first())
    await entered.wait()

    async def second() -> str:
        async with share.hold("key:a"):
            return "served"

    waiting = asyncio.create_task(second())
    await asyncio.sleep(0)
    assert not waiting.done()
    release.set()
    assert await waiting == "served"
    await task


async def test_the_api_never_takes_more_than_its_share_and_then_answers_503() -> None:
    share = ConnectionShare(total=3, per_client=2, wait_s=0.05)
    holders = Holders(share, 3)
    tasks = [asyncio.create_task(holders.hold(f"key:{number}")) for number in range(3)]
    await holders.all_in.wait()
    with pytest.raises(ConnectionsBusy) as refused:
        async with share.hold("key:another"):
            pass
    assert (refused.value.status, refused.value.code) == (503, "PGRST003")
    holders.release.set()
    await asyncio.gather(*tasks)
    async with share.hold("key:another"):
        pass


def test_client_keys() -> None:
    anon = client_key(role="anon", token="t", claims={"role": "anon"}, client_address="10.0.0.1")
    assert anon == "address:10.0.0.1"
    user = client_key(role="authenticated", token="t1", claims={"sub": "user-1"}, client_address="10.0.0.1")
    assert user == client_key(role="authenticated", token="t2", claims={"sub": "user-1"}, client_address="10.0.0.9")
    service = client_key(role="service_role", token="secret-token", claims={}, client_address="10.0.0.1")
    assert service.startswith("service_role:key:") and "secret-token" not in service


def test_the_default_per_role_limits() -> None:
    limits = IngestSettings(jwt_secret="x" * 32).role_limits()
    assert {role: limit.statement_timeout_s for role, limit in limits.items()} == {
        "anon": 3.0,
        "authenticated": 8.0,
        "service_role": 30.0,
    }
    assert limits["anon"].max_body_bytes < limits["service_role"].max_body_bytes
    assert (
        limits["anon"].max_insert_rows
        < limits["authenticated"].max_insert_rows
        < limits["service_role"].max_insert_rows
    )
