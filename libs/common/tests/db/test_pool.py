"""The pool against the real database: a release costs no round trip and still leaves a clean connection."""

from __future__ import annotations

from gridloop_common.db import open_pool


async def test_a_pooled_statement_is_one_round_trip(database_url: str) -> None:
    async with open_pool(database_url, min_size=1, max_size=1) as pool:
        async with pool.acquire() as connection:
            protocol = connection._protocol  # the queries this connection sent, as asyncpg counts them
            before = protocol.queries_count
        for _ in range(10):
            assert await pool.fetchval("SELECT 1") == 1

        # asyncpg's default reset would have sent one more query on each of the 11 releases.
        assert protocol.queries_count - before == 10


async def test_a_transaction_left_open_is_rolled_back_on_release(database_url: str) -> None:
    async with open_pool(database_url, min_size=1, max_size=1) as pool:
        await pool.execute("CREATE TABLE IF NOT EXISTS pool_release_probe (value integer)")
        connection = await pool.acquire()
        await connection.execute("BEGIN")
        await connection.execute("INSERT INTO pool_release_probe VALUES (1)")
        await pool.release(connection)

        async with pool.acquire() as again:
            assert again.is_in_transaction() is False
            assert await again.fetchval("SELECT count(*) FROM pool_release_probe") == 0
        await pool.execute("DROP TABLE pool_release_probe")
