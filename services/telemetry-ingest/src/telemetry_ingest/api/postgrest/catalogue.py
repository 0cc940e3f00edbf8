"""The exposed schema's tables, columns, functions and each role's privileges, read at start-up."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from telemetry_ingest.api.postgrest.errors import PostgrestError, unknown_function, unknown_table

__all__ = [
    "API_ROLES",
    "Catalogue",
    "Column",
    "Function",
    "Parameter",
    "Privileges",
    "Relation",
    "load_catalogue",
    "quote_identifier",
    "quote_literal",
]

# The database roles requests run as (Supabase's keys); their privileges are read into the catalogue.
API_ROLES = ("anon", "authenticated", "service_role")


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier in double quotes: a name found in the catalogue, or an alias the client chose."""
    if "\x00" in name:
        # PostgreSQL's protocol cannot carry a NUL inside a statement (08P01, the connection's error); no name has one.
        raise PostgrestError(400, "PGRST100", "A name may not contain a NUL character (%00)", details=repr(name))
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A PostgreSQL string literal; only ever applied to names found in the catalogue."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Column:
    """One column and the SQL type its values are cast to (``timestamp with time zone``, ``uuid[]``...).

    ``default_expression`` is the column's DEFAULT as SQL (``gen_random_uuid()``), from the catalogue.
    """

    name: str
    sql_type: str
    nullable: bool = True
    has_default: bool = False
    default_expression: str | None = None


@dataclass(frozen=True)
class Privileges:
    """What one role may do to one relation: the columns it may read, insert and update, and whether it may
    delete. A table-level grant gives every column; no grant (or no USAGE on the schema) gives none."""

    select: frozenset[str] = frozenset()
    insert: frozenset[str] = frozenset()
    update: frozenset[str] = frozenset()
    delete: bool = False


@dataclass(frozen=True)
class Relation:
    """A table or view of the exposed schema."""

    schema: str
    name: str
    columns: Mapping[str, Column]
    primary_key: tuple[str, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{quote_identifier(self.schema)}.{quote_identifier(self.name)}"


@dataclass(frozen=True)
class Parameter:
    """An input parameter of a function callable as RPC."""

    name: str
    sql_type: str
    has_default: bool


@dataclass(frozen=True)
class Function:
    """A function of the exposed schema; ``columns`` are its RETURNS TABLE (OUT) columns."""

    schema: str
    name: str
    parameters: tuple[Parameter, ...]
    columns: Mapping[str, Column]

    @property
    def qualified_name(self) -> str:
        return f"{quote_identifier(self.schema)}.{quote_identifier(self.name)}"


@dataclass(frozen=True)
class Catalogue:
    """What the parser validates names against: the real schema, never the request."""

    schema: str
    tables: Mapping[str, Relation]
    functions: Mapping[str, Function] = field(default_factory=dict)
    # (role, relation) -> its privileges; a pair that is absent may do nothing.
    privileges: Mapping[tuple[str, str], Privileges] = field(default_factory=dict)

    def privileges_of(self, role: str, relation: str) -> Privileges:
        """What ``role`` may do to ``relation`` (nothing, for a pair the catalogue does not know)."""
        return self.privileges.get((role, relation), _NO_PRIVILEGES)

    def relation(self, name: str) -> Relation:
        """The table or view ``name``, or PGRST205."""
        found = self.tables.get(name)
        if found is None:
            close = difflib.get_close_matches(name, list(self.tables), n=1)
            raise unknown_table(self.schema, name, close[0] if close else None)
        return found

    def function(self, name: str, argument_names: list[str]) -> Function:
        """The function ``name`` taking these named arguments, or PGRST202."""
        found = self.functions.get(name)
        if found is None:
            raise unknown_function(self.schema, name, argument_names)
        known = {parameter.name for parameter in found.parameters}
        required = {parameter.name for parameter in found.parameters if not parameter.has_default}
        if not set(argument_names) <= known or not required <= set(argument_names):
            raise unknown_function(self.schema, name, argument_names)
        return found


_NO_PRIVILEGES = Privileges()


def _sql_type(data_type: str, udt_schema: str, udt_name: str) -> str:
    # information_schema spells built-in types out ("timestamp with time zone") but says only ARRAY
    # or USER-DEFINED for the rest, whose real name is in udt_name ("_uuid" for uuid[]).
    if data_type == "ARRAY":
        return f"{quote_identifier(udt_schema)}.{quote_identifier(udt_name.removeprefix('_'))}[]"
    if data_type == "USER-DEFINED":
        return f"{quote_identifier(udt_schema)}.{quote_identifier(udt_name)}"
    return data_type


_COLUMNS = """
SELECT columns.table_name, columns.column_name, columns.data_type, columns.udt_schema, columns.udt_name,
       columns.is_nullable = 'YES' AS nullable,
       columns.column_default IS NOT NULL OR columns.is_identity = 'YES' AS has_default,
       CASE WHEN columns.is_identity = 'YES'
            THEN format('nextval(pg_get_serial_sequence(%L, %L))',
                        format('%I.%I', columns.table_schema, columns.table_name), columns.column_name)
            ELSE columns.column_default END AS default_expression
FROM information_schema.columns AS columns
JOIN pg_catalog.pg_namespace AS namespace ON namespace.nspname = columns.table_schema
JOIN pg_catalog.pg_class AS class
    ON class.relnamespace = namespace.oid AND class.relname = columns.table_name
WHERE columns.table_schema = $1 AND NOT class.relispartition  -- partitions are reached via their parent
ORDER BY columns.table_name, columns.ordinal_position
"""

_PRIMARY_KEYS = """
SELECT usage.table_name, usage.column_name
FROM information_schema.table_constraints AS constraints
JOIN information_schema.key_column_usage AS usage
    ON usage.constraint_schema = constraints.constraint_schema
    AND usage.constraint_name = constraints.constraint_name
    AND usage.table_name = constraints.table_name
WHERE constraints.table_schema = $1 AND constraints.constraint_type = 'PRIMARY KEY'
ORDER BY usage.table_name, usage.ordinal_position
"""

# has_column_privilege is true for a table-level grant too; without USAGE on the schema a role can do nothing.
_PRIVILEGES = """
SELECT roles.rolname AS role, class.relname AS table_name, attribute.attname AS column_name,
       usable AND has_column_privilege(roles.oid, class.oid, attribute.attnum, 'SELECT') AS can_select,
       usable AND has_column_privilege(roles.oid, class.oid, attribute.attnum, 'INSERT') AS can_insert,
       usable AND has_column_privilege(roles.oid, class.oid, attribute.attnum, 'UPDATE') AS can_update,
       usable AND has_table_privilege(roles.oid, class.oid, 'DELETE') AS can_delete
FROM pg_catalog.pg_class AS class
JOIN pg_catalog.pg_namespace AS namespace ON namespace.oid = class.relnamespace
JOIN pg_catalog.pg_attribute AS attribute
    ON attribute.attrelid = class.oid AND attribute.attnum > 0 AND NOT attribute.attisdropped
JOIN pg_catalog.pg_roles AS roles ON roles.rolname = ANY($2::text[])
CROSS JOIN LATERAL (SELECT has_schema_privilege(roles.oid, namespace.oid, 'USAGE') AS usable) AS schema_usage
WHERE namespace.nspname = $1 AND class.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT class.relispartition
"""

_PARAMETERS = """
SELECT routines.routine_name, routines.specific_name, parameters.parameter_mode, parameters.parameter_name,
       parameters.data_type, parameters.udt_schema, parameters.udt_name,
       parameters.parameter_default IS NOT NULL AS has_default
FROM information_schema.routines AS routines
LEFT JOIN information_schema.parameters AS parameters
    ON parameters.specific_schema = routines.specific_schema
    AND parameters.specific_name = routines.specific_name
WHERE routines.routine_schema = $1 AND routines.routine_type = 'FUNCTION'
    AND routines.data_type <> 'trigger'
ORDER BY routines.routine_name, routines.specific_name, parameters.ordinal_position
"""


async def load_catalogue(connection: Any, schema: str = "flux", roles: tuple[str, ...] = API_ROLES) -> Catalogue:
    """Read ``schema``'s tables, views, functions and ``roles``' privileges through an asyncpg connection (or
    pool). Like PostgREST's schema cache, it is read once: a changed grant takes effect at the next start."""
    columns: dict[str, dict[str, Column]] = {}
    for row in await connection.fetch(_COLUMNS, schema):
        columns.setdefault(row["table_name"], {})[row["column_name"]] = Column(
            row["column_name"],
            _sql_type(row["data_type"], row["udt_schema"], row["udt_name"]),
            row["nullable"],
            row["has_default"],
            row["default_expression"],
        )
    primary_keys: dict[str, list[str]] = {}
    for row in await connection.fetch(_PRIMARY_KEYS, schema):
        primary_keys.setdefault(row["table_name"], []).append(row["column_name"])
    tables = {
        name: Relation(schema, name, table_columns, tuple(primary_keys.get(name, ())))
        for name, table_columns in columns.items()
    }

    parameters: dict[str, list[Parameter]] = {}
    outputs: dict[str, dict[str, Column]] = {}
    names: dict[str, str] = {}
    for row in await connection.fetch(_PARAMETERS, schema):
        specific = row["specific_name"]
        names[specific] = row["routine_name"]
        parameters.setdefault(specific, [])
        outputs.setdefault(specific, {})
        if row["parameter_name"] is None:
            continue  # a function without parameters, or an unnamed one RPC cannot address
        sql_type = _sql_type(row["data_type"], row["udt_schema"], row["udt_name"])
        if row["parameter_mode"] in ("IN", "INOUT"):
            parameters[specific].append(Parameter(row["parameter_name"], sql_type, row["has_default"]))
        if row["parameter_mode"] in ("OUT", "INOUT"):
            outputs[specific][row["parameter_name"]] = Column(row["parameter_name"], sql_type)
    functions: dict[str, Function] = {}
    for specific, name in sorted(names.items()):
        # Overloads are not addressed by RPC here: the first one by specific name wins.
        functions.setdefault(name, Function(schema, name, tuple(parameters[specific]), outputs[specific]))
    return Catalogue(schema, tables, functions, await _load_privileges(connection, schema, roles))


async def _load_privileges(connection: Any, schema: str, roles: tuple[str, ...]) -> dict[tuple[str, str], Privileges]:
    granted: dict[tuple[str, str], dict[str, set[str]]] = {}
    deletable: dict[tuple[str, str], bool] = {}
    for row in await connection.fetch(_PRIVILEGES, schema, list(roles)):
        pair = (row["role"], row["table_name"])
        columns = granted.setdefault(pair, {"select": set(), "insert": set(), "update": set()})
        for action in ("select", "insert", "update"):
            if row[f"can_{action}"]:
                columns[action].add(row["column_name"])
        deletable[pair] = bool(row["can_delete"])
    return {
        pair: Privileges(
            frozenset(columns["select"]), frozenset(columns["insert"]), frozenset(columns["update"]), deletable[pair]
        )
        for pair, columns in granted.items()
    }
