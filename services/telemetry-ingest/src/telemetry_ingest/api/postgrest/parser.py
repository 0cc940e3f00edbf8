"""Parse a PostgREST request (path, query string, Prefer/Range/Accept headers, body) into a typed query."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast
from urllib.parse import parse_qsl

from telemetry_ingest.api.postgrest.catalogue import Catalogue, Relation
from telemetry_ingest.api.postgrest.errors import (
    PostgrestError,
    ambiguous_or_missing_filter,
    bad_json,
    json_path_on_non_json,
    parse_error,
    unknown_body_column,
    unknown_column,
    unknown_relationship,
)
from telemetry_ingest.api.postgrest.media import Media, negotiate_nulls
from telemetry_ingest.api.postgrest.query import (
    CAST_TYPES,
    OPERATORS,
    Argument,
    Condition,
    DeleteQuery,
    Filter,
    InsertQuery,
    InsertRows,
    JsonPath,
    JsonStep,
    OrderTerm,
    Query,
    ReadQuery,
    Resolution,
    SelectItem,
    UpdateQuery,
)

__all__ = ["QueryString", "parse_request", "parse_rpc"]

QueryString = str | Sequence[tuple[str, str]]

_RESERVED = {"select", "order", "limit", "offset", "on_conflict", "columns"}
_LOGIC_KEYS: dict[str, tuple[Literal["and", "or"], bool]] = {
    "or": ("or", False),
    "and": ("and", False),
    "not.or": ("or", True),
    "not.and": ("and", True),
}
_IS_VALUES = {"null", "not_null", "true", "false", "unknown"}
# What each kind of request can answer with (the first is the default); anything else is 406 PGRST107.
_READ_MEDIA: tuple[Media, ...] = ("json", "singular", "csv")
_WRITE_MEDIA: tuple[Media, ...] = ("json", "singular")
_ORDER_KEYWORDS = ("nullsfirst", "nullslast", "desc", "asc")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CLOSING_QUOTE = '"\\""'


class _Headers:
    """Case-insensitive view of request headers."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._values = {key.lower(): value for key, value in headers.items()}

    def get(self, name: str) -> str | None:
        return self._values.get(name)


class _Preferences:
    """The ``Prefer`` header: return, count and resolution; unknown preferences are ignored (lenient)."""

    def __init__(self, header: str | None) -> None:
        values: dict[str, str] = {}
        for item in (header or "").split(","):
            key, _, value = item.strip().partition("=")
            if key:
                values[key.strip().lower()] = value.strip().lower()
        self.representation = values.get("return") == "representation"
        # planned and estimated counts come from the planner in PostgREST; exact is always right.
        self.count_exact = values.get("count") in ("exact", "planned", "estimated")
        resolution = values.get("resolution")
        self.resolution: Resolution | None = (
            cast(Resolution, resolution) if resolution in ("merge-duplicates", "ignore-duplicates") else None
        )


def parse_request(
    catalogue: Catalogue,
    *,
    method: str,
    relation: str,
    query: QueryString,
    headers: Mapping[str, str],
    body: bytes = b"",
    max_rows: int | None = None,
) -> Query:
    """Parse ``METHOD /rest/v1/<relation>?<query>``; raises ``PostgrestError`` as PostgREST would."""
    table = catalogue.relation(relation)
    parameters = _query_pairs(query)
    request_headers = _Headers(headers)
    preferences = _Preferences(request_headers.get("prefer"))
    verb = method.upper()
    media, strip_nulls = negotiate_nulls(
        request_headers.get("accept"), _READ_MEDIA if verb in ("GET", "HEAD") else _WRITE_MEDIA
    )
    singular = media == "singular"
    returning = _parse_select(table, _last(parameters, "select"))
    if verb in ("GET", "HEAD"):
        read = _parse_read(
            table, parameters, request_headers, preferences, max_rows, singular=singular, head=verb == "HEAD"
        )
        return dataclasses.replace(read, csv=media == "csv", strip_nulls=strip_nulls)
    if verb == "POST":
        return InsertQuery(
            relation=table.name,
            rows=_parse_insert_body(table, body, _last(parameters, "columns")),
            returning=returning,
            representation=preferences.representation,
            count_exact=preferences.count_exact,
            singular=singular,
            resolution=preferences.resolution,
            on_conflict=_parse_column_list(table, _last(parameters, "on_conflict"), "on_conflict parameter"),
        )
    if verb in ("PATCH", "DELETE"):
        where = _parse_where(table, parameters)
        if not where.children:
            raise ambiguous_or_missing_filter(verb)
        for refused in ("limit", "offset"):
            if _last(parameters, refused) is not None:
                raise PostgrestError(
                    400, "PGRST100", f"{refused} is not supported on {verb}; narrow the rows with filters"
                )
        if verb == "DELETE":
            return DeleteQuery(
                relation=table.name,
                where=where,
                returning=returning,
                representation=preferences.representation,
                count_exact=preferences.count_exact,
                singular=singular,
            )
        columns, values_json = _parse_update_body(table, body)
        return UpdateQuery(
            relation=table.name,
            columns=columns,
            values_json=values_json,
            where=where,
            returning=returning,
            representation=preferences.representation,
            count_exact=preferences.count_exact,
            singular=singular,
        )
    raise PostgrestError(405, "PGRST117", f"Unsupported HTTP method: {method}")


def parse_rpc(
    catalogue: Catalogue,
    *,
    method: str,
    function: str,
    query: QueryString,
    headers: Mapping[str, str],
    body: bytes = b"",
    max_rows: int | None = None,
) -> ReadQuery:
    """Parse ``POST|GET /rest/v1/rpc/<function>``: arguments from the JSON body (POST) or the query (GET);
    the function's rows can be filtered, selected, ordered and paged like a table's."""
    parameters = _query_pairs(query)
    verb = method.upper()
    if verb == "POST":
        decoded = _decode_json(body) if body.strip() else {}
        if not isinstance(decoded, dict):
            raise bad_json("An RPC body must be a JSON object of named arguments")
        raw_arguments: dict[str, Any] = decoded
    elif verb in ("GET", "HEAD"):
        found = catalogue.functions.get(function)
        names = {parameter.name for parameter in found.parameters} if found else set()
        raw_arguments = {key: value for key, value in parameters if key in names}
    else:
        raise PostgrestError(405, "PGRST101", "Only GET and POST are allowed for functions")
    target = catalogue.function(function, list(raw_arguments))
    types = {parameter.name: parameter.sql_type for parameter in target.parameters}
    arguments = tuple(
        Argument(name, _argument_text(value, types[name].endswith("[]")), types[name])
        for name, value in raw_arguments.items()
    )
    # An RPC's rows are read like a relation whose columns are the function's output columns.
    relation = Relation(catalogue.schema, target.name, target.columns)
    request_headers = _Headers(headers)
    media, strip_nulls = negotiate_nulls(request_headers.get("accept"), _READ_MEDIA)
    read = _parse_read(
        relation,
        [(key, value) for key, value in parameters if verb == "POST" or key not in raw_arguments],
        request_headers,
        _Preferences(request_headers.get("prefer")),
        max_rows,
        singular=media == "singular",
        head=verb == "HEAD",
    )
    return dataclasses.replace(read, arguments=arguments, csv=media == "csv", strip_nulls=strip_nulls)


def _parse_read(
    table: Relation,
    parameters: list[tuple[str, str]],
    headers: _Headers,
    preferences: _Preferences,
    max_rows: int | None,
    *,
    singular: bool,
    head: bool,
) -> ReadQuery:
    offset = _parse_integer("offset", _last(parameters, "offset")) or 0
    limit = _parse_integer("limit", _last(parameters, "limit"))
    # The Range header and limit/offset both narrow the rows; the result is their intersection.
    range_start, range_end = _parse_range(headers)
    start = max(offset, range_start)
    ends = [end for end in (range_end, None if limit is None else offset + limit - 1) if end is not None]
    if max_rows is not None:
        ends.append(start + max_rows - 1)
    end = min(ends) if ends else None
    return ReadQuery(
        relation=table.name,
        select=_parse_select(table, _last(parameters, "select")),
        where=_parse_where(table, parameters),
        order=_parse_order(table, _last(parameters, "order")),
        offset=start,
        limit=None if end is None else max(end - start + 1, 0),
        count_exact=preferences.count_exact,
        singular=singular,
        head=head,
    )


# --- query string -----------------------------------------------------------------------------------


def _query_pairs(query: QueryString) -> list[tuple[str, str]]:
    if isinstance(query, str):
        return parse_qsl(query.lstrip("?"), keep_blank_values=True)
    return list(query)


def _last(parameters: list[tuple[str, str]], key: str) -> str | None:
    values = [value for name, value in parameters if name == key]
    return values[-1] if values else None


def _parse_integer(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    # isdigit() alone also takes "²" and other digits int() refuses (or reads: "٣"); PostgREST takes 0-9 only.
    if not (text.isascii() and text.isdigit()):
        raise parse_error(f"{name} parameter", text, 1, f'unexpected "{text[:1]}" expecting digit')
    return int(text)


def _parse_range(headers: _Headers) -> tuple[int, int | None]:
    """``Range: 0-9`` (``Range-Unit: items``); a malformed header is ignored, as PostgREST does."""
    header = headers.get("range")
    if header is None:
        return 0, None
    match = re.fullmatch(r"\s*(?:items=)?([0-9]+)-([0-9]*)\s*", header)  # not \d, which takes "٣" too
    if match is None:
        return 0, None
    start = int(match[1])
    end = int(match[2]) if match[2] else None
    if end is not None and end < start:
        raise PostgrestError(416, "PGRST103", "Requested range not satisfiable", details=f"Range {header}")
    return start, end


# --- select, order, columns -------------------------------------------------------------------------


def _parse_select(table: Relation, text: str | None) -> tuple[SelectItem, ...]:
    if text is None or text.strip() in ("", "*"):
        return tuple(SelectItem(name) for name in table.columns)
    items: list[SelectItem] = []
    for entry in _split_top_level(text, "select parameter"):
        item = entry.strip()
        if item == "*":
            items.extend(SelectItem(name) for name in table.columns)
            continue
        at = text.find(item)
        parenthesis = _find_unquoted(item, "(")
        if parenthesis >= 0:
            embedded = item[:parenthesis].lstrip(".")
            raise unknown_relationship(table.name, _unquote(embedded.split("!")[0]))
        colon = _find_alias_separator(item)
        alias, column = ("", item) if colon < 0 else (item[:colon], item[colon + 1 :])
        if alias.strip().startswith('"'):
            alias = _field_name(alias, "select parameter", text, at)
        elif alias and not _NAME.match(alias):
            raise parse_error("select parameter", text, at + 1, f"invalid alias {alias!r}")
        items.append(_parse_select_field(table, column, text, at + colon + 1, alias or None))
    return tuple(items)


def _parse_select_field(table: Relation, token: str, context: str, offset: int, alias: str | None) -> SelectItem:
    """``column[->key...][::type]`` of one select entry (the alias already taken off)."""
    stripped = token.strip()
    start = offset + len(token) - len(token.lstrip())
    column, path, end = _read_field(stripped, 0, "", "select parameter", context, start)
    cast = None
    if stripped.startswith("::", end):
        cast = _cast_type(stripped[end + 2 :])
    elif end != len(stripped):
        found = stripped[end]
        raise parse_error(
            "select parameter",
            context,
            start + end + 1,
            f'unexpected "{found}" expecting "->", "::", "," or end of input',
        )
    _check_field(table, column, path)
    return SelectItem(column, alias, path, cast)


def _parse_column_list(table: Relation, text: str | None, what: str) -> tuple[str, ...]:
    """``columns`` or ``on_conflict``: names separated by commas, each bare or double-quoted."""
    if text is None:
        return ()
    names = tuple(
        _field_name(part.strip(), what, text, start + len(part) - len(part.lstrip()))
        for start, part in _split_outside_quotes(text)
        if part.strip()
    )
    for name in names:
        if name not in table.columns:
            raise unknown_body_column(table.name, name)
    return names


def _parse_order(table: Relation, text: str | None) -> tuple[OrderTerm, ...]:
    """``order=col.desc.nullslast,col2``, scanned character by character so errors point where PostgREST's do."""
    if text is None or text == "":
        return ()
    terms: list[OrderTerm] = []
    position = 0

    def fail(at: int, expected: str) -> PostgrestError:
        found = f'"{text[at]}"' if at < len(text) else "end of input"
        return parse_error("order", text, at + 1, f"unexpected {found} expecting {expected}")

    while True:
        if position == len(text) or text[position] in ".,":
            raise fail(position, "field name (* or [a..z0..9_$])")
        column, path, position = _read_field(text, position, ".,", "order", text, 0)
        descending = False
        nulls_first: bool | None = None
        seen_direction = False
        while position < len(text) and text[position] == ".":
            # Longest keywords first, as PostgREST's parser tries them; what follows a keyword is checked
            # afterwards, so "nullslasttt" fails at its first "t" like PostgREST's does.
            word = next((w for w in _ORDER_KEYWORDS if text.startswith(w, position + 1)), None)
            misplaced = word in ("asc", "desc") and (seen_direction or nulls_first is not None)
            if word is None or misplaced or (word.startswith("nulls") and nulls_first is not None):
                raise fail(position + 1, '"asc", "desc", "nullsfirst" or "nullslast"')
            position += 1 + len(word)
            if word in ("asc", "desc"):
                seen_direction = True
                descending = word == "desc"
            else:
                nulls_first = word == "nullsfirst"
        _check_field(table, column, path)
        terms.append(OrderTerm(column, descending, nulls_first, path))
        if position == len(text):
            return tuple(terms)
        if text[position] != ",":
            raise fail(position, '"," or end of input')
        position += 1


# --- filters and logic trees ------------------------------------------------------------------------


def _parse_where(table: Relation, parameters: list[tuple[str, str]]) -> Condition:
    children: list[Filter | Condition] = []
    for key, value in parameters:
        if key in _RESERVED:
            continue
        if key in _LOGIC_KEYS:
            conjunction, negated = _LOGIC_KEYS[key]
            children.append(_parse_tree(table, conjunction, negated, value))
            continue
        column, path = _filter_key(table, key)
        negated, operator, operand, end = _read_operation(value, 0, value, in_tree=False)
        if end != len(value):
            raise parse_error("filter", value, end + 1, f'unexpected "{value[end]}" expecting end of input')
        children.append(Filter(column, operator, operand, negated, path))
    return Condition("and", tuple(children))


def _filter_key(table: Relation, key: str) -> tuple[str, JsonPath]:
    """The column (and JSON path) a filter's key names. Text left after it is an embedding path (``"soe".x``),
    which no column matches."""
    column, path, end = _read_field(key, 0, "", "tree path", key, 0)
    if end != len(key):
        raise unknown_column(table.name, key)
    _check_field(table, column, path)
    return column, path


def _read_operation(
    text: str, position: int, context: str, *, in_tree: bool
) -> tuple[bool, str, str | tuple[str, ...], int]:
    """``[not.]operator.value`` from ``text[position]``: negated, operator, value and the index after the value.

    A value runs to the end of ``text``, or in a logic tree to the next ``,`` or ``)`` unless double-quoted; an
    ``in`` list is parenthesised. As in PostgREST, a ``"`` that does not open a whole quoted value is an ordinary
    character (postgrest-js quotes only values holding ``,()``, and never escapes a ``"``)."""
    negated = text.startswith("not.", position)
    if negated:
        position += 4
    dot = text.find(".", position)
    operator = text[position:dot] if dot >= 0 else text[position:]
    if dot < 0 or (operator not in OPERATORS and operator not in ("like", "ilike", "in", "is")):
        found = operator[:1] or text[position : position + 1]
        raise parse_error(
            "filter",
            context,
            1,
            f'unexpected "{found}" expecting "not" or operator (eq, neq, gt, gte, lt, lte, like, ilike, in, is)',
        )
    position = dot + 1
    if operator == "in":
        if not text.startswith("(", position):
            raise parse_error("filter", context, 1, 'expecting "(" after in.')
        values, position = _read_list(text, position, context)
        return negated, operator, values, position
    if in_tree:
        value, position = _read_tree_value(text, position)
    else:
        value, position = text[position:], len(text)
    if operator == "is":
        keyword = value.strip().lower()  # PostgREST skips blanks around a tree's "," and ")"
        if keyword not in _IS_VALUES:
            raise parse_error("filter", context, 1, 'expecting "null", "not_null", "true", "false" or "unknown"')
        return negated, operator, keyword, position
    if operator in ("like", "ilike"):
        value = value.replace("*", "%")
    return negated, operator, value, position


def _read_list(text: str, position: int, context: str) -> tuple[tuple[str, ...], int]:
    """``(a,"b,c",d"e)`` from ``text[position]`` (an opening parenthesis): the values and the index after ``)``."""
    position = _skip_blanks(text, position + 1)
    if text.startswith(")", position):
        return (), position + 1
    values: list[str] = []
    while True:
        quoted = _quoted_value(text, position)
        if quoted is not None:
            value, position = quoted
        else:
            end = _unquoted_end(text, position)
            value, position = text[position:end].strip(), end
        values.append(value)
        if position == len(text):
            raise parse_error("filter", context, position + 1, 'unexpected end of input expecting "," or ")"')
        if text[position] == ")":
            return tuple(values), position + 1
        position += 1  # the comma: an unquoted value stops only at "," or ")"


def _read_tree_value(text: str, position: int) -> tuple[str, int]:
    """One value in a logic tree: double-quoted, a ``{...}`` array literal (commas inside kept), or the text up to
    the next ``,`` or ``)``."""
    quoted = _quoted_value(text, position)
    if quoted is not None:
        return quoted
    if text.startswith("{", position):
        close = text.find("}", position)
        if close >= 0 and "{" not in text[position + 1 : close]:
            return text[position : close + 1], close + 1
    end = _unquoted_end(text, position)
    return text[position:end], end


def _quoted_value(text: str, position: int) -> tuple[str, int] | None:
    """The double-quoted value at ``text[position]`` (escapes undone) and the index after it, when it closes and
    ``,``, ``)`` or the end follows, as PostgREST reads one; otherwise None and the quote is part of the value."""
    if not text.startswith('"', position):
        return None
    quoted = _read_quoted(text, position)
    if quoted is None or (quoted[1] < len(text) and text[quoted[1]] not in ",)"):
        return None
    return quoted


def _unquoted_end(text: str, position: int) -> int:
    end = position
    while end < len(text) and text[end] not in ",)":
        end += 1
    return end


def _skip_blanks(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t":
        position += 1
    return position


_NESTED_TREE = re.compile(r"(?:not\.)?(and|or)=?\(")


def _parse_tree(table: Relation, conjunction: Literal["and", "or"], negated: bool, text: str) -> Condition:
    """``(child,...)``: a child is ``column[->path].[not.]op.value`` or a nested ``[not.]and(...)``/``or(...)``."""
    if not (text.startswith("(") and text.endswith(")")):
        raise parse_error("logic tree", text, 1, 'expecting "("')
    children, end = _read_tree(table, text, 0)
    if end != len(text):
        raise parse_error("logic tree", text, end + 1, f'unexpected "{text[end]}" expecting end of input')
    return Condition(conjunction, children, negated)


def _read_tree(table: Relation, text: str, position: int) -> tuple[tuple[Filter | Condition, ...], int]:
    """The children of the tree whose ``(`` is at ``text[position]``, and the index after its ``)``."""
    children: list[Filter | Condition] = []
    position += 1
    while True:
        position = _skip_blanks(text, position)
        child, position = _read_tree_child(table, text, position)
        children.append(child)
        position = _skip_blanks(text, position)
        if position == len(text):
            raise parse_error("logic tree", text, position + 1, 'unexpected end of input expecting "," or ")"')
        if text[position] == ")":
            return tuple(children), position + 1
        if text[position] != ",":
            raise parse_error("logic tree", text, position + 1, f'unexpected "{text[position]}" expecting "," or ")"')
        position += 1


def _read_tree_child(table: Relation, text: str, position: int) -> tuple[Filter | Condition, int]:
    # Flux's API page writes nested trees as "or=(...)"; PostgREST writes "or(...)". Both are accepted.
    nested = _NESTED_TREE.match(text, position)
    if nested is not None:
        children, end = _read_tree(table, text, nested.end() - 1)
        conjunction = cast(Literal["and", "or"], nested[1])
        return Condition(conjunction, children, text.startswith("not.", position)), end
    if position == len(text) or text[position] in ",)":
        raise parse_error("logic tree", text, position + 1, "unexpected empty condition, expecting a filter")
    column, path, position = _read_field(text, position, ".,()", "logic tree", text, 0)
    if not text.startswith(".", position):
        found = f'"{text[position]}"' if position < len(text) else "end of input"
        raise parse_error("logic tree", text, position + 1, f'unexpected {found} after a field, expecting "."')
    _check_field(table, column, path)
    negated, operator, value, position = _read_operation(text, position + 1, text, in_tree=True)
    return Filter(column, operator, value, negated, path), position


# --- names, JSON paths and casts ----------------------------------------------------------------------

_INDEX = re.compile(r"-?[0-9]+")
_JSON_TYPES = ("json", "jsonb")


def _read_field(
    text: str, position: int, stops: str, what: str, context: str, offset: int
) -> tuple[str, JsonPath, int]:
    """``column[->key|->>key|->index...]`` from ``text[position]``: each name bare (up to a character of ``stops``,
    ``->`` or ``::``) or double-quoted; returns the column, the path and the index after them. ``offset`` places
    ``text`` within ``context`` for errors."""
    column, _, position = _read_name(text, position, stops, what, context, offset)
    steps: list[JsonStep] = []
    while text.startswith("->", position):
        arrow: Literal["->", "->>"] = "->>" if text.startswith("->>", position) else "->"
        position += len(arrow)
        key, quoted, position = _read_name(text, position, stops, what, context, offset)
        if not key and not quoted:
            raise parse_error(what, context, offset + position + 1, f'expecting a JSON key or index after "{arrow}"')
        index = None
        if not quoted and _INDEX.fullmatch(key):
            if len(key.lstrip("-")) > 9:
                raise parse_error(what, context, offset + position + 1, f"JSON array index {key} out of range")
            index = int(key)
        if "\x00" in key:
            raise parse_error(what, context, offset + position + 1, "a JSON key cannot hold a NUL character")
        steps.append(JsonStep(arrow, key, index))
    return column, tuple(steps), position


def _read_name(text: str, position: int, stops: str, what: str, context: str, offset: int) -> tuple[str, bool, int]:
    """A bare (stripped) or double-quoted name at ``text[position]``: the name, whether quoted, the index after it."""
    if text.startswith('"', position):
        quoted = _read_quoted(text, position)
        if quoted is None:
            raise parse_error(
                what, context, offset + len(text) + 1, f"unexpected end of input expecting {_CLOSING_QUOTE}"
            )
        return quoted[0], True, quoted[1]
    end = position
    while end < len(text) and text[end] not in stops and not text.startswith(("->", "::"), end):
        end += 1
    return text[position:end].strip(), False, end


def _check_field(table: Relation, column: str, path: JsonPath) -> None:
    """The column must exist; a JSON path needs a json or jsonb column."""
    if column not in table.columns:
        raise unknown_column(table.name, column)
    sql_type = table.columns[column].sql_type
    if path and sql_type not in _JSON_TYPES:
        raise json_path_on_non_json(table.name, column, sql_type, path[0].arrow)


def _cast_type(text: str) -> str:
    """The SQL type of ``::type`` in select, from the allow-list (names are case-insensitive, spaces collapsed)."""
    name = " ".join(text.split()).lower()
    if not name:
        raise parse_error("select parameter", text, 1, 'unexpected end of input after "::", expecting a type')
    found = CAST_TYPES.get(name)
    if found is None:
        raise PostgrestError(
            400,
            "42704",
            f'type "{text.strip()}" does not exist',
            hint=f"A select may cast to: {', '.join(sorted(CAST_TYPES))}",
        )
    return found


def _find_alias_separator(text: str) -> int:
    """The index of the ``:`` of ``alias:column`` (outside double quotes, not part of a ``::`` cast), or -1."""
    quoted = escaped = False
    for index, character in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif not quoted and character == ":":
            if text.startswith("::", index) or (index > 0 and text[index - 1] == ":"):
                continue
            return index
    return -1


def _split_top_level(text: str, what: str, context: str | None = None, offset: int = 0) -> list[str]:
    """Split on commas outside parentheses and double quotes; ``offset`` places ``text`` within ``context``."""
    parts: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    current: list[str] = []
    for character in text:
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif not quoted and character == "(":
            depth += 1
        elif not quoted and character == ")":
            depth -= 1
            if depth < 0:
                consumed = sum(len(part) + 1 for part in parts) + len(current)
                raise parse_error(what, context or text, offset + consumed + 1, 'unexpected ")"')
        elif not quoted and depth == 0 and character == ",":
            parts.append("".join(current))
            current = []
            continue
        current.append(character)
    if quoted or depth != 0:
        raise parse_error(
            what, context or text, offset + len(text) + 1, 'unexpected end of input expecting ")" or "\\""'
        )
    parts.append("".join(current))
    return parts


def _read_quoted(text: str, start: int) -> tuple[str, int] | None:
    """The double-quoted name at ``text[start]`` and the index after its closing quote, or None if it never
    closes. As in PostgREST, a backslash makes the next character literal (``\\"`` is a quote)."""
    characters: list[str] = []
    position = start + 1
    while position < len(text):
        character = text[position]
        if character == '"':
            return "".join(characters), position + 1
        if character == "\\":
            position += 1
            if position == len(text):
                return None
            character = text[position]
        characters.append(character)
        position += 1
    return None


def _field_name(token: str, what: str, context: str, offset: int) -> str:
    """A name that fills ``token``: double-quoted (escapes undone, inner spaces kept; spaces around it are
    skipped) or bare (returned as it is). ``offset`` places ``token`` within ``context`` for errors."""
    stripped = token.strip()
    if not stripped.startswith('"'):
        return token
    start = offset + len(token) - len(token.lstrip())
    quoted = _read_quoted(stripped, 0)
    if quoted is None:
        raise parse_error(
            what, context, start + len(stripped) + 1, f"unexpected end of input expecting {_CLOSING_QUOTE}"
        )
    name, end = quoted
    if end != len(stripped):
        raise parse_error(
            what,
            context,
            start + end + 1,
            f'unexpected "{stripped[end]}" after a quoted name, expecting "," or end of input',
        )
    return name


def _find_unquoted(text: str, wanted: str) -> int:
    """The index of the first ``wanted`` outside double quotes, or -1."""
    quoted = escaped = False
    for index, character in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif not quoted and character == wanted:
            return index
    return -1


def _split_outside_quotes(text: str) -> list[tuple[int, str]]:
    """``text`` split on commas outside double quotes, each part with its offset in ``text``."""
    parts: list[tuple[int, str]] = []
    start = 0
    while (comma := _find_unquoted(text[start:], ",")) >= 0:
        parts.append((start, text[start : start + comma]))
        start += comma + 1
    parts.append((start, text[start:]))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


# --- bodies -----------------------------------------------------------------------------------------


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_json(str(error)) from error


def _parse_insert_body(table: Relation, body: bytes, columns_parameter: str | None) -> InsertRows:
    decoded = _decode_json(body)
    rows = [decoded] if isinstance(decoded, dict) else decoded
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise bad_json("The body must be a JSON object or an array of objects")
    chosen = _parse_column_list(table, columns_parameter, "columns parameter") or None
    # One statement over the union of the rows' keys (in table order), however many rows and key sets: a key a
    # row leaves out takes the column's default (id, created_at) instead of null, decided in SQL per row.
    present: dict[str, int] = {}
    kept: list[dict[str, Any]] = []
    for row in cast(list[dict[str, Any]], rows):
        if chosen is None:
            for key in row:
                if key not in table.columns:
                    raise unknown_body_column(table.name, key)
        kept_row = {key: value for key, value in row.items() if chosen is None or key in chosen}
        for key in kept_row:
            present[key] = present.get(key, 0) + 1
        kept.append(kept_row)
    columns = tuple(name for name in table.columns if name in present)
    partial = tuple(name for name in columns if present[name] < len(kept))
    return InsertRows(columns, json.dumps(kept), len(kept), partial)


def _parse_update_body(table: Relation, body: bytes) -> tuple[tuple[str, ...], str]:
    decoded = _decode_json(body)
    if not isinstance(decoded, dict):
        raise bad_json("A PATCH body must be a JSON object")
    for key in decoded:
        if key not in table.columns:
            raise unknown_body_column(table.name, key)
    columns = tuple(name for name in table.columns if name in decoded)
    return columns, json.dumps({name: decoded[name] for name in columns})


def _argument_text(value: Any, is_array: bool) -> str | list[str | None] | None:
    """An RPC argument as text for a ``::text::type`` cast (a list of texts for array parameters)."""
    if value is None:
        return None
    if is_array and isinstance(value, list):
        return [None if item is None else _scalar_text(item) for item in value]
    return _scalar_text(value)


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)
