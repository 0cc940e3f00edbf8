"""ModbusBus: one Modbus TCP connection per device address, with priorities, timeouts and backoff."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from device_agent.modbus.errors import (
    DeviceUnavailable,
    InvalidResponse,
    RequestRejected,
    ResponseTimeout,
)
from gridloop_common.clock import Clock, SystemClock

__all__ = [
    "MAX_READ_REGISTERS",
    "MAX_WRITE_REGISTERS",
    "DeviceAddress",
    "ModbusBus",
    "Priority",
    "PriorityLock",
]

logger = logging.getLogger(__name__)

# Protocol limits of function codes 3 and 16 (Modbus Application Protocol v1.1b3, 6.3 and 6.12).
MAX_READ_REGISTERS = 125
MAX_WRITE_REGISTERS = 123


@dataclass(frozen=True)
class DeviceAddress:
    """Where a device answers: TCP host and port, and its Modbus unit id behind that endpoint."""

    host: str
    port: int = 502
    unit_id: int = 1

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.unit_id}"


class Priority(enum.IntEnum):
    """Who is waiting for the line; lower values go first."""

    CONTROL = 0
    POLL = 1


class PriorityLock:
    """An asyncio lock that hands itself to the highest-priority waiter (FIFO within a priority)."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: dict[Priority, collections.deque[asyncio.Future[None]]] = {
            priority: collections.deque() for priority in Priority
        }

    def locked(self) -> bool:
        """True while some task holds the lock."""
        return self._locked

    async def acquire(self, priority: Priority) -> None:
        """Wait until this task holds the lock."""
        if not self._locked and not any(self._waiters.values()):
            self._locked = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters[priority]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # Cancelled after the lock was handed over: pass it on, or it would never be released.
            if waiter.done() and not waiter.cancelled():
                self.release()
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)

    def release(self) -> None:
        """Hand the lock to the next waiter, highest priority first, or unlock it."""
        if not self._locked:
            raise RuntimeError("release of an unlocked PriorityLock")
        for priority in Priority:
            queue = self._waiters[priority]
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    # Ownership moves to the waiter; the lock stays locked in between.
                    waiter.set_result(None)
                    return
        self._locked = False

    @asynccontextmanager
    async def hold(self, priority: Priority) -> AsyncIterator[None]:
        """Hold the lock for the body of an `async with`."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


class _Connection:
    """One TCP endpoint: its pymodbus client, its lock and its reconnect backoff."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
        clock: Clock,
    ) -> None:
        self.host = host
        self.port = port
        self.lock = PriorityLock()
        self._timeout_s = timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self._client: AsyncModbusTcpClient | None = None
        self._backoff_s = 0.0
        self._next_attempt_at = 0.0
        self._last_failure = ""
        self.available: bool | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def _connected_client(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.drop()
        now = self._clock.monotonic()
        if now < self._next_attempt_at:
            raise DeviceUnavailable(
                f"{self.host}:{self.port} unreachable ({self._last_failure}); "
                f"next attempt in {self._next_attempt_at - now:.1f} s"
            )
        # reconnect_delay=0 switches pymodbus's own reconnect loop off: this class owns reconnection.
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self._timeout_s,
            retries=0,
            reconnect_delay=0,
            name=f"{self.host}:{self.port}",
        )
        try:
            connected = await asyncio.wait_for(client.connect(), self._timeout_s + 0.5)
        except (TimeoutError, OSError) as error:
            client.close()
            self._fail(f"connect failed: {error or type(error).__name__}")
            raise DeviceUnavailable(f"{self.host}:{self.port} {self._last_failure}") from error
        if not connected:
            client.close()
            self._fail("connection refused or timed out")
            raise DeviceUnavailable(f"{self.host}:{self.port} {self._last_failure}")
        self._client = client
        self._backoff_s = 0.0
        self._next_attempt_at = 0.0
        self._mark_available(True, "connected")
        return client

    def _fail(self, reason: str) -> None:
        self._last_failure = reason
        self._backoff_s = min(self._backoff_max_s, self._backoff_s * 2 if self._backoff_s else self._backoff_initial_s)
        self._next_attempt_at = self._clock.monotonic() + self._backoff_s
        self._mark_available(False, reason)

    def _mark_available(self, available: bool, reason: str) -> None:
        # Log once per transition, not once per failed request (a dead device is polled every few s).
        if self.available is available:
            return
        self.available = available
        endpoint = f"{self.host}:{self.port}"
        if available:
            logger.info("modbus endpoint up", extra={"endpoint": endpoint})
        else:
            logger.info("modbus endpoint unavailable", extra={"endpoint": endpoint, "reason": reason})

    def drop(self) -> None:
        """Close the TCP connection; the next request reconnects."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def execute(
        self,
        operation: Callable[[AsyncModbusTcpClient], Awaitable[Any]],
        *,
        priority: Priority,
        description: str,
    ) -> Any:
        where = f"{description} at {self.host}:{self.port}"
        async with self.lock.hold(priority):
            client = await self._connected_client()
            try:
                # pymodbus applies the same timeout; this outer one only guards against a hang in it.
                async with asyncio.timeout(self._timeout_s + 0.5):
                    response = await operation(client)
            except (TimeoutError, ModbusIOException) as error:
                # A late reply must never be taken for the next request's answer: start a new connection.
                self.drop()
                self._last_failure = f"no reply within {self._timeout_s} s"
                self._mark_available(False, self._last_failure)
                raise ResponseTimeout(f"{where}: {self._last_failure}") from error
            except (ConnectionException, OSError) as error:
                self.drop()
                self._fail(f"connection lost: {error}")
                raise DeviceUnavailable(f"{where}: {self._last_failure}") from error
            except ModbusException as error:
                self.drop()
                raise InvalidResponse(f"{where}: {error}") from error
        if response is None:
            raise InvalidResponse(f"{where}: no response object")
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            raise RequestRejected(where, exception_code=code)
        return response


class ModbusBus:
    """Modbus TCP access for many devices: one connection and one priority lock per host and port.

    Design of the write path. Each (host, port) has exactly one TCP connection (many devices accept only
    one or two) guarded by a priority lock: a control request (write or read-back) waiting for the line
    is always served before any waiting poll, and every request holds the line for one Modbus
    transaction only. Polls are issued as separate reads of at most 125 registers, so a control waits at
    most for the one transaction in flight, never for a whole poll cycle.

    Reliability choices:
    - pymodbus retries are off (retries=0) and its own reconnect loop is off: after a timeout a late
      reply could be matched to the next request, so a timed-out connection is closed and reopened.
    - After a failed connect the address is in backoff (doubling up to a cap): requests fail at once
      with DeviceUnavailable instead of each waiting for a connect timeout.
    - Devices never share a lock or connection, so a dead or slow device cannot delay another one.

    Use as an async context manager (or call `close()`), e.g.::

        async with ModbusBus(timeout_s=2.0) as bus:
            registers = await bus.read_holding_registers(address, 40000, 2)
    """

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._timeout_s = timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._clock: Clock = clock or SystemClock()
        self._connections: dict[tuple[str, int], _Connection] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection."""
        for connection in self._connections.values():
            connection.drop()
        self._connections.clear()

    def is_connected(self, address: DeviceAddress) -> bool:
        """True when a TCP connection to the device's endpoint is open now."""
        connection = self._connections.get((address.host, address.port))
        return connection is not None and connection.connected

    def _connection(self, address: DeviceAddress) -> _Connection:
        key = (address.host, address.port)
        connection = self._connections.get(key)
        if connection is None:
            connection = _Connection(
                host=address.host,
                port=address.port,
                timeout_s=self._timeout_s,
                backoff_initial_s=self._backoff_initial_s,
                backoff_max_s=self._backoff_max_s,
                clock=self._clock,
            )
            self._connections[key] = connection
        return connection

    async def read_holding_registers(
        self,
        address: DeviceAddress,
        start: int,
        count: int,
        *,
        priority: Priority = Priority.POLL,
    ) -> list[int]:
        """Read `count` (1..125) holding registers from `start` in one Modbus transaction.

        Callers split longer reads themselves, on point boundaries, so no multi-register value is torn
        between two transactions.
        """
        if not 1 <= count <= MAX_READ_REGISTERS:
            raise ValueError(f"count must be 1..{MAX_READ_REGISTERS}, got {count}")
        _check_span(start, count)
        description = f"read {count} registers at {start} of unit {address.unit_id}"
        response = await self._connection(address).execute(
            lambda client: client.read_holding_registers(start, count=count, device_id=address.unit_id),
            priority=priority,
            description=description,
        )
        registers = list(response.registers)
        if len(registers) != count:
            raise InvalidResponse(f"{description}: got {len(registers)} registers")
        return registers

    async def write_registers(
        self,
        address: DeviceAddress,
        start: int,
        values: Sequence[int],
        *,
        priority: Priority = Priority.CONTROL,
    ) -> None:
        """Write 1..123 registers from `start` with function code 16, ahead of any waiting poll."""
        if not 1 <= len(values) <= MAX_WRITE_REGISTERS:
            raise ValueError(f"1..{MAX_WRITE_REGISTERS} values per write, got {len(values)}")
        _check_span(start, len(values))
        for value in values:
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"register value {value} is not a 16-bit word")
        words = list(values)
        await self._connection(address).execute(
            lambda client: client.write_registers(start, words, device_id=address.unit_id),
            priority=priority,
            description=f"write {len(words)} registers at {start} of unit {address.unit_id}",
        )


def _check_span(start: int, count: int) -> None:
    if start < 0 or start + count > 0x10000:
        raise ValueError(f"registers {start}..{start + count - 1} are outside 0..65535")
