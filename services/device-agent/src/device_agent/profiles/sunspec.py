"""SunSpec models 1, 103, 124, 203, 701 and 802 as data, and discovery of a device's model chain."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from device_agent.modbus.bus import MAX_READ_REGISTERS, DeviceAddress, ModbusBus, Priority
from device_agent.modbus.errors import (
    DeviceUnavailable,
    DiscoveryError,
    InvalidResponse,
    ResponseTimeout,
)
from device_agent.modbus.registers import PointType, decode
from device_agent.profiles.base import (
    MODEL_HEADER_REGISTERS,
    ModelBlock,
    ModelDefinition,
    PointSpec,
    define_model,
    point,
)

__all__ = [
    "BASE_ADDRESSES",
    "BATTERY",
    "CHARGE_FROM_GRID",
    "CHARGE_FROM_PV",
    "CHARGE_STATUS",
    "COMMON",
    "DER_AC_MEASUREMENT",
    "END_MODEL_ID",
    "INVERTER_THREE_PHASE",
    "METER_WYE",
    "MODELS",
    "STORAGE",
    "STORAGE_CONTROL_CHARGE",
    "STORAGE_CONTROL_DISCHARGE",
    "SUNS_MARKER",
    "ModelLocation",
    "SunSpecMap",
    "discover",
    "read_model",
]

logger = logging.getLogger(__name__)

U16, I16, U32, U64 = PointType.UINT16, PointType.INT16, PointType.UINT32, PointType.UINT64
ACC32, SF, E16 = PointType.ACC32, PointType.SUNSSF, PointType.ENUM16
B16, B32, STR, PAD = PointType.BITFIELD16, PointType.BITFIELD32, PointType.STRING, PointType.PAD

# Offsets and types follow the SunSpec model JSON (github.com/sunspec/models, json/model_<id>.json);
# offsets count from the model's ID register, as pysunspec2 does.
SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)  # the order the SunSpec spec lists them; 40000 is by far the most common
END_MODEL_ID = 0xFFFF
_MAX_MODELS = 64  # a longer chain means we are walking garbage, not models

# Model 124 StorCtl_Mod bits and ChaGriSet values.
STORAGE_CONTROL_CHARGE = 1 << 0
STORAGE_CONTROL_DISCHARGE = 1 << 1
CHARGE_FROM_PV = 0
CHARGE_FROM_GRID = 1
CHARGE_STATUS = {1: "OFF", 2: "EMPTY", 3: "DISCHARGING", 4: "CHARGING", 5: "FULL", 6: "HOLDING", 7: "TESTING"}

COMMON = define_model(
    1,
    "common",
    66,
    [
        point("Mn", STR, size=16),
        point("Md", STR, size=16),
        point("Opt", STR, size=8),
        point("Vr", STR, size=8),
        point("SN", STR, size=16),
        point("DA", U16, writable=True),
        point("Pad", PAD),
    ],
)

STORAGE = define_model(
    124,
    "storage",
    24,
    [
        point("WChaMax", U16, "WChaMax_SF", units="W", writable=True),
        point("WChaGra", U16, "WChaDisChaGra_SF", units="% WChaMax/sec", writable=True),
        point("WDisChaGra", U16, "WChaDisChaGra_SF", units="% WChaMax/sec", writable=True),
        point("StorCtl_Mod", B16, writable=True),
        point("VAChaMax", U16, "VAChaMax_SF", units="VA", writable=True),
        point("MinRsvPct", U16, "MinRsvPct_SF", units="% WChaMax", writable=True),
        point("ChaState", U16, "ChaState_SF", units="% AhrRtg"),
        point("StorAval", U16, "StorAval_SF", units="AH"),
        point("InBatV", U16, "InBatV_SF", units="V"),
        point("ChaSt", E16),
        point("OutWRte", I16, "InOutWRte_SF", units="% WDisChaMax", writable=True),
        point("InWRte", I16, "InOutWRte_SF", units="% WChaMax", writable=True),
        point("InOutWRte_WinTms", U16, units="Secs", writable=True),
        point("InOutWRte_RvrtTms", U16, units="Secs", writable=True),
        point("InOutWRte_RmpTms", U16, units="Secs", writable=True),
        point("ChaGriSet", E16, writable=True),
        point("WChaMax_SF", SF),
        point("WChaDisChaGra_SF", SF),
        point("VAChaMax_SF", SF),
        point("MinRsvPct_SF", SF),
        point("ChaState_SF", SF),
        point("StorAval_SF", SF),
        point("InBatV_SF", SF),
        point("InOutWRte_SF", SF),
    ],
)

BATTERY = define_model(
    802,
    "battery",
    62,
    [
        point("AHRtg", U16, "AHRtg_SF", units="Ah"),
        point("WHRtg", U16, "WHRtg_SF", units="Wh"),
        point("WChaRteMax", U16, "WChaDisChaMax_SF", units="W"),
        point("WDisChaRteMax", U16, "WChaDisChaMax_SF", units="W"),
        point("DisChaRte", U16, "DisChaRte_SF", units="%WHRtg"),
        point("SoCMax", U16, "SoC_SF", units="%WHRtg"),
        point("SoCMin", U16, "SoC_SF", units="%WHRtg"),
        point("SoCRsvMax", U16, "SoC_SF", units="%WHRtg", writable=True),
        point("SoCRsvMin", U16, "SoC_SF", units="%WHRtg", writable=True),
        point("SoC", U16, "SoC_SF", units="%WHRtg"),
        point("DoD", U16, "DoD_SF", units="%"),
        point("SoH", U16, "SoH_SF", units="%"),
        point("NCyc", U32),
        point("ChaSt", E16),
        point("LocRemCtl", E16),
        point("Hb", U16),
        point("CtrlHb", U16, writable=True),
        point("AlmRst", U16, writable=True),
        point("Typ", E16),
        point("State", E16),
        point("StateVnd", E16),
        point("WarrDt", U32),
        point("Evt1", B32),
        point("Evt2", B32),
        point("EvtVnd1", B32),
        point("EvtVnd2", B32),
        point("V", U16, "V_SF", units="V"),
        point("VMax", U16, "V_SF", units="V"),
        point("VMin", U16, "V_SF", units="V"),
        point("CellVMax", U16, "CellV_SF", units="V"),
        point("CellVMaxStr", U16),
        point("CellVMaxMod", U16),
        point("CellVMin", U16, "CellV_SF", units="V"),
        point("CellVMinStr", U16),
        point("CellVMinMod", U16),
        point("CellVAvg", U16, "CellV_SF", units="V"),
        point("A", I16, "A_SF", units="A"),
        point("AChaMax", U16, "AMax_SF", units="A"),
        point("ADisChaMax", U16, "AMax_SF", units="A"),
        point("W", I16, "W_SF", units="W"),
        point("ReqInvState", E16),
        point("ReqW", I16, "W_SF", units="W"),
        point("SetOp", E16, writable=True),
        point("SetInvState", E16, writable=True),
        point("AHRtg_SF", SF),
        point("WHRtg_SF", SF),
        point("WChaDisChaMax_SF", SF),
        point("DisChaRte_SF", SF),
        point("SoC_SF", SF),
        point("DoD_SF", SF),
        point("SoH_SF", SF),
        point("V_SF", SF),
        point("CellV_SF", SF),
        point("A_SF", SF),
        point("AMax_SF", SF),
        point("W_SF", SF),
    ],
)


def _der_phase(phase: str, line_to_line: str) -> list[PointSpec]:
    return [
        point(f"W{phase}", I16, "W_SF", units="W"),
        point(f"VA{phase}", I16, "VA_SF", units="VA"),
        point(f"Var{phase}", I16, "Var_SF", units="Var"),
        point(f"PF{phase}", U16, "PF_SF"),
        point(f"A{phase}", I16, "A_SF", units="A"),
        point(f"V{line_to_line}", I16, "V_SF", units="V"),
        point(f"V{phase}", I16, "V_SF", units="V"),
        point(f"TotWhInj{phase}", U64, "TotWh_SF", units="Wh"),
        point(f"TotWhAbs{phase}", U64, "TotWh_SF", units="Wh"),
        point(f"TotVarhInj{phase}", U64, "TotVarh_SF", units="Varh"),
        point(f"TotVarhAbs{phase}", U64, "TotVarh_SF", units="Varh"),
    ]


DER_AC_MEASUREMENT = define_model(
    701,
    "DERMeasureAC",
    153,
    [
        point("ACType", E16),
        point("St", E16),
        point("InvSt", E16),
        point("ConnSt", E16),
        point("Alrm", B32),
        point("DERMode", B32),
        point("W", I16, "W_SF", units="W"),
        point("VA", I16, "VA_SF", units="VA"),
        point("Var", I16, "Var_SF", units="Var"),
        point("PF", U16, "PF_SF"),
        point("A", I16, "A_SF", units="A"),
        point("LLV", I16, "V_SF", units="V"),
        point("LNV", I16, "V_SF", units="V"),
        point("Hz", U32, "Hz_SF", units="Hz"),
        point("TotWhInj", U64, "TotWh_SF", units="Wh"),
        point("TotWhAbs", U64, "TotWh_SF", units="Wh"),
        point("TotVarhInj", U64, "TotVarh_SF", units="Varh"),
        point("TotVarhAbs", U64, "TotVarh_SF", units="Varh"),
        point("TmpAmb", I16, "Tmp_SF", units="C"),
        point("TmpCab", I16, "Tmp_SF", units="C"),
        point("TmpSnk", I16, "Tmp_SF", units="C"),
        point("TmpTrns", I16, "Tmp_SF", units="C"),
        point("TmpSw", I16, "Tmp_SF", units="C"),
        point("TmpOt", I16, "Tmp_SF", units="C"),
        *_der_phase("L1", "L1L2"),
        *_der_phase("L2", "L2L3"),
        *_der_phase("L3", "L3L1"),
        point("ThrotPct", U16, units="Pct"),
        point("ThrotSrc", B32),
        point("A_SF", SF),
        point("V_SF", SF),
        point("Hz_SF", SF),
        point("W_SF", SF),
        point("PF_SF", SF),
        point("VA_SF", SF),
        point("Var_SF", SF),
        point("TotWh_SF", SF),
        point("TotVarh_SF", SF),
        point("Tmp_SF", SF),
        point("MnAlrmInfo", STR, size=32),
    ],
)

INVERTER_THREE_PHASE = define_model(
    103,
    "inverter",
    50,
    [
        point("A", U16, "A_SF", units="A"),
        point("AphA", U16, "A_SF", units="A"),
        point("AphB", U16, "A_SF", units="A"),
        point("AphC", U16, "A_SF", units="A"),
        point("A_SF", SF),
        point("PPVphAB", U16, "V_SF", units="V"),
        point("PPVphBC", U16, "V_SF", units="V"),
        point("PPVphCA", U16, "V_SF", units="V"),
        point("PhVphA", U16, "V_SF", units="V"),
        point("PhVphB", U16, "V_SF", units="V"),
        point("PhVphC", U16, "V_SF", units="V"),
        point("V_SF", SF),
        point("W", I16, "W_SF", units="W"),
        point("W_SF", SF),
        point("Hz", U16, "Hz_SF", units="Hz"),
        point("Hz_SF", SF),
        point("VA", I16, "VA_SF", units="VA"),
        point("VA_SF", SF),
        point("VAr", I16, "VAr_SF", units="var"),
        point("VAr_SF", SF),
        point("PF", I16, "PF_SF", units="Pct"),
        point("PF_SF", SF),
        point("WH", ACC32, "WH_SF", units="Wh"),
        point("WH_SF", SF),
        point("DCA", U16, "DCA_SF", units="A"),
        point("DCA_SF", SF),
        point("DCV", U16, "DCV_SF", units="V"),
        point("DCV_SF", SF),
        point("DCW", I16, "DCW_SF", units="W"),
        point("DCW_SF", SF),
        point("TmpCab", I16, "Tmp_SF", units="C"),
        point("TmpSnk", I16, "Tmp_SF", units="C"),
        point("TmpTrns", I16, "Tmp_SF", units="C"),
        point("TmpOt", I16, "Tmp_SF", units="C"),
        point("Tmp_SF", SF),
        point("St", E16),
        point("StVnd", E16),
        point("Evt1", B32),
        point("Evt2", B32),
        point("EvtVnd1", B32),
        point("EvtVnd2", B32),
        point("EvtVnd3", B32),
        point("EvtVnd4", B32),
    ],
)


def _meter_quantity(
    name: str, type_: PointType, scale_factor: str, units: str, phases: tuple[str, ...]
) -> list[PointSpec]:
    return [point(f"{name}{phase}", type_, scale_factor, units=units) for phase in ("", *phases)]


_PHASES = ("phA", "phB", "phC")
_ENERGY_PHASES = ("PhA", "PhB", "PhC")

METER_WYE = define_model(
    203,
    "ac_meter",
    105,
    [
        *_meter_quantity("A", I16, "A_SF", "A", ("phA", "phB", "phC")),
        point("A_SF", SF),
        *_meter_quantity("PhV", I16, "V_SF", "V", _PHASES),
        *_meter_quantity("PPV", I16, "V_SF", "V", ("phAB", "phBC", "phCA")),
        point("V_SF", SF),
        point("Hz", I16, "Hz_SF", units="Hz"),
        point("Hz_SF", SF),
        *_meter_quantity("W", I16, "W_SF", "W", _PHASES),
        point("W_SF", SF),
        *_meter_quantity("VA", I16, "VA_SF", "VA", _PHASES),
        point("VA_SF", SF),
        *_meter_quantity("VAR", I16, "VAR_SF", "var", _PHASES),
        point("VAR_SF", SF),
        *_meter_quantity("PF", I16, "PF_SF", "Pct", _PHASES),
        point("PF_SF", SF),
        *_meter_quantity("TotWhExp", ACC32, "TotWh_SF", "Wh", _ENERGY_PHASES),
        *_meter_quantity("TotWhImp", ACC32, "TotWh_SF", "Wh", _ENERGY_PHASES),
        point("TotWh_SF", SF),
        *_meter_quantity("TotVAhExp", ACC32, "TotVAh_SF", "VAh", _ENERGY_PHASES),
        *_meter_quantity("TotVAhImp", ACC32, "TotVAh_SF", "VAh", _ENERGY_PHASES),
        point("TotVAh_SF", SF),
        *_meter_quantity("TotVArhImpQ1", ACC32, "TotVArh_SF", "varh", _ENERGY_PHASES),
        *_meter_quantity("TotVArhImpQ2", ACC32, "TotVArh_SF", "varh", _ENERGY_PHASES),
        *_meter_quantity("TotVArhExpQ3", ACC32, "TotVArh_SF", "varh", _ENERGY_PHASES),
        *_meter_quantity("TotVArhExpQ4", ACC32, "TotVArh_SF", "varh", _ENERGY_PHASES),
        point("TotVArh_SF", SF),
        point("Evt", B32),
    ],
)

MODELS: Mapping[int, ModelDefinition] = {
    model.model_id: model for model in (COMMON, INVERTER_THREE_PHASE, STORAGE, METER_WYE, DER_AC_MEASUREMENT, BATTERY)
}


@dataclass(frozen=True)
class ModelLocation:
    """Where a model sits on a device: its ID register address and its length L as the device reports it."""

    model_id: int
    address: int
    length: int


@dataclass(frozen=True)
class SunSpecMap:
    """The result of discovery: the marker's base address and every model in chain order."""

    base_address: int
    locations: tuple[ModelLocation, ...]

    @property
    def models(self) -> dict[int, int]:
        """Model id -> start address of its first instance."""
        starts: dict[int, int] = {}
        for location in self.locations:
            starts.setdefault(location.model_id, location.address)
        return starts

    def find(self, model_id: int) -> ModelLocation | None:
        """The first instance of a model, or None."""
        return next((location for location in self.locations if location.model_id == model_id), None)

    def require(self, model_id: int) -> ModelLocation:
        """The first instance of a model; DiscoveryError when the device does not have it."""
        location = self.find(model_id)
        if location is None:
            found = ", ".join(str(item.model_id) for item in self.locations)
            raise DiscoveryError(f"device has no SunSpec model {model_id} (models found: {found})")
        return location


async def discover(
    bus: ModbusBus,
    address: DeviceAddress,
    *,
    base_addresses: tuple[int, ...] = BASE_ADDRESSES,
    priority: Priority = Priority.POLL,
) -> SunSpecMap:
    """Find the 'SunS' marker (40000, else 0, else 50000) and walk the model chain to its end.

    A rejected read or a timeout at a candidate base counts as a miss (pysunspec2 issue 56); a refused
    connection raises DeviceUnavailable at once. Raises DiscoveryError when no base holds the marker
    or the chain is broken, and DeviceUnavailable when every candidate timed out.
    """
    timeouts = 0
    for base in base_addresses:
        try:
            marker = await bus.read_holding_registers(address, base, 2, priority=priority)
        except ResponseTimeout:
            timeouts += 1
            continue
        except InvalidResponse:
            continue
        if tuple(marker) == SUNS_MARKER:
            locations = await _walk_chain(bus, address, base, priority)
            logger.debug(
                "sunspec discovered",
                extra={"device": str(address), "base": base, "models": [item.model_id for item in locations]},
            )
            return SunSpecMap(base, locations)
    tried = ", ".join(str(base) for base in base_addresses)
    if timeouts == len(base_addresses):
        raise DeviceUnavailable(f"{address}: no reply at any SunSpec base address ({tried})")
    raise DiscoveryError(f"{address}: no 'SunS' marker at {tried}")


async def _walk_chain(
    bus: ModbusBus, address: DeviceAddress, base: int, priority: Priority
) -> tuple[ModelLocation, ...]:
    locations: list[ModelLocation] = []
    cursor = base + len(SUNS_MARKER)
    for _ in range(_MAX_MODELS):
        if cursor + MODEL_HEADER_REGISTERS > 0x10000:
            break
        try:
            header = await bus.read_holding_registers(address, cursor, MODEL_HEADER_REGISTERS, priority=priority)
        except InvalidResponse as error:
            raise DiscoveryError(f"{address}: model chain broken at {cursor}: {error}") from error
        model_id, length = header
        if model_id == END_MODEL_ID:
            return tuple(locations)
        locations.append(ModelLocation(model_id, cursor, length))
        cursor += MODEL_HEADER_REGISTERS + length
    raise DiscoveryError(f"{address}: model chain from {base} has no end marker within {_MAX_MODELS} models")


async def read_model(
    bus: ModbusBus,
    address: DeviceAddress,
    location: ModelLocation,
    definition: ModelDefinition | None = None,
    *,
    priority: Priority = Priority.POLL,
) -> ModelBlock:
    """Read one model instance (header included) in reads of at most 125 registers on point boundaries.

    Reads the smaller of the device's length and the definition's, so a device with an older, shorter
    revision of a model is read without errors (missing points decode to None).
    """
    model = definition or MODELS.get(location.model_id)
    if model is None:
        raise ValueError(f"no definition of SunSpec model {location.model_id}")
    if model.model_id != location.model_id:
        raise ValueError(f"definition of model {model.model_id} used for model {location.model_id}")
    count = MODEL_HEADER_REGISTERS + min(location.length, model.length)
    registers: list[int] = []
    for offset, span in model.read_spans(count, MAX_READ_REGISTERS):
        registers.extend(await bus.read_holding_registers(address, location.address + offset, span, priority=priority))
    if decode(PointType.UINT16, registers[:1]) != location.model_id:
        raise InvalidResponse(f"{address}: register {location.address} no longer holds model {location.model_id}")
    return ModelBlock(model, location.address, tuple(registers))
