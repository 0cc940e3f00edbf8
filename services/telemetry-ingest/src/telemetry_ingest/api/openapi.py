"""The OpenAPI 3 description served at `GET /rest/v1/`, generated from the catalogue as PostgREST's root is."""

from __future__ import annotations

from typing import Any

from telemetry_ingest.api.postgrest import Catalogue, Column, Function, Relation

__all__ = ["OPENAPI_CONTENT_TYPE", "build_openapi"]

OPENAPI_CONTENT_TYPE = "application/openapi+json; charset=utf-8"
_JSON = "application/json"
_SINGULAR = "application/vnd.pgrst.object+json"
_CSV = "text/csv"

_INTEGER_BOUNDS = {
    "smallint": (-32768, 32767),
    "integer": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
}
_NUMBER_TYPES = {"real", "double precision", "numeric"}
_TEXT_TYPES = {"text", "character varying", "character", "name"}


def _value_schema(sql_type: str) -> dict[str, Any]:
    """A JSON schema for values of a PostgreSQL type, as PostgreSQL's JSON output renders them."""
    if sql_type.endswith("[]"):
        return {"type": "array", "items": _value_schema(sql_type[:-2])}
    base = sql_type.rsplit(".", 1)[-1].strip('"')
    if base in _INTEGER_BOUNDS:
        minimum, maximum = _INTEGER_BOUNDS[base]
        return {"type": "integer", "minimum": minimum, "maximum": maximum}
    if base in _NUMBER_TYPES:
        return {"type": "number"}
    if base == "boolean":
        return {"type": "boolean"}
    if base == "uuid":
        return {"type": "string", "format": "uuid"}
    if base == "timestamp with time zone":
        return {"type": "string", "format": "date-time"}
    if base == "date":
        return {"type": "string", "format": "date"}
    if base in ("json", "jsonb"):
        return {}
    if base in _TEXT_TYPES:
        return {"type": "string"}
    if "." in sql_type:
        return {}  # a user-defined type: a composite renders as an object, an enum as a string
    return {"type": "string"}  # other built-in types (interval, time, bytea...) render as strings


def _column_schema(column: Column, *, nullable: bool) -> dict[str, Any]:
    schema = {**_value_schema(column.sql_type), "description": f"{column.sql_type}"}
    if nullable and "type" in schema:
        schema["nullable"] = True
    return schema


def _row_schema(columns: dict[str, Column] | Any, *, primary_key: tuple[str, ...] = ()) -> dict[str, Any]:
    """A row as the API returns it: any subset of the columns (``select``), renamed ones allowed."""
    properties = {}
    for name, column in columns.items():
        schema = _column_schema(column, nullable=column.nullable)
        if name in primary_key:
            schema["description"] += " (primary key)"
        properties[name] = schema
    return {"type": "object", "properties": properties}


def _insert_schema(relation: Relation) -> dict[str, Any]:
    """A row to insert: the NOT NULL columns without a default are required; unknown keys are refused."""
    required = [name for name, column in relation.columns.items() if not column.nullable and not column.has_default]
    return {
        "type": "object",
        "properties": {
            name: _column_schema(column, nullable=column.nullable) for name, column in relation.columns.items()
        },
        "required": required,
        "additionalProperties": False,
    }


def _update_schema(relation: Relation) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            name: _column_schema(column, nullable=column.nullable) for name, column in relation.columns.items()
        },
        "additionalProperties": False,
    }


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


_ERRORS = {
    "400": _error_response("Bad request: a filter, select, order or body PostgREST would refuse (PGRST1xx, 22P02...)"),
    "401": _error_response("Missing or invalid API key (PGRST301-303), or anon lacking a privilege (42501)"),
    "403": _error_response("The key's role lacks the privilege (42501)"),
    "404": _error_response("Unknown table or function (PGRST205, PGRST202)"),
    "406": _error_response(
        "Schema not exposed (PGRST106), Accept names no type offered (PGRST107: reads offer application/json, "
        "application/vnd.pgrst.object+json and text/csv), or singular object not exactly one row (PGRST116)"
    ),
    "409": _error_response("Duplicate key or foreign-key violation (23505, 23503)"),
    "413": _error_response("Body too large"),
    "416": _error_response("Range not satisfiable (PGRST103)"),
    "429": _error_response("Rate limit of the key's tier exceeded"),
    "default": _error_response("Any other error, PostgREST-shaped"),
}


def _rows_response(description: str, schema_name: str, *, csv: bool = False) -> dict[str, Any]:
    """The rows as JSON, one row as an object (vnd.pgrst.object), and for reads CSV (a header row, then the rows)."""
    rows = {"type": "array", "items": {"$ref": f"#/components/schemas/{schema_name}"}}
    content: dict[str, Any] = {
        _JSON: {"schema": rows},
        _SINGULAR: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}},
    }
    if csv:
        content[_CSV] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


def _empty(description: str) -> dict[str, Any]:
    return {"description": description}


def _reference(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


# The filter grammar in brief (values restricted to characters that need no quoting); the API accepts
# more (quoted values, nested or/and), this pattern is what generated and documented examples follow.
_FILTER_PATTERN = (
    r"^(not\.)?((eq|neq|gt|gte|lt|lte|like|ilike)\.[A-Za-z0-9:.+*_-]{0,36}"
    r"|in\.\([A-Za-z0-9:.+_-]{0,36}(,[A-Za-z0-9:.+_-]{0,36}){0,3}\)"
    r"|is\.(null|not_null|true|false|unknown))$"
)


def _filter_parameters(schema_name: str, columns: dict[str, Column] | Any) -> list[dict[str, Any]]:
    """One optional query parameter per column: ``column=[not.]operator.value`` as PostgREST documents it."""
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": f"Filter on {schema_name}.{name} ({column.sql_type}), e.g. eq.value, in.(a,b), is.null",
            "schema": {"type": "string", "pattern": _FILTER_PATTERN},
        }
        for name, column in columns.items()
    ]


_READ_PARAMETERS = ["select", "order", "limit", "offset", "range", "rangeUnit", "preferCount", "or", "and"]


def _table_path(relation: Relation) -> dict[str, Any]:
    name = relation.name
    filters = _filter_parameters(name, relation.columns)
    read = [*filters, *(_reference(parameter) for parameter in _READ_PARAMETERS), _reference("acceptProfile")]
    where = [*filters, _reference("or"), _reference("and"), _reference("select")]
    mutation_headers = [_reference("preferReturn"), _reference("contentProfile")]
    return {
        "get": {
            "tags": [name],
            "summary": f"Read rows of {name}",
            "parameters": read,
            "responses": {
                "200": _rows_response("The rows", name, csv=True),
                "206": _rows_response("Part of the rows (Range or limit with count)", name, csv=True),
                **_ERRORS,
            },
        },
        "head": {
            "tags": [name],
            "summary": f"Count rows of {name} (headers only)",
            "parameters": read,
            "responses": {"200": _empty("Headers only"), "206": _empty("Headers only"), **_ERRORS},
        },
        "post": {
            "tags": [name],
            "summary": f"Insert one row or many into {name}; upsert with Prefer: resolution=...",
            "parameters": [
                _reference("select"),
                _reference("columns"),
                _reference("onConflict"),
                _reference("preferInsert"),
                _reference("contentProfile"),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {
                        "schema": {
                            "oneOf": [
                                {"$ref": f"#/components/schemas/{name}.insert"},
                                {"type": "array", "items": {"$ref": f"#/components/schemas/{name}.insert"}},
                            ]
                        }
                    }
                },
            },
            "responses": {
                # One status for both bodies: none by default (return=minimal), the rows as JSON with
                # return=representation; OpenAPI cannot make content optional, so none is declared.
                "201": _empty(
                    f"Created; the inserted rows (as in components/schemas/{name}) with return=representation"
                ),
                **_ERRORS,
            },
        },
        "patch": {
            "tags": [name],
            "summary": f"Update the rows of {name} the filters select (at least one filter is required)",
            "parameters": [*where, *mutation_headers],
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{name}.update"}}},
            },
            "responses": {
                "200": _rows_response("The updated rows (Prefer: return=representation)", name),
                "204": _empty("Updated"),
                **_ERRORS,
            },
        },
        "delete": {
            "tags": [name],
            "summary": f"Delete the rows of {name} the filters select (at least one filter is required)",
            "parameters": [*where, *mutation_headers],
            "responses": {
                "200": _rows_response("The deleted rows (Prefer: return=representation)", name),
                "204": _empty("Deleted"),
                **_ERRORS,
            },
        },
    }


def _function_path(function: Function) -> dict[str, Any]:
    name = function.name
    arguments = {
        parameter.name: {**_value_schema(parameter.sql_type), "nullable": True} for parameter in function.parameters
    }
    required = [parameter.name for parameter in function.parameters if not parameter.has_default]
    body_schema: dict[str, Any] = {"type": "object", "properties": arguments, "additionalProperties": False}
    if required:
        body_schema["required"] = required
    query_arguments = [
        {
            "name": parameter.name,
            "in": "query",
            "required": not parameter.has_default,
            "description": f"Argument {parameter.name} ({parameter.sql_type}); arrays as {{a,b}}",
            "schema": {"type": "string"},
        }
        for parameter in function.parameters
    ]
    result_filters = _filter_parameters(name, function.columns)
    paging = [_reference(parameter) for parameter in ("select", "order", "limit", "offset", "preferCount")]
    responses = {"200": _rows_response("The function's rows", f"rpc.{name}", csv=True), **_ERRORS}
    return {
        "get": {
            "tags": ["rpc"],
            "summary": f"Call {name} read-only with arguments in the query string",
            "parameters": [*query_arguments, *paging, _reference("acceptProfile")],
            "responses": responses,
        },
        "post": {
            "tags": ["rpc"],
            "summary": f"Call {name} with named arguments in a JSON object; filter its rows like a table's",
            "parameters": [*result_filters, *paging, _reference("contentProfile")],
            "requestBody": {"required": True, "content": {_JSON: {"schema": body_schema}}},
            "responses": responses,
        },
    }


def _shared_parameters(schema: str) -> dict[str, Any]:
    def query(name: str, description: str, **schema_extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": {"type": "string", **schema_extra},
        }

    def header(name: str, description: str, **schema_extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "in": "header",
            "required": False,
            "description": description,
            "schema": {"type": "string", **schema_extra},
        }

    return {
        "select": query(
            "select", "Columns to return: [alias:]column[->key|->>key...][::type], e.g. max:metadata->>max_power_kw"
        ),
        "order": query("order", "Ordering: column[->>key][.asc|.desc][.nullsfirst|.nullslast],..."),
        "limit": query("limit", "At most this many rows", pattern="^[0-9]{1,6}$"),
        "offset": query("offset", "Skip this many rows", pattern="^[0-9]{1,6}$"),
        "or": query("or", "Any of the conditions: (column.op.value,and(...),...)"),
        "and": query("and", "All of the conditions: (column.op.value,or(...),...)"),
        "columns": query("columns", "Only these keys of the body are inserted"),
        "onConflict": query("on_conflict", "Unique columns an upsert (Prefer: resolution=...) conflicts on"),
        "range": header("Range", "Rows first-last (zero-based), e.g. 0-24", pattern="^[0-9]{1,6}-[0-9]{0,6}$"),
        "rangeUnit": header("Range-Unit", "Always items", enum=["items"]),
        "preferCount": header("Prefer", "Count the rows in Content-Range", enum=["count=exact", "count=none"]),
        "preferReturn": header(
            "Prefer", "Return the affected rows or nothing", enum=["return=representation", "return=minimal"]
        ),
        "preferInsert": header(
            "Prefer",
            "Return the rows or nothing; resolve duplicates (upsert)",
            enum=[
                "return=representation",
                "return=minimal",
                "return=representation,resolution=merge-duplicates",
                "return=representation,resolution=ignore-duplicates",
                "return=minimal,resolution=merge-duplicates",
            ],
        ),
        "acceptProfile": header("Accept-Profile", "The schema to read from", enum=[schema]),
        "contentProfile": header("Content-Profile", "The schema to write to", enum=[schema]),
    }


def build_openapi(catalogue: Catalogue, *, server_url: str = "/rest/v1", version: str = "1") -> dict[str, Any]:
    """The description of every table (columns, filters, methods) and function of the exposed schema."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "description": "PostgREST's error body",
            "properties": {
                "code": {"type": "string"},
                "details": {"type": "string", "nullable": True},
                "hint": {"type": "string", "nullable": True},
                "message": {"type": "string"},
            },
            "required": ["code", "details", "hint", "message"],
        }
    }
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "tags": ["introspection"],
                "summary": "This description",
                "responses": {
                    "200": {"description": "OpenAPI 3 description", "content": {"application/openapi+json": {}}},
                    **_ERRORS,
                },
            }
        }
    }
    for name in sorted(catalogue.tables):
        relation = catalogue.tables[name]
        schemas[name] = _row_schema(relation.columns, primary_key=relation.primary_key)
        schemas[f"{name}.insert"] = _insert_schema(relation)
        schemas[f"{name}.update"] = _update_schema(relation)
        paths[f"/{name}"] = _table_path(relation)
    for name in sorted(catalogue.functions):
        function = catalogue.functions[name]
        schemas[f"rpc.{name}"] = _row_schema(function.columns)
        paths[f"/rpc/{name}"] = _function_path(function)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "gridloop Flux API",
            "version": version,
            "description": (
                f"PostgREST-compatible API over schema {catalogue.schema}. Authenticate with an API key "
                "(HS256 JWT, role anon | authenticated | service_role) in `apikey` and/or "
                "`Authorization: Bearer`. Rate limits per key: anon 60/min (burst 100), authenticated "
                "300/min (500), service_role 1000/min (2000); X-RateLimit-Limit is the burst (the bucket's "
                "capacity), X-RateLimit-Remaining the requests left in it, X-RateLimit-Reset when it is full."
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"apikey": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": _shared_parameters(catalogue.schema),
            "securitySchemes": {
                "apikey": {"type": "apiKey", "in": "header", "name": "apikey"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
