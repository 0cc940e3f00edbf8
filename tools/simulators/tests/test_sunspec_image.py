"""SunSpec register image of the simulators: marker, model chain, encoding and layouts."""

from __future__ import annotations

import pytest

from gridloop_simulators.sunspec import (
    BATTERY,
    COMMON,
    DER_AC_MEASUREMENT,
    END_MODEL_ID,
    METER_WYE,
    STORAGE,
    SUNS_MARKER,
    ModelLayout,
    PointType,
    SunSpecImage,
    scale_factor_for,
)


def test_image_starts_with_marker_and_chains_models_to_the_end_model() -> None:
    image = SunSpecImage(40000, [COMMON, STORAGE, BATTERY, DER_AC_MEASUREMENT])
    registers = image.registers
    assert tuple(registers[:2]) == SUNS_MARKER
    cursor = 2
    found = []
    while registers[cursor] != END_MODEL_ID:
        found.append(registers[cursor])
        cursor += 2 + registers[cursor + 1]
    assert found == [1, 124, 802, 701]
    assert registers[cursor + 1] == 0
    assert image.model_address(124) == 40000 + 2 + 68


@pytest.mark.parametrize(
    ("layout", "length"), [(COMMON, 66), (STORAGE, 24), (BATTERY, 62), (DER_AC_MEASUREMENT, 153), (METER_WYE, 105)]
)
def test_model_lengths_match_the_sunspec_models(layout: ModelLayout, length: int) -> None:
    assert layout.length == length


def test_standard_offsets() -> None:
    assert STORAGE.point("StorCtl_Mod").offset == 5
    assert STORAGE.point("InOutWRte_RvrtTms").offset == 15
    assert STORAGE.point("ChaGriSet").offset == 17
    assert STORAGE.point("InOutWRte_SF").offset == 25
    assert BATTERY.point("SoC").offset == 11
    assert BATTERY.point("Hb").offset == 18
    assert BATTERY.point("W").offset == 47
    assert DER_AC_MEASUREMENT.point("W").offset == 10
    assert DER_AC_MEASUREMENT.point("Hz").offset == 17
    assert DER_AC_MEASUREMENT.point("W_SF").offset == 116
    assert METER_WYE.point("W").offset == 18
    assert METER_WYE.point("TotWhImp").offset == 46


def test_unset_points_read_as_not_implemented() -> None:
    image = SunSpecImage(0, [STORAGE])
    assert image.get(124, "WChaMax") == 0xFFFF
    assert image.get(124, "OutWRte") == -0x8000
    assert image.get(124, "InOutWRte_SF") == -0x8000


def test_scaled_values_round_trip_through_the_stored_scale_factor() -> None:
    image = SunSpecImage(40000, [STORAGE])
    image.set(124, "InOutWRte_SF", -2)
    image.set_scaled(124, "OutWRte", -42.5)
    assert image.get(124, "OutWRte") == -4250
    assert image.get_scaled(124, "OutWRte") == pytest.approx(-42.5)


def test_strings_are_nul_padded() -> None:
    image = SunSpecImage(40000, [COMMON])
    image.set(1, "Mn", "gridloop")
    assert image.get(1, "Mn") == "gridloop"
    index = image.address_of(1, "Mn") - 40000
    assert image.registers[index] == int.from_bytes(b"gr", "big")
    assert image.registers[index + 4 : index + 16] == [0] * 12


def test_scale_factor_for_keeps_values_inside_the_type() -> None:
    assert scale_factor_for(5_000, PointType.INT16) == 0
    assert scale_factor_for(100_000, PointType.INT16) == 1
    assert scale_factor_for(65_535, PointType.UINT16) == 0
    assert scale_factor_for(33.75, PointType.UINT16, resolution=-2) == -2


def test_locate_finds_points_and_misses_headers() -> None:
    image = SunSpecImage(40000, [COMMON, STORAGE])
    storage = image.model_address(124)
    located = image.locate(storage + 15)
    assert located is not None
    assert located[1].name == "InOutWRte_RvrtTms"
    assert located[1].writable
    header = image.locate(storage)
    assert header is not None and not header[1].writable
    assert image.locate(39999) is None
