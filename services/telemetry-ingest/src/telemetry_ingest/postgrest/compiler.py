"""Compile a typed PostgREST query into one parameterised statement for asyncpg.

Every statement returns one row ``(total_count bigint, page_count bigint, body text)``: the JSON body is
built by PostgreSQL (``json_agg``), as PostgREST builds it, so timestamps, uuids and jsonb come out in
PostgreSQL's own JSON form. Identifiers come only from the catalogue and are quoted; every value from
the request is a ``$n`` text parameter cast to the column's type in SQL, so a malformed value is a
PostgreSQL 22P02/22007 error (a 400 via ``error_from_database``), never a crash in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from telemetry_ingest.postgrest.catalogue import Catalogue, Relation, quote_identifier, quote_literal
from telemetry_ingest.postgrest.query import (
    OPERATORS,
    Argument,
    Condition,
    DeleteQuery,
    Filter,
    InsertQuery,
    OrderTerm,
    Query,
    ReadQuery,
    SelectItem,
    UpdateQuery,
)

__all__ = ["CompiledQuery", "compile_query"]

_IS_KEYWORDS = {"null": "NULL", "not_null": "NOT NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}
_PATCH_ALIAS = '"_request_values"'
_ROW_ALIAS = '"_request_row"'
_RECORD_ALIAS = '"_request_record"'


@dataclass(frozen=True)
class CompiledQuery:
    """SQL with ``$1..$n`` placeholders and their values (texts, lists of texts, or None)."""

    sql: str
    parameters: tuple[str | list[str] | list[str | None] | None, ...]


class _Parameters:
    def __init__(self) -> None:
        self.values: list[str | list[str] | list[str | None] | None] = []

    def add(self, value: str | list[str] | list[str | None] | None) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def compile_query(catalogue: Catalogue, query: Query) -> CompiledQuery:
    """The one statement that carries out ``query``; run it with ``fetchrow(sql, *parameters)``."""
    parameters = _Parameters()
    if isinstance(query, ReadQuery):
        sql = _compile_read(catalogue, query, parameters)
    elif isinstance(query, InsertQuery):
        sql = _compile_insert(catalogue.relation(query.relation), query, parameters)
    elif isinstance(query, UpdateQuery):
        sql = _compile_update(catalogue.relation(query.relation), query, parameters)
    else:
        sql = _compile_delete(catalogue.relation(query.relation), query, parameters)
    return CompiledQuery(sql, tuple(parameters.values))


def _compile_read(catalogue: Catalogue, query: ReadQuery, parameters: _Parameters) -> str:
    if query.arguments is None:
        relation = catalogue.relation(query.relation)
        source = f"{relation.qualified_name} AS {quote_identifier(relation.name)}"
    else:
        function = catalogue.function(query.relation, [argument.name for argument in query.arguments])
        relation = Relation(function.schema, function.name, function.columns)
        call_arguments = ", ".join(_argument(argument, parameters) for argument in query.arguments)
        source = f"{function.qualified_name}({call_arguments}) AS {quote_identifier(function.name)}"
    where = _condition(relation, query.where, parameters)
    order = f" ORDER BY {_order(relation, query.order)}" if query.order else ""
    limit = f" LIMIT {int(query.limit)}" if query.limit is not None else ""
    offset = f" OFFSET {int(query.offset)}" if query.offset else ""
    total = f"(SELECT count(*) FROM {source} WHERE {where})" if query.count_exact else "NULL::bigint"
    body = "NULL::text" if query.head else _body(query.singular)
    return (
        f"WITH page AS (SELECT {_select_list(relation, query.select)} FROM {source}"
        f" WHERE {where}{order}{limit}{offset})\n"
        f"SELECT {total} AS total_count, (SELECT count(*) FROM page) AS page_count, {body} AS body"
    )


def _compile_insert(relation: Relation, query: InsertQuery, parameters: _Parameters) -> str:
    rows = query.rows
    if rows.row_count == 0:
        return "SELECT NULL::bigint AS total_count, 0::bigint AS page_count, '[]'::text AS body"
    statement = f"{_insert_rows(relation, query, parameters)} RETURNING {_returning(relation, query)}"
    return _mutation_result(statement, representation=query.representation, singular=query.singular)


def _insert_rows(relation: Relation, query: InsertQuery, parameters: _Parameters) -> str:
    """One INSERT ... SELECT over the JSON array, whatever the number of rows or of key sets.

    Each row is turned into a record of the table by json_populate_record; a column some row leaves out takes,
    in that row, the column's default expression from the catalogue (a key sent as null stays null). PostgreSQL
    plans the statement once: its size depends on the table's columns, not on the rows.
    """
    rows = query.rows
    columns = rows.columns
    partial = set(rows.partial)
    if not columns:
        # Objects without keys: rows of defaults only. Any column serves to spell them.
        columns = (next(iter(relation.columns)),)
        partial = set(columns)
    values = []
    for column in columns:
        value = f"{_RECORD_ALIAS}.{quote_identifier(column)}"
        default = relation.columns[column].default_expression
        if column in partial and default is not None:
            # ->  gives SQL NULL only for an absent key (a JSON null is the json value null).
            present = f"{_ROW_ALIAS}.body -> {quote_literal(column)} IS NOT NULL"
            value = f"CASE WHEN {present} THEN {value} ELSE {default} END"
        values.append(value)
    column_list = ", ".join(quote_identifier(column) for column in columns)
    body = parameters.add(rows.rows_json)
    return (
        f"INSERT INTO {relation.qualified_name} AS {quote_identifier(relation.name)} ({column_list}) "
        f"SELECT {', '.join(values)} FROM json_array_elements({body}::text::json) AS {_ROW_ALIAS}(body) "
        f"CROSS JOIN LATERAL json_populate_record(NULL::{relation.qualified_name}, {_ROW_ALIAS}.body) "
        f"AS {_RECORD_ALIAS}{_conflict(relation, query, columns)}"
    )


def _returning(relation: Relation, query: InsertQuery | UpdateQuery | DeleteQuery) -> str:
    # Only a representation reads the rows back (RETURNING needs SELECT on what it returns); otherwise they are
    # only counted, as PostgREST's return=minimal.
    return _select_list(relation, query.returning) if query.representation else "1"


def _conflict(relation: Relation, query: InsertQuery, columns: tuple[str, ...]) -> str:
    if query.resolution is None:
        return ""
    target_columns = query.on_conflict or relation.primary_key
    target = f" ({', '.join(quote_identifier(column) for column in target_columns)})" if target_columns else ""
    if query.resolution == "ignore-duplicates":
        return f" ON CONFLICT{target} DO NOTHING"
    if not target or not query.rows.columns:
        return ""  # nothing identifies a duplicate: a plain insert, as PostgREST does without a key
    assignments = ", ".join(f"{quote_identifier(column)} = EXCLUDED.{quote_identifier(column)}" for column in columns)
    return f" ON CONFLICT{target} DO UPDATE SET {assignments}"


def _compile_update(relation: Relation, query: UpdateQuery, parameters: _Parameters) -> str:
    alias = quote_identifier(relation.name)
    returning = _returning(relation, query)
    if not query.columns:
        # PATCH with {} changes nothing and returns no rows, as PostgREST's `SELECT ... WHERE false`. The
        # filters are not compiled, so none of their values is bound: every parameter has its placeholder.
        statement = f"SELECT {returning} FROM {relation.qualified_name} AS {alias} WHERE FALSE"
    else:
        where = _condition(relation, query.where, parameters)
        values = parameters.add(query.values_json)
        assignments = ", ".join(
            f"{quote_identifier(column)} = {_PATCH_ALIAS}.{quote_identifier(column)}" for column in query.columns
        )
        statement = (
            f"UPDATE {relation.qualified_name} AS {alias} SET {assignments} "
            f"FROM json_populate_record(NULL::{relation.qualified_name}, {values}::text::json) AS {_PATCH_ALIAS} "
            f"WHERE {where} RETURNING {returning}"
        )
    return _mutation_result(statement, representation=query.representation, singular=query.singular)


def _compile_delete(relation: Relation, query: DeleteQuery, parameters: _Parameters) -> str:
    alias = quote_identifier(relation.name)
    where = _condition(relation, query.where, parameters)
    statement = (
        f"DELETE FROM {relation.qualified_name} AS {alias} WHERE {where} RETURNING {_returning(relation, query)}"
    )
    return _mutation_result(statement, representation=query.representation, singular=query.singular)


def _mutation_result(statement: str, *, representation: bool, singular: bool) -> str:
    return (
        f"WITH page AS ({statement})\n"
        f"SELECT NULL::bigint AS total_count, (SELECT count(*) FROM page) AS page_count, "
        f"{_body(singular) if representation else 'NULL::text'} AS body"
    )


def _body(singular: bool) -> str:
    if singular:
        return "(SELECT (json_agg(page) -> 0)::text FROM page)"
    return "(SELECT coalesce(json_agg(page), '[]')::text FROM page)"


def _column(relation: Relation, column: str) -> str:
    return f"{quote_identifier(relation.name)}.{quote_identifier(column)}"


def _select_list(relation: Relation, items: tuple[SelectItem, ...]) -> str:
    return ", ".join(f"{_column(relation, item.column)} AS {quote_identifier(item.output_name)}" for item in items)


def _order(relation: Relation, terms: tuple[OrderTerm, ...]) -> str:
    parts = []
    for term in terms:
        nulls = "" if term.nulls_first is None else (" NULLS FIRST" if term.nulls_first else " NULLS LAST")
        parts.append(f"{_column(relation, term.column)} {'DESC' if term.descending else 'ASC'}{nulls}")
    return ", ".join(parts)


def _argument(argument: Argument, parameters: _Parameters) -> str:
    placeholder = parameters.add(argument.value)
    text_type = "text[]" if isinstance(argument.value, list) else "text"
    return f"{quote_identifier(argument.name)} => {placeholder}::{text_type}::{argument.sql_type}"


def _condition(relation: Relation, condition: Condition, parameters: _Parameters) -> str:
    if not condition.children:
        return "TRUE"
    joiner = " AND " if condition.conjunction == "and" else " OR "
    parts = [
        _filter(relation, child, parameters) if isinstance(child, Filter) else _condition(relation, child, parameters)
        for child in condition.children
    ]
    combined = "(" + joiner.join(parts) + ")"
    return f"NOT {combined}" if condition.negated else combined


def _filter(relation: Relation, condition: Filter, parameters: _Parameters) -> str:
    column = _column(relation, condition.column)
    sql_type = relation.columns[condition.column].sql_type
    if condition.operator in OPERATORS:
        assert isinstance(condition.value, str)
        expression = f"{column} {OPERATORS[condition.operator]} {parameters.add(condition.value)}::text::{sql_type}"
    elif condition.operator in ("like", "ilike"):
        assert isinstance(condition.value, str)
        # Cast to text so a pattern works on any column (PostgREST needs a text column).
        keyword = "LIKE" if condition.operator == "like" else "ILIKE"
        expression = f"{column}::text {keyword} {parameters.add(condition.value)}::text"
    elif condition.operator == "in":
        values = list(condition.value) if isinstance(condition.value, tuple) else [condition.value]
        array_type = sql_type if sql_type.endswith("[]") else f"{sql_type}[]"
        expression = f"{column} = ANY ({parameters.add(values)}::text[]::{array_type})"
    else:
        expression = f"{column} IS {_IS_KEYWORDS[str(condition.value)]}"
    return f"NOT ({expression})" if condition.negated else f"({expression})"
