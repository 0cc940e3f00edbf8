"""SunSpec for the simulators: model layouts as data, a register image, and a Modbus TCP device base."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = [
    "BATTERY",
    "COMMON",
    "DER_AC_MEASUREMENT",
    "END_MODEL_ID",
    "METER_WYE",
    "STORAGE",
    "SUNS_MARKER",
    "ModelLayout",
    "Point",
    "PointType",
    "SimulatedSunSpecDevice",
    "SunSpecImage",
    "scale_factor_for",
]

logger = logging.getLogger(__name__)

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID = 0xFFFF


class PointType(enum.StrEnum):
    """SunSpec point types used by the simulated models."""

    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    ACC32 = "acc32"
    SUNSSF = "sunssf"
    ENUM16 = "enum16"
    BITFIELD16 = "bitfield16"
    BITFIELD32 = "bitfield32"
    PAD = "pad"
    STRING = "string"


_SIZES = {
    PointType.UINT16: 1,
    PointType.INT16: 1,
    PointType.SUNSSF: 1,
    PointType.ENUM16: 1,
    PointType.BITFIELD16: 1,
    PointType.PAD: 1,
    PointType.UINT32: 2,
    PointType.ACC32: 2,
    PointType.BITFIELD32: 2,
    PointType.UINT64: 4,
}
_SIGNED = frozenset({PointType.INT16, PointType.SUNSSF, PointType.PAD})
# What a device reports for a point it does not implement (accumulators and strings: zeros).
_NOT_IMPLEMENTED = {
    PointType.UINT16: 0xFFFF,
    PointType.ENUM16: 0xFFFF,
    PointType.BITFIELD16: 0xFFFF,
    PointType.INT16: 0x8000,
    PointType.SUNSSF: 0x8000,
    PointType.PAD: 0x8000,
    PointType.UINT32: 0xFFFFFFFF,
    PointType.BITFIELD32: 0xFFFFFFFF,
    PointType.UINT64: 0xFFFFFFFFFFFFFFFF,
}


@dataclass(frozen=True)
class Point:
    """A point of a model; offset counts from the model's ID register."""

    name: str
    offset: int
    type: PointType
    size: int
    scale_factor: str | None = None
    writable: bool = False


@dataclass(frozen=True)
class ModelLayout:
    """A SunSpec model: id, length L (registers after ID and L) and its points."""

    model_id: int
    length: int
    points: tuple[Point, ...]
    _by_name: dict[str, Point] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {item.name: item for item in self.points})

    def point(self, name: str) -> Point:
        """The point called `name`."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"model {self.model_id} has no point {name!r}") from None

    def point_at(self, offset: int) -> Point | None:
        """The point covering register `offset` of the model, if any."""
        for item in self.points:
            if item.offset <= offset < item.offset + item.size:
                return item
        return None


def _layout(model_id: int, length: int, points: Iterable[tuple[str, PointType, str | None, bool, int]]) -> ModelLayout:
    """Lay (name, type, scale factor, writable, size) entries out back to back after ID and L."""
    laid = [Point("ID", 0, PointType.UINT16, 1), Point("L", 1, PointType.UINT16, 1)]
    offset = 2
    for name, point_type, scale_factor, writable, size in points:
        laid.append(Point(name, offset, point_type, size, scale_factor, writable))
        offset += size
    if offset != length + 2:
        raise ValueError(f"model {model_id}: points span {offset - 2} registers, L is {length}")
    return ModelLayout(model_id, length, tuple(laid))


def _p(
    name: str, point_type: PointType, scale_factor: str | None = None, *, rw: bool = False, size: int | None = None
) -> tuple[str, PointType, str | None, bool, int]:
    return (name, point_type, scale_factor, rw, size if size is not None else _SIZES[point_type])


U16, I16, U32, U64, ACC32 = PointType.UINT16, PointType.INT16, PointType.UINT32, PointType.UINT64, PointType.ACC32
SF, E16, B16, B32 = PointType.SUNSSF, PointType.ENUM16, PointType.BITFIELD16, PointType.BITFIELD32
STR, PAD = PointType.STRING, PointType.PAD

# Layouts follow github.com/sunspec/models json/model_<id>.json.
COMMON = _layout(
    1,
    66,
    [
        _p("Mn", STR, size=16),
        _p("Md", STR, size=16),
        _p("Opt", STR, size=8),
        _p("Vr", STR, size=8),
        _p("SN", STR, size=16),
        _p("DA", U16, rw=True),
        _p("Pad", PAD),
    ],
)

STORAGE = _layout(
    124,
    24,
    [
        _p("WChaMax", U16, "WChaMax_SF", rw=True),
        _p("WChaGra", U16, "WChaDisChaGra_SF", rw=True),
        _p("WDisChaGra", U16, "WChaDisChaGra_SF", rw=True),
        _p("StorCtl_Mod", B16, rw=True),
        _p("VAChaMax", U16, "VAChaMax_SF", rw=True),
        _p("MinRsvPct", U16, "MinRsvPct_SF", rw=True),
        _p("ChaState", U16, "ChaState_SF"),
        _p("StorAval", U16, "StorAval_SF"),
        _p("InBatV", U16, "InBatV_SF"),
        _p("ChaSt", E16),
        _p("OutWRte", I16, "InOutWRte_SF", rw=True),
        _p("InWRte", I16, "InOutWRte_SF", rw=True),
        _p("InOutWRte_WinTms", U16, rw=True),
        _p("InOutWRte_RvrtTms", U16, rw=True),
        _p("InOutWRte_RmpTms", U16, rw=True),
        _p("ChaGriSet", E16, rw=True),
        _p("WChaMax_SF", SF),
        _p("WChaDisChaGra_SF", SF),
        _p("VAChaMax_SF", SF),
        _p("MinRsvPct_SF", SF),
        _p("ChaState_SF", SF),
        _p("StorAval_SF", SF),
        _p("InBatV_SF", SF),
        _p("InOutWRte_SF", SF),
    ],
)

BATTERY = _layout(
    802,
    62,
    [
        _p("AHRtg", U16, "AHRtg_SF"),
        _p("WHRtg", U16, "WHRtg_SF"),
        _p("WChaRteMax", U16, "WChaDisChaMax_SF"),
        _p("WDisChaRteMax", U16, "WChaDisChaMax_SF"),
        _p("DisChaRte", U16, "DisChaRte_SF"),
        _p("SoCMax", U16, "SoC_SF"),
        _p("SoCMin", U16, "SoC_SF"),
        _p("SoCRsvMax", U16, "SoC_SF", rw=True),
        _p("SoCRsvMin", U16, "SoC_SF", rw=True),
        _p("SoC", U16, "SoC_SF"),
        _p("DoD", U16, "DoD_SF"),
        _p("SoH", U16, "SoH_SF"),
        _p("NCyc", U32),
        _p("ChaSt", E16),
        _p("LocRemCtl", E16),
        _p("Hb", U16),
        _p("CtrlHb", U16, rw=True),
        _p("AlmRst", U16, rw=True),
        _p("Typ", E16),
        _p("State", E16),
        _p("StateVnd", E16),
        _p("WarrDt", U32),
        _p("Evt1", B32),
        _p("Evt2", B32),
        _p("EvtVnd1", B32),
        _p("EvtVnd2", B32),
        _p("V", U16, "V_SF"),
        _p("VMax", U16, "V_SF"),
        _p("VMin", U16, "V_SF"),
        _p("CellVMax", U16, "CellV_SF"),
        _p("CellVMaxStr", U16),
        _p("CellVMaxMod", U16),
        _p("CellVMin", U16, "CellV_SF"),
        _p("CellVMinStr", U16),
        _p("CellVMinMod", U16),
        _p("CellVAvg", U16, "CellV_SF"),
        _p("A", I16, "A_SF"),
        _p("AChaMax", U16, "AMax_SF"),
        _p("ADisChaMax", U16, "AMax_SF"),
        _p("W", I16, "W_SF"),
        _p("ReqInvState", E16),
        _p("ReqW", I16, "W_SF"),
        _p("SetOp", E16, rw=True),
        _p("SetInvState", E16, rw=True),
        _p("AHRtg_SF", SF),
        _p("WHRtg_SF", SF),
        _p("WChaDisChaMax_SF", SF),
        _p("DisChaRte_SF", SF),
        _p("SoC_SF", SF),
        _p("DoD_SF", SF),
        _p("SoH_SF", SF),
        _p("V_SF", SF),
        _p("CellV_SF", SF),
        _p("A_SF", SF),
        _p("AMax_SF", SF),
        _p("W_SF", SF),
    ],
)


def _der_phase(phase: str, line_to_line: str) -> list[tuple[str, PointType, str | None, bool, int]]:
    return [
        _p(f"W{phase}", I16, "W_SF"),
        _p(f"VA{phase}", I16, "VA_SF"),
        _p(f"Var{phase}", I16, "Var_SF"),
        _p(f"PF{phase}", U16, "PF_SF"),
        _p(f"A{phase}", I16, "A_SF"),
        _p(f"V{line_to_line}", I16, "V_SF"),
        _p(f"V{phase}", I16, "V_SF"),
        _p(f"TotWhInj{phase}", U64, "TotWh_SF"),
        _p(f"TotWhAbs{phase}", U64, "TotWh_SF"),
        _p(f"TotVarhInj{phase}", U64, "TotVarh_SF"),
        _p(f"TotVarhAbs{phase}", U64, "TotVarh_SF"),
    ]


DER_AC_MEASUREMENT = _layout(
    701,
    153,
    [
        _p("ACType", E16),
        _p("St", E16),
        _p("InvSt", E16),
        _p("ConnSt", E16),
        _p("Alrm", B32),
        _p("DERMode", B32),
        _p("W", I16, "W_SF"),
        _p("VA", I16, "VA_SF"),
        _p("Var", I16, "Var_SF"),
        _p("PF", U16, "PF_SF"),
        _p("A", I16, "A_SF"),
        _p("LLV", I16, "V_SF"),
        _p("LNV", I16, "V_SF"),
        _p("Hz", U32, "Hz_SF"),
        _p("TotWhInj", U64, "TotWh_SF"),
        _p("TotWhAbs", U64, "TotWh_SF"),
        _p("TotVarhInj", U64, "TotVarh_SF"),
        _p("TotVarhAbs", U64, "TotVarh_SF"),
        _p("TmpAmb", I16, "Tmp_SF"),
        _p("TmpCab", I16, "Tmp_SF"),
        _p("TmpSnk", I16, "Tmp_SF"),
        _p("TmpTrns", I16, "Tmp_SF"),
        _p("TmpSw", I16, "Tmp_SF"),
        _p("TmpOt", I16, "Tmp_SF"),
        *_der_phase("L1", "L1L2"),
        *_der_phase("L2", "L2L3"),
        *_der_phase("L3", "L3L1"),
        _p("ThrotPct", U16),
        _p("ThrotSrc", B32),
        _p("A_SF", SF),
        _p("V_SF", SF),
        _p("Hz_SF", SF),
        _p("W_SF", SF),
        _p("PF_SF", SF),
        _p("VA_SF", SF),
        _p("Var_SF", SF),
        _p("TotWh_SF", SF),
        _p("TotVarh_SF", SF),
        _p("Tmp_SF", SF),
        _p("MnAlrmInfo", STR, size=32),
    ],
)


def _meter(
    name: str, point_type: PointType, scale_factor: str, phases: Sequence[str]
) -> list[tuple[str, PointType, str | None, bool, int]]:
    return [_p(f"{name}{phase}", point_type, scale_factor) for phase in ("", *phases)]


_PHASES = ("phA", "phB", "phC")
_ENERGY_PHASES = ("PhA", "PhB", "PhC")

METER_WYE = _layout(
    203,
    105,
    [
        *_meter("A", I16, "A_SF", _PHASES),
        _p("A_SF", SF),
        *_meter("PhV", I16, "V_SF", _PHASES),
        *_meter("PPV", I16, "V_SF", ("phAB", "phBC", "phCA")),
        _p("V_SF", SF),
        _p("Hz", I16, "Hz_SF"),
        _p("Hz_SF", SF),
        *_meter("W", I16, "W_SF", _PHASES),
        _p("W_SF", SF),
        *_meter("VA", I16, "VA_SF", _PHASES),
        _p("VA_SF", SF),
        *_meter("VAR", I16, "VAR_SF", _PHASES),
        _p("VAR_SF", SF),
        *_meter("PF", I16, "PF_SF", _PHASES),
        _p("PF_SF", SF),
        *_meter("TotWhExp", ACC32, "TotWh_SF", _ENERGY_PHASES),
        *_meter("TotWhImp", ACC32, "TotWh_SF", _ENERGY_PHASES),
        _p("TotWh_SF", SF),
        *_meter("TotVAhExp", ACC32, "TotVAh_SF", _ENERGY_PHASES),
        *_meter("TotVAhImp", ACC32, "TotVAh_SF", _ENERGY_PHASES),
        _p("TotVAh_SF", SF),
        *_meter("TotVArhImpQ1", ACC32, "TotVArh_SF", _ENERGY_PHASES),
        *_meter("TotVArhImpQ2", ACC32, "TotVArh_SF", _ENERGY_PHASES),
        *_meter("TotVArhExpQ3", ACC32, "TotVArh_SF", _ENERGY_PHASES),
        *_meter("TotVArhExpQ4", ACC32, "TotVArh_SF", _ENERGY_PHASES),
        _p("TotVArh_SF", SF),
        _p("Evt", B32),
    ],
)


def scale_factor_for(largest: float, point_type: PointType = PointType.INT16, *, resolution: int = 0) -> int:
    """The smallest scale factor >= resolution at which |largest| still fits the point type."""
    limit = 0x7FFF if point_type in _SIGNED else 0xFFFF
    scale = resolution
    while abs(largest) / 10.0**scale > limit:
        scale += 1
    return scale


def _encode(point: Point, value: int | str) -> list[int]:
    if point.type is PointType.STRING:
        if not isinstance(value, str):
            raise TypeError(f"{point.name} takes a str")
        raw = value.encode("utf-8")[: point.size * 2].ljust(point.size * 2, b"\x00")
        return [int.from_bytes(raw[index : index + 2], "big") for index in range(0, len(raw), 2)]
    if isinstance(value, str):
        raise TypeError(f"{point.name} takes an int")
    bits = 16 * point.size
    if point.type in _SIGNED:
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"{point.name}: {value} does not fit {point.type}")
        value %= 1 << bits
    elif point.type in (PointType.ACC32,):
        value %= 1 << bits  # accumulators roll over
    elif not 0 <= value < 1 << bits:
        raise ValueError(f"{point.name}: {value} does not fit {point.type}")
    return [(value >> (16 * (point.size - 1 - index))) & 0xFFFF for index in range(point.size)]


def _decode(point: Point, words: Sequence[int]) -> int | str:
    if point.type is PointType.STRING:
        raw = b"".join(word.to_bytes(2, "big") for word in words)
        return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    value = 0
    for word in words:
        value = (value << 16) | word
    bits = 16 * point.size
    if point.type in _SIGNED and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


class SunSpecImage:
    """The holding registers of a SunSpec device: 'SunS', the models back to back, then the end model.

    Every point starts as "not implemented"; the simulator fills in those it models.
    """

    def __init__(self, base_address: int, layouts: Sequence[ModelLayout]) -> None:
        self.base_address = base_address
        self.layouts = {layout.model_id: layout for layout in layouts}
        self._starts: dict[int, int] = {}
        registers = list(SUNS_MARKER)
        for layout in layouts:
            self._starts[layout.model_id] = base_address + len(registers)
            start = len(registers)
            registers.extend([0] * (layout.length + 2))
            for item in layout.points:
                not_implemented = _NOT_IMPLEMENTED.get(item.type)
                words = [0] * item.size if not_implemented is None else _split(not_implemented, item.size)
                registers[start + item.offset : start + item.offset + item.size] = words
            registers[start] = layout.model_id
            registers[start + 1] = layout.length
        registers.extend([END_MODEL_ID, 0])
        self.registers = registers

    def model_address(self, model_id: int) -> int:
        """Absolute address of the model's ID register."""
        return self._starts[model_id]

    def address_of(self, model_id: int, name: str) -> int:
        """Absolute address of a point."""
        return self._starts[model_id] + self.layouts[model_id].point(name).offset

    def locate(self, address: int) -> tuple[ModelLayout, Point] | None:
        """The model and point covering an absolute register address, if any."""
        for model_id, start in self._starts.items():
            layout = self.layouts[model_id]
            if start <= address < start + layout.length + 2:
                found = layout.point_at(address - start)
                return None if found is None else (layout, found)
        return None

    def set(self, model_id: int, name: str, value: int | str) -> None:
        """Store a raw (unscaled) value."""
        item = self.layouts[model_id].point(name)
        index = self.address_of(model_id, name) - self.base_address
        self.registers[index : index + item.size] = _encode(item, value)

    def get(self, model_id: int, name: str) -> int | str:
        """The raw (unscaled) value of a point."""
        item = self.layouts[model_id].point(name)
        index = self.address_of(model_id, name) - self.base_address
        return _decode(item, self.registers[index : index + item.size])

    def get_int(self, model_id: int, name: str) -> int:
        """The raw value of a numeric point."""
        value = self.get(model_id, name)
        if isinstance(value, str):
            raise TypeError(f"{name} is a string point")
        return value

    def set_scaled(self, model_id: int, name: str, value: float) -> None:
        """Store an engineering value using the point's scale factor as currently stored."""
        item = self.layouts[model_id].point(name)
        scale = 0 if item.scale_factor is None else self.get_int(model_id, item.scale_factor)
        self.set(model_id, name, round(value / 10.0**scale))

    def get_scaled(self, model_id: int, name: str) -> float:
        """The engineering value of a numeric point."""
        item = self.layouts[model_id].point(name)
        scale = 0 if item.scale_factor is None else self.get_int(model_id, item.scale_factor)
        return self.get_int(model_id, name) * 10.0**scale

    def scaled_value_of(self, model_id: int, name: str, words: Sequence[int]) -> float:
        """What a candidate write of `words` to a point would mean, scaled."""
        item = self.layouts[model_id].point(name)
        raw = _decode(item, words)
        if isinstance(raw, str):
            raise TypeError(f"{name} is a string point")
        scale = 0 if item.scale_factor is None else self.get_int(model_id, item.scale_factor)
        return raw * 10.0**scale


def _split(value: int, size: int) -> list[int]:
    return [(value >> (16 * (size - 1 - index))) & 0xFFFF for index in range(size)]


class SimulatedSunSpecDevice:
    """Base of the simulators: serves a SunSpecImage over Modbus TCP and advances time in ticks.

    Subclasses implement `_advance(seconds)` (physics), `_refresh()` (derived registers before a read)
    and `_validate_write(...)` (a Modbus exception code to refuse a write, or None).
    """

    def __init__(
        self,
        *,
        image: SunSpecImage,
        host: str,
        port: int,
        unit_id: int,
        tick_s: float,
        realtime: bool,
    ) -> None:
        if tick_s <= 0 or not math.isfinite(tick_s):
            raise ValueError("tick_s must be a positive number of seconds")
        self.image = image
        self.host = host
        self.unit_id = unit_id
        self.tick_s = tick_s
        self.realtime = realtime
        self._requested_port = port
        self._bound_port: int | None = None
        self._server: ModbusTcpServer | None = None
        self._clock_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The TCP port the server is bound to (the chosen one when created with port 0)."""
        if self._bound_port is None:
            raise RuntimeError("the simulator is not running")
        return self._bound_port

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start serving Modbus TCP and, when realtime, the clock that ticks every tick_s."""
        device = SimDevice(
            id=self.unit_id,
            simdata=[SimData(self.image.base_address, values=list(self.image.registers), datatype=DataType.REGISTERS)],
            action=self._on_access,
        )
        self._server = ModbusTcpServer(device, address=(self.host, self._requested_port))
        await self._server.serve_forever(background=True)
        listener = self._server.transport
        sockets = getattr(listener, "sockets", None)
        if not sockets:
            raise RuntimeError(f"could not listen on {self.host}:{self._requested_port}")
        self._bound_port = int(sockets[0].getsockname()[1])
        if self.realtime:
            self._clock_task = asyncio.create_task(self._run_clock(), name=f"sunspec-clock:{self._bound_port}")

    async def stop(self) -> None:
        """Stop the clock and the server, closing client connections."""
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task
            self._clock_task = None
        if self._server is not None:
            server = self._server
            self._server = None
            # Closing the listener closes the accepted connections too: clients see the device go away.
            await server.shutdown()  # type: ignore[no-untyped-call]
        self._bound_port = None

    def step(self, seconds: float) -> None:
        """Advance simulated time by `seconds`, in ticks of at most tick_s (no sleeping)."""
        if seconds < 0:
            raise ValueError("cannot step backwards")
        remaining = seconds
        while remaining > 1e-9:
            tick = min(self.tick_s, remaining)
            self._advance(tick)
            remaining -= tick
        self._refresh()

    async def _run_clock(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            # Step by the time that really passed, so a busy loop does not slow simulated time.
            self.step(now - last)
            last = now

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # The image is the source of truth; pymodbus's copy is refreshed from it on every access.
        if set_values is not None:
            words = [int(value) for value in set_values]
            refused = self._validate_write(address, words)
            if refused is not None:
                return refused
            offset = address - self.image.base_address
            self.image.registers[offset : offset + len(words)] = words
            self._after_write(address, len(words))
        self._refresh()
        current_registers[: len(self.image.registers)] = self.image.registers
        return None

    def _validate_write(self, address: int, words: list[int]) -> ExcCodes | None:
        for index in range(len(words)):
            found = self.image.locate(address + index)
            if found is None or not found[1].writable:
                return ExcCodes.ILLEGAL_ADDRESS
        return None

    def _after_write(self, address: int, count: int) -> None:
        """Hook: a write was stored."""

    def _advance(self, seconds: float) -> None:
        """Hook: integrate physics over `seconds`."""

    def _refresh(self) -> None:
        """Hook: bring derived registers up to date."""
