"""TelemetryPoller: one read of every registered battery and meter per interval, published in batches.

It reads through each device's DeviceCoordinator (the fleet's, shared with the control loops), so a
device is discovered once and an outage either side sees is the device's, not the poller's alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from prometheus_client import Counter, Histogram
from pydantic import TypeAdapter, ValidationError

from device_agent.coordinator import BatteryDevice, MeterDevice, is_battery, is_meter
from device_agent.drivers.sunspec_battery import BatterySnapshot
from device_agent.drivers.sunspec_meter import MeterSnapshot
from device_agent.modbus.bus import Priority
from device_agent.modbus.errors import DeviceError, InvalidResponse
from device_agent.profiles.base import ModelBlock
from device_agent.profiles.sunspec import METER_WYE, STORAGE_CONTROL_CHARGE, STORAGE_CONTROL_DISCHARGE
from device_agent.repository import RegisteredDevice
from gridloop_common.clock import Clock, SystemClock
from gridloop_common.contracts import BessReading, CommandSource, MeterReading, routing
from gridloop_common.messaging import Publisher, PublishError

__all__ = [
    "CycleReport",
    "TelemetryPoller",
    "batch_message_id",
    "bess_reading",
    "meter_reading",
]

logger = logging.getLogger(__name__)

# Fixed namespace: the same batch (kind, cycle time, devices) always gets the same message id.
_BATCH_NAMESPACE: Final = uuid.UUID("5b1f4c1e-3f8a-4d53-9a57-6f0e4f0c2a11")
_BESS_LIST: Final = TypeAdapter(list[BessReading])
_METER_LIST: Final = TypeAdapter(list[MeterReading])

POLL_SECONDS = Histogram(
    "gridloop_telemetry_poll_seconds",
    "Time from the start of a telemetry cycle until its last reading was published.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEVICE_READS = Counter(
    "gridloop_telemetry_device_reads_total", "Telemetry reads of one device, by outcome (ok, failed).", ["outcome"]
)
READINGS_PUBLISHED = Counter(
    "gridloop_telemetry_readings_published_total", "Readings the broker confirmed, by kind.", ["kind"]
)
READINGS_DROPPED = Counter(
    "gridloop_telemetry_readings_dropped_total", "Readings lost because the broker did not confirm them.", ["kind"]
)

Reading = BessReading | MeterReading


def batch_message_id(kind: str, cycle_time: datetime, device_ids: Iterable[uuid.UUID]) -> str:
    """A message id fixed by (kind, cycle time, device set), so a re-published batch can be deduplicated."""
    devices = ",".join(sorted(str(device_id) for device_id in device_ids))
    return str(uuid.uuid5(_BATCH_NAMESPACE, f"{kind}|{cycle_time.isoformat()}|{devices}"))


def _kilo(value: float | None, sign: int = 1) -> float | None:
    return None if value is None else sign * value / 1000.0


def _commanded_power_w(snapshot: BatterySnapshot) -> float | None:
    """The power model 124 asks for (positive = charging), or None while external control is released.

    InWRte and OutWRte are percentages of WChaMax; with both bits set the device runs the net of the two.
    """
    if not snapshot.externally_controlled or snapshot.max_charge_w is None:
        return None
    power_w = 0.0
    if snapshot.control_mode & STORAGE_CONTROL_CHARGE:
        power_w += max(0.0, snapshot.charge_rate_pct or 0.0) / 100.0 * snapshot.max_charge_w
    if snapshot.control_mode & STORAGE_CONTROL_DISCHARGE:
        power_w -= max(0.0, snapshot.discharge_rate_pct or 0.0) / 100.0 * snapshot.max_charge_w
    return power_w


def bess_reading(device: RegisteredDevice, snapshot: BatterySnapshot, cycle_time: datetime) -> BessReading:
    """Map a battery snapshot onto a flux BESS row.

    target_power is the commanded power while the agent controls the battery (what Flux's controller read
    from the PowerPack's target register) and the measured AC power once control is released, when
    the battery's own logic sets its power. command_source: SunSpec has no such register, so it says
    whether an external dispatch holds the battery (AXLE_DISPATCH, Flux's documented "dispatched by an
    aggregator") or the battery follows its own default (MANUAL). SunSpec has no inverter-block count.

    Raises InvalidResponse when the battery does not report its state of charge.
    """
    if snapshot.soc_pct is None:
        raise InvalidResponse(f"{device.name}: state of charge not reported")
    commanded_w = _commanded_power_w(snapshot)
    power_w = commanded_w if commanded_w is not None else snapshot.power_w
    if power_w is None:
        raise InvalidResponse(f"{device.name}: neither a commanded nor a measured power is reported")
    return BessReading(
        time=cycle_time,
        device_id=device.device_id,
        soe=min(100.0, max(0.0, snapshot.soc_pct)),
        target_power=power_w / 1000.0,
        command_source=CommandSource.AXLE_DISPATCH if snapshot.externally_controlled else CommandSource.MANUAL,
    )


def _sum(*values: float | None) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def _power_factor(value: float | None) -> float | None:
    # Model 203 documents PF in percent, but many meters (and the simulator) hold -1..1: accept both.
    if value is None:
        return None
    return value / 100.0 if abs(value) > 1.0 else value


def meter_reading(device: RegisteredDevice, block: ModelBlock, cycle_time: datetime) -> MeterReading:
    """Map a model 203 (wye meter) read onto a flux meter row: W to kW, Wh to kWh, positive = import.

    ac_power_sign (registry metadata) flips meters that report export as positive power.
    """
    sign = device.ac_power_sign
    phase_currents = [block.value(name) for name in ("AphA", "AphB", "AphC")]
    present_currents = [current for current in phase_currents if current is not None]
    return MeterReading(
        time=cycle_time,
        device_id=device.device_id,
        frequency=block.value("Hz"),
        voltage_line_average=block.value("PPV"),
        current_phase_a=phase_currents[0],
        current_phase_b=phase_currents[1],
        current_phase_c=phase_currents[2],
        current_phase_average=sum(present_currents) / len(present_currents) if present_currents else None,
        power_phase_a_active=_kilo(block.value("WphA"), sign),
        power_phase_b_active=_kilo(block.value("WphB"), sign),
        power_phase_c_active=_kilo(block.value("WphC"), sign),
        power_total_active=_kilo(block.value("W"), sign),
        power_total_reactive=_kilo(block.value("VAR"), sign),
        power_total_apparent=_kilo(block.value("VA")),
        power_factor_total=_power_factor(block.value("PF")),
        energy_imported_active=_kilo(block.value("TotWhImp")),
        energy_exported_active=_kilo(block.value("TotWhExp")),
        energy_imported_phase_a_active=_kilo(block.value("TotWhImpPhA")),
        energy_exported_phase_a_active=_kilo(block.value("TotWhExpPhA")),
        energy_imported_phase_b_active=_kilo(block.value("TotWhImpPhB")),
        energy_exported_phase_b_active=_kilo(block.value("TotWhExpPhB")),
        energy_imported_phase_c_active=_kilo(block.value("TotWhImpPhC")),
        energy_exported_phase_c_active=_kilo(block.value("TotWhExpPhC")),
        # Imported reactive energy is quadrants 1 and 2, exported quadrants 3 and 4.
        energy_imported_reactive=_kilo(_sum(block.value("TotVArhImpQ1"), block.value("TotVArhImpQ2"))),
        energy_exported_reactive=_kilo(_sum(block.value("TotVArhExpQ3"), block.value("TotVArhExpQ4"))),
        energy_imported_apparent=_kilo(block.value("TotVAhImp")),
        energy_exported_apparent=_kilo(block.value("TotVAhExp")),
    )


async def _read_meter(meter: MeterDevice, cycle_time: datetime) -> MeterReading:
    snapshot: MeterSnapshot = await meter.refresh(priority=Priority.POLL)
    snapshot.sunspec.require(METER_WYE.model_id)  # telemetry maps model 203 only
    return meter_reading(meter.device, snapshot.block, cycle_time)


async def _read_battery(battery: BatteryDevice, cycle_time: datetime) -> BessReading:
    # At poll priority, so control writes on the same line go first.
    snapshot: BatterySnapshot = await battery.refresh(priority=Priority.POLL)
    return bess_reading(battery.device, snapshot, cycle_time)


@dataclass
class _PolledDevice:
    coordinator: BatteryDevice | MeterDevice
    # Whether the last telemetry read gave a reading (None until the first, so the first failure is logged too);
    # a telemetry notion, wider than the device's availability: an implausible reading counts as a failure here.
    available: bool | None = None

    @property
    def device(self) -> RegisteredDevice:
        return self.coordinator.device

    async def read(self, cycle_time: datetime) -> Reading:
        if is_battery(self.coordinator):
            return await _read_battery(self.coordinator, cycle_time)
        if is_meter(self.coordinator):
            return await _read_meter(self.coordinator, cycle_time)
        raise TypeError(f"{self.device.name}: no telemetry mapping for {type(self.coordinator.driver).__name__}")


@dataclass
class CycleReport:
    """What one cycle did: readings published per kind, devices that failed, and its duration."""

    cycle_time: datetime
    published: dict[str, int] = field(default_factory=lambda: {"bess": 0, "meter": 0})
    failed: list[str] = field(default_factory=list)
    duration_s: float = 0.0


class TelemetryPoller:
    """Reads every registered battery and meter once per interval and publishes the readings.

    Each cycle starts all device reads at once, each under its own deadline (``device_timeout_s``),
    so a dead or slow device costs only its own reading. Readings are published in batches of at
    most ``batch_size`` as they come in: whatever is ready after ``flush_after_s`` goes out at once,
    so the healthy devices' readings never wait for a dead device's deadline. Reading times are the
    cycle's scheduled instant on the interval grid, identical for every device in the cycle, so a
    reading polled twice (a restarted agent) has the same ``(device_id, time)`` key and is stored once.
    """

    def __init__(
        self,
        *,
        publisher: Publisher,
        devices: Callable[[], Sequence[BatteryDevice | MeterDevice]],
        interval_s: float,
        device_timeout_s: float | None = None,
        batch_size: int = 200,
        flush_after_s: float = 0.25,
        clock: Clock | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._publisher = publisher
        self._devices = devices
        self._interval_s = interval_s
        # Leave a fifth of the interval for publishing, so a cycle ends before the next one is due.
        self._device_timeout_s = device_timeout_s if device_timeout_s is not None else 0.8 * interval_s
        self._batch_size = batch_size
        self._flush_after_s = flush_after_s
        self._polled: dict[uuid.UUID, _PolledDevice] = {}
        self._clock: Clock = clock or SystemClock()

    @property
    def unavailable(self) -> list[str]:
        """Names of the devices whose last read failed."""
        return sorted(state.device.name for state in self._polled.values() if state.available is False)

    async def run_forever(self, *, ready: asyncio.Event | None = None) -> None:
        """Poll on the interval grid until cancelled; ``ready`` (the first registry load) is awaited first."""
        if ready is not None:
            await ready.wait()
        while True:
            now = self._clock.now().timestamp()
            # Ticks sit on the wall-clock grid, so every agent stamps a cycle with the same instants;
            # a cycle that overran skips the ticks it missed instead of bunching up.
            tick = (math.floor(now / self._interval_s) + 1) * self._interval_s
            await self._clock.sleep(tick - now)
            cycle_time = datetime.fromtimestamp(round(tick, 3), tz=UTC)
            try:
                await self.poll_once(cycle_time)
            except Exception:
                # One broken cycle (a bug, a registry oddity) must not stop telemetry for good.
                logger.exception("telemetry cycle failed", extra={"cycle_time": cycle_time.isoformat()})

    async def poll_once(self, cycle_time: datetime) -> CycleReport:
        """Read every device once, publishing readings as they arrive; returns when all are in or timed out."""
        started = time.perf_counter()
        report = CycleReport(cycle_time=cycle_time)
        states = self._reconcile()
        tasks = {
            asyncio.create_task(self._read(state, cycle_time), name=f"poll:{state.device.name}"): state
            for state in states
        }
        pending: set[asyncio.Task[Reading | None]] = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=self._flush_after_s)
                readings: list[Reading] = []
                for task in done:
                    reading = task.result()
                    if reading is None:
                        report.failed.append(tasks[task].device.name)
                    else:
                        readings.append(reading)
                await self._publish(cycle_time, readings, report)
        finally:
            for task in pending:
                task.cancel()
        report.duration_s = time.perf_counter() - started
        POLL_SECONDS.observe(report.duration_s)
        return report

    def _reconcile(self) -> list[_PolledDevice]:
        """Follow the fleet: keep state of unchanged devices, start afresh for changed ones, drop removed ones."""
        current: dict[uuid.UUID, _PolledDevice] = {}
        for coordinator in self._devices():
            known = self._polled.get(coordinator.device.device_id)
            if known is not None and known.coordinator is coordinator:
                current[coordinator.device.device_id] = known
                continue
            current[coordinator.device.device_id] = _PolledDevice(coordinator=coordinator)
        self._polled = current
        return list(current.values())

    async def _read(self, state: _PolledDevice, cycle_time: datetime) -> Reading | None:
        try:
            async with asyncio.timeout(self._device_timeout_s):
                reading = await state.read(cycle_time)
        except TimeoutError:
            self._mark(state, False, f"no complete reading within {self._device_timeout_s:g} s")
            return None
        except DeviceError as error:
            self._mark(state, False, f"{type(error).__name__}: {error}")
            return None
        except ValidationError as error:
            self._mark(state, False, f"implausible reading: {error.errors()[0]['msg']}")
            return None
        except Exception as error:
            # A fault in one device's mapping must cost only that device's reading.
            logger.exception("device telemetry read crashed", extra={"device": state.device.name})
            self._mark(state, False, f"{type(error).__name__}: {error}")
            return None
        self._mark(state, True, None)
        return reading

    def _mark(self, state: _PolledDevice, available: bool, reason: str | None) -> None:
        DEVICE_READS.labels("ok" if available else "failed").inc()
        if state.available is available:
            return
        # Log once when a device stops answering and once when it is back, not on every cycle.
        if available:
            if state.available is False:
                logger.info("device telemetry recovered", extra={"device": state.device.name})
        else:
            logger.warning("device telemetry unavailable", extra={"device": state.device.name, "reason": reason})
        state.available = available

    async def _publish(self, cycle_time: datetime, readings: list[Reading], report: CycleReport) -> None:
        bess = [reading for reading in readings if isinstance(reading, BessReading)]
        meters = [reading for reading in readings if isinstance(reading, MeterReading)]
        await self._publish_kind("bess", routing.RoutingKeys.TELEMETRY_BESS, cycle_time, bess, report)
        await self._publish_kind("meter", routing.RoutingKeys.TELEMETRY_METER, cycle_time, meters, report)

    async def _publish_kind(
        self,
        kind: str,
        routing_key: str,
        cycle_time: datetime,
        readings: Sequence[Reading],
        report: CycleReport,
    ) -> None:
        for start in range(0, len(readings), self._batch_size):
            batch = readings[start : start + self._batch_size]
            body = (
                _BESS_LIST.dump_json([r for r in batch if isinstance(r, BessReading)], exclude_none=True)
                if kind == "bess"
                else _METER_LIST.dump_json([r for r in batch if isinstance(r, MeterReading)], exclude_none=True)
            )
            try:
                await self._publisher.publish(
                    exchange=routing.TELEMETRY_EXCHANGE,
                    routing_key=routing_key,
                    body=body,
                    message_id=batch_message_id(kind, cycle_time, (reading.device_id for reading in batch)),
                    headers={"x-gridloop-reading-kind": kind, "x-gridloop-cycle-time": cycle_time.isoformat()},
                )
            except PublishError as error:
                # Telemetry is a stream: the next cycle brings fresher values, so drop rather than stall.
                READINGS_DROPPED.labels(kind).inc(len(batch))
                logger.warning(
                    "telemetry batch not published",
                    extra={"kind": kind, "readings": len(batch), "error": str(error)},
                )
                continue
            READINGS_PUBLISHED.labels(kind).inc(len(batch))
            report.published[kind] += len(batch)
