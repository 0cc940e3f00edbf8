"""Typed PostgREST requests: what the parser produces and the compiler turns into SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CAST_TYPES",
    "OPERATORS",
    "Argument",
    "Condition",
    "DeleteQuery",
    "Filter",
    "InsertQuery",
    "InsertRows",
    "JsonPath",
    "JsonStep",
    "OrderTerm",
    "Query",
    "ReadQuery",
    "Resolution",
    "SelectItem",
    "UpdateQuery",
    "path_output_name",
]

# Comparison operators and their SQL; like, ilike, in and is are handled on their own.
OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

# Casts a select may use, by the name a request gives them (lower case, spaces collapsed) and the SQL type they
# reach the statement as. PostgREST passes the request's name to SQL; here only these types can get there.
CAST_TYPES = {
    "text": "text",
    "varchar": "character varying",
    "character varying": "character varying",
    "int": "integer",
    "int4": "integer",
    "integer": "integer",
    "int2": "smallint",
    "smallint": "smallint",
    "int8": "bigint",
    "bigint": "bigint",
    "numeric": "numeric",
    "decimal": "numeric",
    "real": "real",
    "float4": "real",
    "float8": "double precision",
    "double precision": "double precision",
    "bool": "boolean",
    "boolean": "boolean",
    "json": "json",
    "jsonb": "jsonb",
    "uuid": "uuid",
    "date": "date",
    "time": "time without time zone",
    "timestamp": "timestamp without time zone",
    "timestamp without time zone": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "timestamp with time zone": "timestamp with time zone",
    "interval": "interval",
}

Resolution = Literal["merge-duplicates", "ignore-duplicates"]


@dataclass(frozen=True)
class JsonStep:
    """One step of a JSON path: ``->key`` (json) or ``->>key`` (text); ``index`` for ``->0`` or ``->>-1``."""

    arrow: Literal["->", "->>"]
    key: str
    index: int | None = None


JsonPath = tuple[JsonStep, ...]


def path_output_name(column: str, path: JsonPath) -> str:
    """PostgREST's name for ``column->...``: the last key of the path (an index names nothing), else the column."""
    keys = [step.key for step in path if step.index is None]
    return keys[-1] if keys else column


@dataclass(frozen=True)
class Filter:
    """``column[->path]=[not.]operator.value``; ``value`` is a tuple for ``in``, the keyword for ``is``."""

    column: str
    operator: str
    value: str | tuple[str, ...]
    negated: bool = False
    path: JsonPath = ()


@dataclass(frozen=True)
class Condition:
    """``and``/``or`` over filters and nested conditions; an empty ``and`` is true."""

    conjunction: Literal["and", "or"] = "and"
    children: tuple[Filter | Condition, ...] = ()
    negated: bool = False


@dataclass(frozen=True)
class SelectItem:
    """One entry of ``select``: ``[alias:]column[->path][::cast]``; ``cast`` is a type from the parser's allow-list."""

    column: str
    alias: str | None = None
    path: JsonPath = ()
    cast: str | None = None

    @property
    def output_name(self) -> str:
        return self.alias or path_output_name(self.column, self.path)


@dataclass(frozen=True)
class OrderTerm:
    """One entry of ``order``: ``column[.asc|.desc][.nullsfirst|.nullslast]``."""

    column: str
    descending: bool = False
    nulls_first: bool | None = None
    path: JsonPath = ()


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
    csv: bool = False  # Accept: text/csv (the body is CSV, not JSON)
    strip_nulls: bool = False  # Accept: application/vnd.pgrst.*+json;nulls=stripped (null values left out)


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
