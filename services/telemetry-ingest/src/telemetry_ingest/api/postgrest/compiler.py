"""Compile a typed PostgREST query into one parameterised statement for asyncpg.

Every statement returns one row ``(total_count bigint, page_count bigint, body text)``: the JSON body is
built by PostgreSQL (``json_agg``), as PostgREST builds it, so timestamps, uuids and jsonb come out in
PostgreSQL's own JSON form. Identifiers come only from the catalogue and are quoted; every value from
the request is a ``$n`` text parameter cast to the column's type in SQL, so a malformed value is a
PostgreSQL 22P02/22007 error (a 400 via ``error_from_database``), never a crash in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from telemetry_ingest.api.postgrest.catalogue import Catalogue, Relation, quote_identifier, quote_literal
from telemetry_ingest.api.postgrest.query import (
    CAST_TYPES,
    OPERATORS,
    Argument,
    Condition,
    DeleteQuery,
    Filter,
    InsertQuery,
    JsonPath,
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
    body = "NULL::text" if query.head else _read_body(query, parameters)
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


def _literal(text: str) -> str:
    """A SQL string literal of ``text`` (a JSON key; the parser refuses NUL): quotes doubled, and an E'' string
    with backslashes doubled when it holds one, so it reads the same whatever standard_conforming_strings says."""
    quoted = "'" + text.replace("'", "''") + "'"
    return "E" + quoted.replace("\\", "\\\\") if "\\" in text else quoted


def _field(relation: Relation, column: str, path: JsonPath) -> str:
    """A column, followed by its JSON path (``->'key'``, ``->>'key'``, ``->(0)``) as PostgREST writes it; a path is
    parenthesised, since ``::`` binds tighter than ``->`` and ``->>``."""
    expression = _column(relation, column)
    for step in path:
        operand = f"({int(step.index)})" if step.index is not None else _literal(step.key)
        expression = f"{expression}{step.arrow}{operand}"
    return f"({expression})" if path else expression


def _field_type(relation: Relation, column: str, path: JsonPath) -> str:
    """The SQL type of a field: ``->>`` gives text, ``->`` the column's json or jsonb."""
    return "text" if path and path[-1].arrow == "->>" else relation.columns[column].sql_type


def _select_expression(relation: Relation, item: SelectItem) -> str:
    expression = _field(relation, item.column, item.path)
    if item.cast is None:
        return expression
    if item.cast not in CAST_TYPES.values():
        raise ValueError(f"cast to {item.cast!r} is not in the allow-list")  # the parser gives only those
    return f"CAST({expression} AS {item.cast})"


def _select_list(relation: Relation, items: tuple[SelectItem, ...]) -> str:
    return ", ".join(f"{_select_expression(relation, item)} AS {quote_identifier(item.output_name)}" for item in items)


def _order(relation: Relation, terms: tuple[OrderTerm, ...]) -> str:
    parts = []
    for term in terms:
        nulls = "" if term.nulls_first is None else (" NULLS FIRST" if term.nulls_first else " NULLS LAST")
        field = _field(relation, term.column, term.path)
        parts.append(f"{field} {'DESC' if term.descending else 'ASC'}{nulls}")
    return ", ".join(parts)


def _read_body(query: ReadQuery, parameters: _Parameters) -> str:
    if query.csv:
        return _csv_body(query.select, parameters)
    if query.strip_nulls:
        # PostgREST's nulls=stripped: each row object without its null-valued keys.
        if query.singular:
            return "(SELECT json_strip_nulls(json_agg(page) -> 0)::text FROM page)"
        return "(SELECT coalesce(json_strip_nulls(json_agg(page)), '[]')::text FROM page)"
    return _body(query.singular)


def _csv_text(value: str) -> str:
    """One CSV field as RFC 4180 quotes it: in double quotes (inner ones doubled) when it holds a comma, a quote or
    a line break, or is empty (so that an empty string differs from NULL, which is an empty field)."""
    if value == "" or any(character in value for character in '",\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_body(items: tuple[SelectItem, ...], parameters: _Parameters) -> str:
    """PostgREST's CSV: a header row of the output names, then one line per row, fields in PostgreSQL's text form.

    The page's columns are renamed by position (two select items may share an output name); the header is a
    parameter, as every text from the request is."""
    header = parameters.add(",".join(_csv_text(item.output_name) for item in items))
    names = [quote_identifier(f"c{number}") for number in range(1, len(items) + 1)]
    fields = []
    for name in names:
        text = f"csv_row.{name}::text"
        fields.append(
            f"CASE WHEN csv_row.{name} IS NULL THEN '' "
            f"WHEN {text} = '' OR {text} ~ '[\",\\r\\n]' THEN '\"' || replace({text}, '\"', '\"\"') || '\"' "
            f"ELSE {text} END"
        )
    row = " || ',' || ".join(fields)
    return (
        f"(SELECT {header}::text || coalesce(E'\\n' || string_agg({row}, E'\\n'), '') "
        f"FROM page AS csv_row({', '.join(names)}))"
    )


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
    column = _field(relation, condition.column, condition.path)
    sql_type = _field_type(relation, condition.column, condition.path)
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
