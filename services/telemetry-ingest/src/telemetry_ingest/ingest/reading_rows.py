"""A readings batch decoded straight from its JSON bytes into the rows COPY sends.

The contracts' models (``BessReading``, ``MeterReading``) are the definition of a valid reading, but
validating with them costs most of the consumer's CPU: pydantic builds a model (or a named tuple, whose
``__new__`` is Python code) per reading, ~7-11 us per 28-column meter reading. msgspec decodes the same
JSON into a struct of the table's columns in ~2 us, and ``astuple`` makes the COPY row in C.

The struct is derived from the model (types, bounds, required columns, defaults, extra fields refused),
so the two cannot drift apart; a model field type this module does not know how to translate is an
error at import, not a silent difference. msgspec is the stricter of the two (no numbers in strings, no
``7.0`` for an int, RFC 3339 times only), so it may refuse what the model accepts, never the reverse:
the handler then takes the careful path, item by item, where the model decides. Two differences are
deliberate: a time with more than 6 fractional digits is rounded to the microsecond (as PostgreSQL
rounds its own input), where pydantic truncates; and a uuid is kept as its canonical text, not as a
uuid.UUID (see ``CanonicalUuid``). So that a reading is stored the same whichever path
its batch takes, the careful path converts each item with the same struct first (``ReadingDecoder.row``)
and asks the model only about items the struct refuses. tests/test_reading_rows.py checks all of this.
"""

from __future__ import annotations

import math
import types
import typing
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Final

import annotated_types
import msgspec
from pydantic import AwareDatetime, BaseModel

from gridloop_common.contracts import BessReading, EvChargerReading, MeterReading
from telemetry_ingest.ingest.repository import ReadingKind, ReadingRecord, table_columns

__all__ = ["READING_MODELS", "REAL_MAX", "ReadingDecoder", "decoder", "row_struct"]

READING_MODELS: Final[dict[ReadingKind, type[BessReading] | type[MeterReading] | type[EvChargerReading]]] = {
    ReadingKind.BESS: BessReading,
    ReadingKind.METER: MeterReading,
    ReadingKind.EV_CHARGER: EvChargerReading,
}

# Largest finite float4: the readings columns are real, and a larger value would fail the whole COPY.
REAL_MAX: Final = 3.4028234663852886e38

# A uuid column is decoded as its canonical text (lowercase, hyphenated), not as a uuid.UUID: a UUID is an
# object the cycle collector tracks, and so is every row tuple holding one. The rows of the messages in
# hand (up to the prefetch, ~50,000 readings) then survived each young collection into the oldest
# generation, and collecting took a quarter of the consumer's CPU (8.3 us a reading; 6.0 with the
# collector off, 7.4 with this). A tuple of str, datetime and float is untracked at its first collection.
# asyncpg encodes the text in C; any other spelling the model accepts (upper case, no hyphens, braces,
# urn:) fails this pattern and takes the careful path, where the model decides.
CANONICAL_UUID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
CanonicalUuid = Annotated[str, msgspec.Meta(pattern=CANONICAL_UUID_PATTERN)]

_BOUNDS: Final = {
    annotated_types.Ge: "ge",
    annotated_types.Le: "le",
    annotated_types.Gt: "gt",
    annotated_types.Lt: "lt",
}


def _bounds(metadata: Sequence[Any]) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for item in metadata:
        keyword = _BOUNDS.get(type(item))
        if keyword is None:
            raise TypeError(f"no msgspec equivalent for the constraint {item!r}")
        bounds[keyword] = getattr(item, keyword)
    return bounds


def _struct_type(annotation: Any, metadata: Sequence[Any] = ()) -> Any:
    """The msgspec type for a pydantic field annotation (and its constraints); TypeError if unknown."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        if metadata:
            raise TypeError(f"constraints on a union are not translated: {annotation!r}")
        members = tuple(_struct_type(member) for member in typing.get_args(annotation))
        return typing.Union[members]  # noqa: UP007 - a union built at run time
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        # pydantic keeps Field(ge=..) inside Annotated as a FieldInfo whose metadata holds the bounds.
        inner = [bound for item in extra for bound in getattr(item, "metadata", [item])]
        return _struct_type(base, [*metadata, *inner])
    if annotation is type(None):
        return annotation
    if annotation is AwareDatetime:
        if metadata:
            raise TypeError("constraints on a time are not translated")
        return Annotated[datetime, msgspec.Meta(tz=True)]
    if annotation is uuid.UUID:
        if metadata:
            raise TypeError("constraints on a uuid are not translated")
        return CanonicalUuid
    if annotation is str:
        if metadata:
            raise TypeError("constraints on a text are not translated")
        return str
    if annotation in (float, int):
        bounds = _bounds(metadata)
        return Annotated[annotation, msgspec.Meta(**bounds)] if bounds else annotation
    raise TypeError(f"no msgspec equivalent for {annotation!r}")


def row_struct(model: type[BaseModel], columns: Sequence[str]) -> type[msgspec.Struct]:
    """A struct of ``columns`` with ``model``'s types, bounds and defaults; unknown fields are refused."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name in columns:
        info = model.model_fields[name]
        annotation = _struct_type(info.annotation, info.metadata)
        fields.append((name, annotation) if info.is_required() else (name, annotation, info.default))
    # kw_only: a required column may follow one with a default (decoding is by name anyway); gc=False:
    # the fields are scalars, so the cycle collector need not track a struct per reading.
    return msgspec.defstruct(
        f"{model.__name__}Row", fields, kw_only=True, forbid_unknown_fields=True, frozen=True, gc=False
    )


class ReadingDecoder:
    """Decodes readings of one kind into COPY rows of its table (columns in table order)."""

    def __init__(self, kind: ReadingKind) -> None:
        self.kind = kind
        self._struct = row_struct(READING_MODELS[kind], table_columns(kind))
        # list[struct] built at run time: the struct is made from the model, so it is no static type.
        self._batch = msgspec.json.Decoder(types.GenericAlias(list, (self._struct,)))

    def rows(self, body: bytes) -> list[ReadingRecord]:
        """A whole JSON batch as rows; raises msgspec.DecodeError (ValidationError is one) if any reading fails.

        JSON has no NaN or infinity, and a number beyond a double is refused, so every float is finite;
        one beyond float4's range makes the COPY raise ValueError instead.
        """
        astuple = msgspec.structs.astuple
        return [astuple(row) for row in self._batch.decode(body)]

    def row(self, item: Any) -> ReadingRecord | None:
        """One already-parsed reading as a row, or None if the struct refuses it or a float does not fit real."""
        try:
            row = msgspec.structs.astuple(msgspec.convert(item, self._struct))
        except msgspec.ValidationError:
            return None
        # Python's json module (the careful path's parser) reads NaN and Infinity, which msgspec.convert keeps.
        for value in row:
            if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= REAL_MAX):
                return None
        return row


_DECODERS: Final = {kind: ReadingDecoder(kind) for kind in ReadingKind}


def decoder(kind: ReadingKind) -> ReadingDecoder:
    """The (shared, stateless) decoder of readings of ``kind``."""
    return _DECODERS[kind]
