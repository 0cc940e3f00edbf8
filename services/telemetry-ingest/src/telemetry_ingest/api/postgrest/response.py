"""Status, headers and body of a PostgREST response from the row a compiled query returned."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from telemetry_ingest.api.postgrest.errors import PostgrestError, range_not_satisfiable
from telemetry_ingest.api.postgrest.media import CSV_CONTENT_TYPE
from telemetry_ingest.api.postgrest.query import InsertQuery, Query, ReadQuery

__all__ = ["JSON_CONTENT_TYPE", "PostgrestResponse", "build_response", "error_response"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class PostgrestResponse:
    """What to send. A status >= 400 after a mutation means the transaction must be rolled back."""

    status: int
    headers: Mapping[str, str]
    body: str | None


def error_response(error: PostgrestError) -> PostgrestResponse:
    """The response for a refused request."""
    return PostgrestResponse(error.status, {"Content-Type": JSON_CONTENT_TYPE}, json.dumps(error.body()))


def build_response(query: Query, *, total_count: int | None, page_count: int, body: str | None) -> PostgrestResponse:
    """Turn ``(total_count, page_count, body)`` from the compiled statement into the HTTP response."""
    singular = query.singular
    if singular and page_count != 1:
        # PostgREST answers 406 and rolls back a mutation that did not touch exactly one row.
        return error_response(
            PostgrestError(
                406,
                "PGRST116",
                "JSON object requested, multiple (or no) rows returned",
                details=f"The result contains {page_count} rows",
            )
        )
    applied = []
    if not isinstance(query, ReadQuery):
        applied.append("return=representation" if query.representation else "return=minimal")
    if query.count_exact:
        applied.append("count=exact")
    if isinstance(query, InsertQuery) and query.resolution is not None:
        applied.append(f"resolution={query.resolution}")
    headers: dict[str, str] = {}
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    content_type = "application/vnd.pgrst.object+json; charset=utf-8" if singular else JSON_CONTENT_TYPE

    if isinstance(query, ReadQuery):
        total = total_count if query.count_exact else None
        if page_count == 0 and total is not None and query.offset > 0 and query.offset >= total:
            return error_response(range_not_satisfiable(total))
        headers["Content-Range"] = _content_range(query.offset, page_count, total)
        partial = total is not None and page_count < total
        headers["Content-Type"] = CSV_CONTENT_TYPE if query.csv else content_type
        return PostgrestResponse(206 if partial else 200, headers, None if query.head else body)

    total = page_count if query.count_exact else None
    if isinstance(query, InsertQuery):
        headers["Content-Range"] = f"*/{'*' if total is None else total}"
        status = 201
    else:
        headers["Content-Range"] = _content_range(0, page_count, total)
        status = 200 if query.representation else 204
    if not query.representation:
        return PostgrestResponse(status, headers, None)
    headers["Content-Type"] = content_type
    return PostgrestResponse(status, headers, body)


def _content_range(offset: int, page_count: int, total: int | None) -> str:
    shown_total = "*" if total is None else str(total)
    if page_count == 0:
        return f"*/{shown_total}"
    return f"{offset}-{offset + page_count - 1}/{shown_total}"
