"""Register maps as data: point and model definitions, and decoded blocks of register values."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from device_agent.modbus.registers import PointType, apply_scale_factor, decode, register_count

__all__ = [
    "MODEL_HEADER_REGISTERS",
    "ModelBlock",
    "ModelDefinition",
    "PointDefinition",
    "PointSpec",
    "define_model",
    "point",
]

# Every SunSpec model starts with its ID and its length L (registers after these two).
MODEL_HEADER_REGISTERS = 2


@dataclass(frozen=True)
class PointDefinition:
    """One point of a model: where it sits, how it is encoded and how to scale it."""

    name: str
    offset: int  # registers from the model's first register (its ID)
    type: PointType
    size: int  # registers
    scale_factor: str | None = None  # name of the sunssf point of the same model
    units: str | None = None
    writable: bool = False


@dataclass(frozen=True)
class PointSpec:
    """A point before its offset is known: the input of `define_model`."""

    name: str
    type: PointType
    scale_factor: str | None = None
    units: str | None = None
    writable: bool = False
    size: int | None = None


def point(
    name: str,
    type: PointType,
    scale_factor: str | None = None,
    *,
    units: str | None = None,
    writable: bool = False,
    size: int | None = None,
) -> PointSpec:
    """Shorthand for a PointSpec, so model tables read like the SunSpec model JSON."""
    return PointSpec(name, type, scale_factor, units, writable, size)


@dataclass(frozen=True)
class ModelDefinition:
    """A SunSpec model (or any fixed register map): its id, its length L and its points in order."""

    model_id: int
    name: str
    length: int
    points: tuple[PointDefinition, ...]
    _by_name: dict[str, PointDefinition] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {definition.name: definition for definition in self.points}
        if len(by_name) != len(self.points):
            raise ValueError(f"model {self.model_id}: duplicate point names")
        next_free = 0
        for definition in sorted(self.points, key=lambda item: item.offset):
            if definition.offset < next_free:
                raise ValueError(f"model {self.model_id}: {definition.name} overlaps the point before it")
            next_free = definition.offset + definition.size
            if definition.scale_factor is not None:
                scale = by_name.get(definition.scale_factor)
                if scale is None or scale.type is not PointType.SUNSSF:
                    raise ValueError(f"model {self.model_id}: {definition.name} has no sunssf point")
        if next_free > self.length + MODEL_HEADER_REGISTERS:
            raise ValueError(f"model {self.model_id}: points run past the model length {self.length}")
        object.__setattr__(self, "_by_name", by_name)

    @property
    def register_count(self) -> int:
        """Registers of the whole model, header included."""
        return self.length + MODEL_HEADER_REGISTERS

    def point(self, name: str) -> PointDefinition:
        """The point called `name`; KeyError names the model when there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"model {self.model_id} ({self.name}) has no point {name!r}") from None

    def read_spans(self, register_count: int, max_registers: int) -> list[tuple[int, int]]:
        """(offset, count) reads covering the first `register_count` registers, split on point boundaries.

        Reads never tear a multi-register point into two transactions (pysunspec2 issues 16 and 53).
        """
        offsets = {definition.offset for definition in self.points if definition.offset < register_count}
        boundaries = sorted({0, register_count} | offsets)
        spans: list[tuple[int, int]] = []
        start = 0
        previous = 0
        for boundary in boundaries[1:]:
            if boundary - start > max_registers:
                if previous == start:
                    raise ValueError(f"model {self.model_id}: a point spans over {max_registers} registers")
                spans.append((start, previous - start))
                start = previous
            previous = boundary
        if register_count > start:
            spans.append((start, register_count - start))
        return spans


def define_model(model_id: int, name: str, length: int, specs: Iterable[PointSpec]) -> ModelDefinition:
    """Lay points out back to back after the ID and L header, as the SunSpec model JSON does."""
    points = [
        PointDefinition("ID", 0, PointType.UINT16, 1),
        PointDefinition("L", 1, PointType.UINT16, 1),
    ]
    offset = MODEL_HEADER_REGISTERS
    for spec in specs:
        size = register_count(spec.type, spec.size)
        points.append(PointDefinition(spec.name, offset, spec.type, size, spec.scale_factor, spec.units, spec.writable))
        offset += size
    if offset != length + MODEL_HEADER_REGISTERS:
        raise ValueError(f"model {model_id}: points span {offset - 2} registers, the model says {length}")
    return ModelDefinition(model_id, name, length, tuple(points))


@dataclass(frozen=True)
class ModelBlock:
    """The registers of one model as read from a device, decoded on demand."""

    definition: ModelDefinition
    address: int  # absolute address of the model's ID register
    registers: tuple[int, ...]  # from the ID register on; may be shorter than the definition

    def address_of(self, name: str) -> int:
        """Absolute register address of a point."""
        return self.address + self.definition.point(name).offset

    def words(self, name: str) -> tuple[int, ...] | None:
        """The raw registers of a point, or None when the device's model is too short to hold it."""
        definition = self.definition.point(name)
        end = definition.offset + definition.size
        if end > len(self.registers):
            return None
        return self.registers[definition.offset : end]

    def raw(self, name: str) -> int | str | None:
        """Decoded value without scaling; None when not implemented or not present."""
        words = self.words(name)
        if words is None:
            return None
        return decode(self.definition.point(name).type, words)

    def integer(self, name: str) -> int | None:
        """Decoded integer without scaling; None when not implemented or not present."""
        value = self.raw(name)
        if isinstance(value, str):
            raise TypeError(f"{name} is a string point")
        return value

    def text(self, name: str) -> str:
        """A string point ("" when not present)."""
        value = self.raw(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise TypeError(f"{name} is not a string point")
        return value

    def scale_factor(self, name: str) -> int | None:
        """The scale factor that applies to point `name` (None if it has none or it is not implemented)."""
        scale_name = self.definition.point(name).scale_factor
        return None if scale_name is None else self.integer(scale_name)

    def value(self, name: str) -> float | None:
        """Engineering value: the raw reading times 10**scale factor; None when unavailable."""
        raw = self.integer(name)
        definition = self.definition.point(name)
        if definition.scale_factor is None:
            return None if raw is None else float(raw)
        scale = self.integer(definition.scale_factor)
        if scale is None:
            # A point whose scale factor is not implemented cannot be interpreted.
            return None
        return apply_scale_factor(raw, scale)
