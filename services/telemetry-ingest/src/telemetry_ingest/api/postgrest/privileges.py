"""A request's table and column privileges, checked against the catalogue before any SQL is built.

PostgreSQL checks privileges only after parsing and planning a statement, and a refused insert of many rows
cost it seconds and gigabytes first. The catalogue holds each role's grants (read at start-up), so a request
its role may not make is answered as PostgreSQL would answer it (42501: 401 for anon, 403 otherwise, as
PostgREST maps it) without reaching the database. The database still enforces its grants and policies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from telemetry_ingest.api.postgrest.catalogue import Catalogue, Privileges
from telemetry_ingest.api.postgrest.errors import PostgrestError, status_for_sqlstate
from telemetry_ingest.api.postgrest.query import (
    Condition,
    Filter,
    InsertQuery,
    Query,
    ReadQuery,
    UpdateQuery,
)

__all__ = ["check_method", "check_privileges", "filter_count", "permission_denied"]

_METHOD_PRIVILEGE = {"GET": "select", "HEAD": "select", "POST": "insert", "PATCH": "update", "DELETE": "delete"}


def permission_denied(relation: str, *, anonymous: bool) -> PostgrestError:
    """42501 worded as PostgreSQL words it, with PostgREST's status."""
    return PostgrestError(
        status_for_sqlstate("42501", anonymous=anonymous), "42501", f"permission denied for table {relation}"
    )


def check_method(catalogue: Catalogue, role: str, relation: str, method: str, *, anonymous: bool) -> None:
    """Refuse at once a method ``role`` has no privilege for on ``relation`` at all (before reading a body).

    An unknown relation is PGRST205 (404), as it is before any privilege in PostgREST.
    """
    catalogue.relation(relation)
    privileges = catalogue.privileges_of(role, relation)
    action = _METHOD_PRIVILEGE.get(method.upper())
    if action is None:
        return  # the parser answers other methods (405)
    if not (privileges.delete if action == "delete" else getattr(privileges, action)):
        raise permission_denied(relation, anonymous=anonymous)


def check_privileges(catalogue: Catalogue, role: str, query: Query, *, anonymous: bool) -> None:
    """Refuse ``query`` if its statement would need a privilege ``role`` lacks (PostgreSQL's rules:
    SELECT on every column read, filtered, ordered or returned; INSERT/UPDATE on every column written;
    DELETE on the table). RPC calls are left to the database (EXECUTE)."""
    if isinstance(query, ReadQuery) and query.arguments is not None:
        return
    privileges = catalogue.privileges_of(role, query.relation)
    read: set[str] = set()
    if isinstance(query, ReadQuery):
        read.update(item.column for item in query.select)
        read.update(_filter_columns(query.where))
        read.update(term.column for term in query.order)
        allowed = bool(privileges.select)
    elif isinstance(query, InsertQuery):
        allowed = bool(privileges.insert) and set(query.rows.columns) <= privileges.insert
        if query.resolution == "merge-duplicates":
            allowed = allowed and set(query.rows.columns) <= privileges.update
    elif isinstance(query, UpdateQuery):
        # PATCH {} updates nothing, but PostgREST still refuses it to a role that may update nothing.
        allowed = bool(privileges.update) and set(query.columns) <= privileges.update
        read.update(_filter_columns(query.where))
    else:  # DELETE
        allowed = privileges.delete
        read.update(_filter_columns(query.where))
    if not isinstance(query, ReadQuery) and query.representation:
        read.update(item.column for item in query.returning)
    if not allowed or not _readable(privileges, read):
        raise permission_denied(query.relation, anonymous=anonymous)


def filter_count(condition: Condition) -> int:
    """How many filters (leaves) a condition tree holds."""
    return sum(1 if isinstance(child, Filter) else filter_count(child) for child in condition.children)


def _readable(privileges: Privileges, columns: Iterable[str]) -> bool:
    return all(column in privileges.select for column in columns)


def _filter_columns(condition: Condition) -> Iterator[str]:
    for child in condition.children:
        if isinstance(child, Filter):
            yield child.column
        else:
            yield from _filter_columns(child)
