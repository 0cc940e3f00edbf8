"""Registry change notices: LISTEN on the channel telemetry-ingest's trigger notifies (migration 0017).

A dedicated connection, outside the pool: a pooled connection would lose its LISTEN when released. When the
connection drops it is opened again with backoff; each (re)connection also counts as a change, since
notices sent while nobody listened are gone. The fleet's periodic re-read stays as the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

__all__ = ["REGISTRY_CHANNEL", "listen_for_registry_changes"]

logger = logging.getLogger(__name__)

REGISTRY_CHANNEL = "flux_device_registry"
_RECONNECT_FIRST_S = 0.2
_RECONNECT_MAX_S = 5.0
_PROBE_TIMEOUT_S = 5.0


async def listen_for_registry_changes(
    database_url: str,
    on_change: Callable[[], None],
    *,
    channel: str = REGISTRY_CHANNEL,
    probe_interval_s: float = 30.0,
    application_name: str = "device-agent-registry",
) -> None:
    """Call ``on_change`` on every notice on ``channel`` and after every (re)connection; runs until cancelled.

    Every ``probe_interval_s`` a ``SELECT 1`` checks the connection, so one that died silently (no FIN from
    a vanished peer) is replaced rather than leaving the agent deaf until the next periodic re-read.
    """
    delay = _RECONNECT_FIRST_S
    while True:
        try:
            connection = await asyncpg.connect(database_url, server_settings={"application_name": application_name})
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            logger.warning(
                "registry LISTEN connection failed; retrying", extra={"error": repr(error), "retry_in_s": delay}
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)
            continue
        delay = _RECONNECT_FIRST_S
        try:
            await _listen(connection, channel, on_change, probe_interval_s)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            logger.warning("registry LISTEN connection lost; reconnecting", extra={"error": repr(error)})
        finally:
            if not connection.is_closed():
                # terminate(), not close(): close() waits for the server, which may be what is gone.
                connection.terminate()
        # A connection that fails as soon as it is opened must not make this a busy loop.
        await asyncio.sleep(_RECONNECT_FIRST_S)


async def _listen(
    connection: asyncpg.Connection, channel: str, on_change: Callable[[], None], probe_interval_s: float
) -> None:
    """LISTEN on ``connection`` until it is lost (returns) or fails a probe (raises)."""
    lost = asyncio.Event()
    connection.add_termination_listener(lambda _connection: lost.set())
    await connection.add_listener(channel, lambda *_notice: on_change())
    logger.info("listening for registry changes", extra={"channel": channel})
    on_change()  # whatever changed while nobody listened
    while not lost.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), probe_interval_s)
        if not lost.is_set():
            await connection.fetchval("SELECT 1", timeout=_PROBE_TIMEOUT_S)
    logger.warning("registry LISTEN connection lost; reconnecting")
