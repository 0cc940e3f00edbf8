"""The Flux API's share of the database pool: a cap for the API as a whole and a smaller one per client.

The pool also serves the readings consumer, the rollup refresher and /readyz. Twelve slow anonymous requests
once held all ten connections for 30 s, and nothing else got one. Here the API may hold at most ``total``
connections (the pool's size less those reserved for the rest of the service), and one client at most
``per_client`` of them. A request waits up to ``wait_s`` for its turn, then is refused: 429 when its own
client is what holds the connections, 503 when the API's share is taken; both say when to retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from telemetry_ingest.api.postgrest import PostgrestError

__all__ = ["ConnectionShare", "ConnectionsBusy", "client_key"]

# How long a request waits for a connection of its client's or the API's share before it is refused.
WAIT_S = 2.0
RETRY_AFTER_S = 1


class ConnectionsBusy(PostgrestError):
    """A refusal for want of a connection, with the ``Retry-After`` it is answered with."""

    def __init__(self, status: int, code: str, message: str, *, details: str) -> None:
        super().__init__(status, code, message, details=details)
        self.retry_after = RETRY_AFTER_S


def client_key(*, role: str, token: str, claims: Mapping[str, Any], client_address: str) -> str:
    """Whose share a request draws on: the anon key is public, so an anonymous client is its address; a signed-in
    user is its subject; any other key is itself (a digest: the token is a credential and stays out of memory)."""
    if role == "anon":
        return f"address:{client_address}"
    subject = claims.get("sub")
    if isinstance(subject, str) and subject:
        return f"{role}:subject:{subject}"
    return f"{role}:key:{hashlib.sha256(token.encode()).hexdigest()[:32]}"


@dataclass
class _Client:
    slots: asyncio.Semaphore
    holders: int = 0  # requests holding or waiting for one of the client's slots


@dataclass
class ConnectionShare:
    """At most ``total`` connections for the API, at most ``per_client`` for one client key."""

    total: int
    per_client: int
    wait_s: float = WAIT_S
    _share: asyncio.Semaphore = field(init=False)
    _clients: dict[str, _Client] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_client < 1:
            raise ValueError("total and per_client must be at least 1")
        self._share = asyncio.Semaphore(self.total)

    @contextlib.asynccontextmanager
    async def hold(self, client: str) -> AsyncIterator[None]:
        """A slot of ``client``'s and of the API's share for the block, or ``ConnectionsBusy``."""
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = _Client(asyncio.Semaphore(self.per_client))
        entry.holders += 1
        try:
            try:
                async with asyncio.timeout(self.wait_s):
                    await entry.slots.acquire()
            except TimeoutError:
                raise ConnectionsBusy(
                    429,
                    "over_connection_limit",
                    "Too many concurrent requests from this client",
                    details=f"At most {self.per_client} database connections per API key (anon: per client address)",
                ) from None
            try:
                try:
                    async with asyncio.timeout(self.wait_s):
                        await self._share.acquire()
                except TimeoutError:
                    raise ConnectionsBusy(
                        503,
                        "PGRST003",
                        "Timed out acquiring connection from connection pool.",
                        details=f"Every one of the API's {self.total} database connections stayed busy",
                    ) from None
                try:
                    yield
                finally:
                    self._share.release()
            finally:
                entry.slots.release()
        finally:
            entry.holders -= 1
            if entry.holders == 0:
                del self._clients[client]  # bounded by the requests in flight

    @property
    def clients(self) -> int:
        """How many clients hold or wait for a connection now."""
        return len(self._clients)
