"""Typed PostgREST requests: what the parser produces and the compiler turns into SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "OPERATORS",
    "Argument",
    "Condition",
    "DeleteQuery",
    "Filter",
    "InsertQuery",
    "InsertRows",
    "OrderTerm",
    "Query",
    "ReadQuery",
    "Resolution",
    "SelectItem",
    "UpdateQuery",
]

# Comparison operators and their SQL; like, ilike, in and is are handled on their own.
OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

Resolution = Literal["merge-duplicates", "ignore-duplicates"]


@dataclass(frozen=True)
class Filter:
    """``column=[not.]operator.value``; ``value`` is a tuple for ``in``, the keyword for ``is``."""

    column: str
    operator: str
    value: str | tuple[str, ...]
    negated: bool = False


@dataclass(frozen=True)
class Condition:
    """``and``/``or`` over filters and nested conditions; an empty ``and`` is true."""

    conjunction: Literal["and", "or"] = "and"
    children: tuple[Filter | Condition, ...] = ()
    negated: bool = False


@dataclass(frozen=True)
class SelectItem:
    """One entry of ``select``: a column, optionally renamed ``alias:column``."""

    column: str
    alias: str | None = None

    @property
    def output_name(self) -> str:
        return self.alias or self.column


@dataclass(frozen=True)
class OrderTerm:
    """One entry of ``order``: ``column[.asc|.desc][.nullsfirst|.nullslast]``."""

    column: str
    descending: bool = False
    nulls_first: bool | None = None


@dataclass(frozen=True)
class Argument:
    """A named RPC argument: its value as text (a list of texts for arrays) and the parameter's type."""

    name: str
    value: str | list[str | None] | None
    sql_type: str


@dataclass(frozen=True)
class ReadQuery:
    """GET/HEAD of a table, or an RPC call (``arguments`` set) whose rows are read the same way."""

    relation: str
    select: tuple[SelectItem, ...]
    where: Condition = field(default_factory=Condition)
    order: tuple[OrderTerm, ...] = ()
    offset: int = 0
    limit: int | None = None
    count_exact: bool = False
    singular: bool = False
    head: bool = False
    arguments: tuple[Argument, ...] | None = None


@dataclass(frozen=True)
class InsertRows:
    """The rows of an insert as one JSON array text, inserted over the union of their keys (``columns``).

    ``partial`` are the columns some row leaves out: such a row takes the column's default there (PostgREST's
    ``Prefer: missing=default``), a key given as null stays null.
    """

    columns: tuple[str, ...]
    rows_json: str
    row_count: int
    partial: tuple[str, ...] = ()


@dataclass(frozen=True)
class InsertQuery:
    """POST of one object or an array of objects."""

    relation: str
    rows: InsertRows
    returning: tuple[SelectItem, ...]
    representation: bool = False
    count_exact: bool = False
    singular: bool = False
    resolution: Resolution | None = None
    on_conflict: tuple[str, ...] = ()


@dataclass(frozen=True)
class UpdateQuery:
    """PATCH of the rows matching ``where`` with one object's values."""

    relation: str
    columns: tuple[str, ...]
    values_json: str
    where: Condition
    returning: tuple[SelectItem, ...]
    representation: bool = False
    count_exact: bool = False
    singular: bool = False


@dataclass(frozen=True)
class DeleteQuery:
    """DELETE of the rows matching ``where``."""

    relation: str
    where: Condition
    returning: tuple[SelectItem, ...]
    representation: bool = False
    count_exact: bool = False
    singular: bool = False


Query = ReadQuery | InsertQuery | UpdateQuery | DeleteQuery
