"""postgres_changes filters as realtime-js writes them: ``col=[not.]op.value`` conditions joined by commas (AND)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

__all__ = [
    "OPERATORS",
    "ChangeFilter",
    "Condition",
    "FilterError",
    "coerce",
    "parse_filter",
    "parse_select",
]


class FilterError(ValueError):
    """A subscription's filter or target cannot be served; the text goes back to the client."""


_NUMERIC_TYPES: Final = frozenset({"int2", "int4", "int8", "float4", "float8", "numeric"})
_TIME_TYPES: Final = frozenset({"timestamptz", "timestamp", "date"})
_TEXT_TYPES: Final = frozenset({"text", "varchar", "bpchar", "name", "citext"})


def coerce(type_name: str, value: Any) -> Any:
    """A value (from a filter's text or a record's JSON) as a comparable, hashable value of the column's type."""
    if value is None:
        return None
    if type_name in _NUMERIC_TYPES:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if type_name == "uuid":
        return uuid.UUID(str(value))
    if type_name in _TIME_TYPES:
        return datetime.fromisoformat(str(value))
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"{value!r} is not a boolean")
        return lowered == "true"
    return str(value)


_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": lambda left, right: bool(left == right),
    "neq": lambda left, right: bool(left != right),
    "lt": lambda left, right: bool(left < right),
    "lte": lambda left, right: bool(left <= right),
    "gt": lambda left, right: bool(left > right),
    "gte": lambda left, right: bool(left >= right),
}
# What realtime-js's filter builder writes and this server evaluates. match/imatch (regular expressions) are
# refused: a pattern evaluated against every inserted row is a denial-of-service lever (catastrophic backtracking).
OPERATORS: Final = (*_COMPARISONS, "in", "like", "ilike", "is", "isdistinct")
_UNREADABLE: Final = object()  # a row's value that is not of its column's type: no condition holds
_IS_VALUES: Final = {"null": None, "unknown": None, "true": True, "false": False}


def _like_matches(pattern: str, text: str, *, fold_case: bool) -> bool:
    """SQL LIKE (``%`` any run, ``_`` one character, ``\\`` escapes) without backtracking.

    The pattern is split on unescaped ``%``; each piece must then occur in order, the first at the start and
    the last at the end. Taking each middle piece at its leftmost occurrence is always right for this pattern
    language, so the cost is O(len(text) * len(pattern)) whatever the client sends.
    """
    if fold_case:
        pattern, text = pattern.casefold(), text.casefold()
    pieces: list[list[str | None]] = [[]]  # None: ``_``
    escaped = False
    for character in pattern:
        if escaped:
            pieces[-1].append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == "%":
            pieces.append([])
        elif character == "_":
            pieces[-1].append(None)
        else:
            pieces[-1].append(character)

    def fits(piece: Sequence[str | None], at: int) -> bool:
        return at + len(piece) <= len(text) and all(
            wanted is None or text[at + offset] == wanted for offset, wanted in enumerate(piece)
        )

    first, last = pieces[0], pieces[-1]
    if len(pieces) == 1:
        return len(first) == len(text) and fits(first, 0)
    if not fits(first, 0) or len(first) + len(last) > len(text):
        return False
    position = len(first)
    end = len(text) - len(last)
    for piece in pieces[1:-1]:
        while position + len(piece) <= end and not fits(piece, position):
            position += 1
        if position + len(piece) > end:
            return False
        position += len(piece)
    return fits(last, end)


@dataclass(frozen=True)
class Condition:
    """One ``column=[not.]operator.value`` condition, its values coerced to the column's type."""

    column: str
    operator: str
    values: tuple[Any, ...]  # one value except for ``in``
    type_name: str
    negated: bool = False

    def _truth(self, value: Any) -> bool | None:
        """SQL three-valued logic: None is unknown (a null compared with anything)."""
        comparison = _COMPARISONS.get(self.operator)
        if comparison is not None:
            if value is None:
                return None
            try:
                return comparison(value, self.values[0])
            except TypeError:  # e.g. a date filter against a timestamp with a zone
                return None
        if self.operator == "is":
            return value is None if self.values[0] is None else bool(value == self.values[0])
        if self.operator == "isdistinct":
            return bool(value != self.values[0])
        if value is None:
            return None
        if self.operator == "in":
            return value in self.values
        return _like_matches(str(self.values[0]), str(value), fold_case=self.operator == "ilike")

    def matches(self, record: Mapping[str, Any], coerced: dict[str, Any] | None = None) -> bool:
        """Whether the row passes; ``coerced`` caches the row's values by column across the conditions of a row."""
        if coerced is not None and self.column in coerced:
            value = coerced[self.column]
        else:
            try:
                value = coerce(self.type_name, record.get(self.column))
            except (TypeError, ValueError):
                value = _UNREADABLE
            if coerced is not None:
                coerced[self.column] = value
        if value is _UNREADABLE:
            return False
        truth = self._truth(value)
        if truth is None:
            return False  # NOT unknown is still unknown: the row is not sent
        return truth != self.negated

    @property
    def equality_values(self) -> tuple[Any, ...] | None:
        """The values a matching row's column must hold, when this condition pins them (an index key)."""
        if self.negated or self.operator not in ("eq", "in") or any(value is None for value in self.values):
            return None
        return self.values


@dataclass(frozen=True)
class ChangeFilter:
    """A binding's filter: every condition must hold (realtime-js joins the builder's conditions with commas)."""

    conditions: tuple[Condition, ...]

    def matches(self, record: Mapping[str, Any], coerced: dict[str, Any] | None = None) -> bool:
        """Whether the row passes every condition; pass one ``coerced`` dict per row to share conversions."""
        return all(condition.matches(record, coerced) for condition in self.conditions)

    def index_key(self) -> tuple[str, tuple[Any, ...]] | None:
        """A column and the values it must equal, for the hub's index; None when no condition pins one."""
        for condition in self.conditions:
            values = condition.equality_values
            if values is not None:
                return condition.column, values
        return None


def _split_top_level(text: str, separator: str) -> Iterator[str]:
    """``text`` split on ``separator`` outside double quotes (backslash escapes inside) and parentheses."""
    start, depth, quoted, escaped = 0, 0, False, False
    for index, character in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if character == "\\":
                escaped = True
            elif character == '"':
                quoted = False
        elif character == '"':
            quoted = True
        elif character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
        elif character == separator and depth == 0:
            yield text[start:index]
            start = index + 1
    if quoted:
        raise FilterError(f"unterminated quote in {text!r}")
    yield text[start:]


def _unquote(raw: str) -> str:
    """A value as realtime-js quotes it (``"a,b"``, ``\\"`` and ``\\\\`` inside) or as sent bare."""
    if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
        body, characters, index = raw[1:-1], [], 0
        while index < len(body):
            if body[index] == "\\" and index + 1 < len(body):
                index += 1
            characters.append(body[index])
            index += 1
        return "".join(characters)
    return raw


def _parse_condition(text: str, column_types: Mapping[str, str]) -> Condition:
    column, separator, rest = text.partition("=")
    column = column.strip()
    negated = rest.startswith("not.")
    operator, dot, raw = rest.removeprefix("not.").partition(".")
    if not separator or not dot or not column:
        raise FilterError(f"invalid filter {text!r}: expected column=operator.value")
    type_name = column_types.get(column)
    if type_name is None:
        raise FilterError(f"invalid filter {text!r}: no column {column!r}")
    if operator not in OPERATORS:
        raise FilterError(f"invalid filter {text!r}: operator {operator!r} is not one of {', '.join(OPERATORS)}")
    if operator == "in":
        if not (raw.startswith("(") and raw.endswith(")")):
            raise FilterError(f"invalid filter {text!r}: in needs a list, e.g. in.(1,2)")
        items = [_unquote(item.strip()) for item in _split_top_level(raw[1:-1], ",") if item.strip()]
        if not items:
            raise FilterError(f"invalid filter {text!r}: in needs at least one value")
    elif operator == "is":
        if raw.lower() not in _IS_VALUES:
            raise FilterError(f"invalid filter {text!r}: is takes null, true, false or unknown")
        if _IS_VALUES[raw.lower()] is not None and type_name != "bool":
            raise FilterError(f"invalid filter {text!r}: is.{raw} needs a boolean column; {column} is {type_name}")
        return Condition(column, operator, (_IS_VALUES[raw.lower()],), type_name, negated)
    elif operator in ("like", "ilike"):
        if type_name not in _TEXT_TYPES:
            raise FilterError(
                f"invalid filter {text!r}: operator {operator!r} needs a text column; {column} is {type_name}"
            )
        # PostgREST spells the wildcard ``*`` so that URLs need no ``%``; realtime-js passes either through.
        return Condition(column, operator, (_unquote(raw).replace("*", "%"),), type_name, negated)
    else:
        items = [_unquote(raw)]
    try:
        values = tuple(
            None if operator == "isdistinct" and item == "null" else coerce(type_name, item) for item in items
        )
    except (TypeError, ValueError) as error:
        raise FilterError(f"invalid filter {text!r}: {error}") from error
    return Condition(column, operator, values, type_name, negated)


def parse_filter(text: str, column_types: Mapping[str, str]) -> ChangeFilter:
    """Parse ``device_id=eq.<uuid>``, ``site=in.(a,"b,c")`` or ``device_id=eq.X,soe=not.gt.40`` (AND)."""
    conditions = tuple(_parse_condition(part, column_types) for part in _split_top_level(text, ","))
    return ChangeFilter(conditions)


def parse_select(requested: Any, column_types: Mapping[str, str]) -> tuple[str, ...]:
    """A binding's ``select`` (a list of column names, or one comma-separated string) checked against the table."""
    if isinstance(requested, str):
        names = [name.strip() for name in requested.split(",") if name.strip()]
    elif isinstance(requested, list) and all(isinstance(name, str) for name in requested):
        names = list(requested)
    else:
        raise FilterError("select is a list of column names")
    unknown = [name for name in names if name not in column_types]
    if unknown:
        raise FilterError(f"select: no column {unknown[0]!r}")
    if not names:
        raise FilterError("select names no column")
    return tuple(dict.fromkeys(names))
