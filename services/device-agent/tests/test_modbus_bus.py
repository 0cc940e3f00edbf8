"""ModbusBus against real servers on loopback: errors, backoff, isolation and write priority."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from pymodbus.constants import ExcCodes

from device_agent.modbus import (
    DeviceAddress,
    DeviceUnavailable,
    ModbusBus,
    Priority,
    PriorityLock,
    RequestRejected,
    ResponseTimeout,
)
from gridloop_common.testing import FakeClock, run_on_fake_time
from gridloop_simulators.battery import BatterySimulator


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def simulator() -> AsyncIterator[BatterySimulator]:
    async with BatterySimulator(port=0, realtime=False) as running:
        yield running


@pytest.fixture
async def silent_endpoint() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers: a hung device."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


class SlowBattery(BatterySimulator):
    """Answers every read 50 ms late, like a device on a slow RS-485 gateway."""

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is None:
            await asyncio.sleep(0.05)
        return await super()._on_access(function_code, start_address, address, count, current_registers, set_values)


async def test_priority_lock_serves_control_before_waiting_polls() -> None:
    lock = PriorityLock()
    order: list[str] = []

    async def user(name: str, priority: Priority) -> None:
        async with lock.hold(priority):
            order.append(name)
            await asyncio.sleep(0)

    await lock.acquire(Priority.POLL)
    tasks = [asyncio.create_task(user(f"poll{index}", Priority.POLL)) for index in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(user("control", Priority.CONTROL)))
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["control", "poll0", "poll1", "poll2"]
    assert not lock.locked()


async def test_priority_lock_passes_on_when_a_granted_waiter_is_cancelled() -> None:
    lock = PriorityLock()
    await lock.acquire(Priority.POLL)
    first = asyncio.create_task(lock.acquire(Priority.CONTROL))
    second = asyncio.create_task(lock.acquire(Priority.POLL))
    await asyncio.sleep(0)
    lock.release()  # hands the lock to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    lock.release()
    assert not lock.locked()


async def test_reads_and_writes_reach_the_device(simulator: BatterySimulator) -> None:
    address = DeviceAddress("127.0.0.1", simulator.port, 1)
    async with ModbusBus(timeout_s=1) as bus:
        assert await bus.read_holding_registers(address, 40000, 2) == [0x5375, 0x6E53]
        target = simulator.image.address_of(124, "InOutWRte_RvrtTms")
        await bus.write_registers(address, target, [120])
        assert await bus.read_holding_registers(address, target, 1, priority=Priority.CONTROL) == [120]
        assert bus.is_connected(address)


async def test_modbus_exceptions_become_request_rejected(simulator: BatterySimulator) -> None:
    address = DeviceAddress("127.0.0.1", simulator.port, 1)
    async with ModbusBus(timeout_s=1) as bus:
        with pytest.raises(RequestRejected) as rejected:
            await bus.read_holding_registers(address, 0, 2)
        assert rejected.value.exception_code == 2
        with pytest.raises(RequestRejected) as refused:
            await bus.write_registers(address, simulator.image.address_of(124, "InWRte"), [15000])
        assert refused.value.exception_code == 3
        # The connection survives a rejected request.
        assert await bus.read_holding_registers(address, 40000, 2) == [0x5375, 0x6E53]


def test_dead_device_fails_fast_and_then_backs_off() -> None:
    # On an event loop whose time stands still until the test moves it, a request that fails has failed
    # without waiting for any timeout (the connect timeout would never run out); the bus's backoff reads
    # the same clock, so it is shown exactly.
    address = DeviceAddress("127.0.0.1", _closed_port(), 1)

    async def scenario(clock: FakeClock) -> None:
        async with ModbusBus(timeout_s=2, backoff_initial_s=30, clock=clock) as bus:
            with pytest.raises(DeviceUnavailable, match="connect"):
                await bus.read_holding_registers(address, 40000, 2)
            clock.advance(29.9)
            with pytest.raises(DeviceUnavailable, match=r"next attempt in 0\.1 s"):
                await bus.write_registers(address, 40000, [1])  # refused without a connection attempt
            clock.advance(0.1)
            with pytest.raises(DeviceUnavailable, match="connect"):
                await bus.read_holding_registers(address, 40000, 2)  # tried again once the backoff is over
            with pytest.raises(DeviceUnavailable, match=r"next attempt in 60\.0 s"):
                await bus.read_holding_registers(address, 40000, 2)  # and the backoff doubled

    run_on_fake_time(scenario)


async def test_hung_device_times_out_without_delaying_another(
    silent_endpoint: int, simulator: BatterySimulator
) -> None:
    hung = DeviceAddress("127.0.0.1", silent_endpoint, 1)
    healthy = DeviceAddress("127.0.0.1", simulator.port, 1)
    async with ModbusBus(timeout_s=1.0) as bus:
        hung_read = asyncio.create_task(bus.read_holding_registers(hung, 40000, 2))
        await asyncio.sleep(0.05)  # the hung read is now waiting for its reply
        assert await bus.read_holding_registers(healthy, 40000, 2) == [0x5375, 0x6E53]
        assert not hung_read.done()  # served while the hung read still waits: not queued behind it
        with pytest.raises(ResponseTimeout):
            await hung_read
        assert not bus.is_connected(hung)


async def test_a_write_goes_ahead_of_queued_polls() -> None:
    async with SlowBattery(port=0, realtime=False) as slow:
        address = DeviceAddress("127.0.0.1", slow.port, 1)
        finished: list[str] = []
        async with ModbusBus(timeout_s=2) as bus:
            await bus.read_holding_registers(address, 40000, 2)  # connect first

            async def poll(index: int) -> None:
                await bus.read_holding_registers(address, 40000, 2)
                finished.append(f"poll{index}")

            async def control() -> None:
                await bus.write_registers(address, slow.image.address_of(124, "InOutWRte_RvrtTms"), [60])
                finished.append("write")

            polls = [asyncio.create_task(poll(index)) for index in range(5)]
            await asyncio.sleep(0.01)  # poll0 is in flight, poll1..4 wait for the line
            await asyncio.gather(control(), *polls)
        assert finished[:2] == ["poll0", "write"]


async def test_reconnects_after_the_device_comes_back() -> None:
    port = _closed_port()
    address = DeviceAddress("127.0.0.1", port, 1)
    async with ModbusBus(timeout_s=1, backoff_initial_s=0.05) as bus:
        with pytest.raises(DeviceUnavailable):
            await bus.read_holding_registers(address, 40000, 2)
        async with BatterySimulator(port=port, realtime=False):
            await asyncio.sleep(0.06)  # let the backoff pass
            assert await bus.read_holding_registers(address, 40000, 2) == [0x5375, 0x6E53]
        # The device went away with the connection open: the next request reports it.
        with pytest.raises(DeviceUnavailable):
            await bus.read_holding_registers(address, 40000, 2)


def test_arguments_are_checked() -> None:
    bus = ModbusBus()
    address = DeviceAddress("127.0.0.1")
    with pytest.raises(ValueError, match="count"):
        asyncio.run(bus.read_holding_registers(address, 0, 126))
    with pytest.raises(ValueError, match="16-bit"):
        asyncio.run(bus.write_registers(address, 0, [70000]))
