"""PostgREST's error responses: the exception carrying status and body, and the PostgreSQL error mapping."""

from __future__ import annotations

__all__ = [
    "PostgrestError",
    "ambiguous_or_missing_filter",
    "bad_json",
    "error_from_database",
    "json_path_on_non_json",
    "parse_error",
    "range_not_satisfiable",
    "status_for_sqlstate",
    "unknown_body_column",
    "unknown_column",
    "unknown_function",
    "unknown_relationship",
    "unknown_table",
]


class PostgrestError(Exception):
    """A request PostgREST would refuse: HTTP ``status`` and the body ``{code, details, hint, message}``."""

    def __init__(
        self, status: int, code: str, message: str, *, details: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint

    def body(self) -> dict[str, str | None]:
        """The JSON body, with exactly PostgREST's four keys."""
        return {"code": self.code, "details": self.details, "hint": self.hint, "message": self.message}

    def __repr__(self) -> str:
        return f"PostgrestError({self.status}, {self.code!r}, {self.message!r})"


def parse_error(what: str, text: str, column: int, details: str) -> PostgrestError:
    """PGRST100: a query parameter that does not parse, worded as PostgREST's parser words it."""
    return PostgrestError(
        400, "PGRST100", f'"failed to parse {what} ({text})" (line 1, column {column})', details=details
    )


def unknown_column(relation: str, column: str) -> PostgrestError:
    """42703: a filter, select or order names a column the relation does not have."""
    return PostgrestError(400, "42703", f"column {relation}.{column} does not exist")


def json_path_on_non_json(relation: str, column: str, sql_type: str, arrow: str) -> PostgrestError:
    """42883: ``->``/``->>`` on a column that is not json or jsonb, worded as PostgreSQL words the missing operator."""
    return PostgrestError(
        400,
        "42883",
        f"operator does not exist: {sql_type} {arrow} unknown",
        details=f"column {relation}.{column} is {sql_type}",
        hint="JSON paths (-> and ->>) apply to json and jsonb columns",
    )


def unknown_body_column(relation: str, column: str) -> PostgrestError:
    """PGRST204: a body (or ``columns``/``on_conflict``) names a column the relation does not have."""
    return PostgrestError(400, "PGRST204", f"Could not find the '{column}' column of '{relation}' in the schema cache")


def unknown_table(schema: str, name: str, suggestion: str | None = None) -> PostgrestError:
    """PGRST205: the path names no table or view of the exposed schema."""
    hint = f"Perhaps you meant the table '{schema}.{suggestion}'" if suggestion else None
    return PostgrestError(404, "PGRST205", f"Could not find the table '{schema}.{name}' in the schema cache", hint=hint)


def unknown_function(schema: str, name: str, arguments: list[str]) -> PostgrestError:
    """PGRST202: no function of that name takes those named arguments."""
    signature = ", ".join(arguments)
    return PostgrestError(
        404,
        "PGRST202",
        f"Could not find the function {schema}.{name}({signature}) in the schema cache",
        details=f"Searched for the function {schema}.{name} with parameters {signature or 'none'}",
    )


def unknown_relationship(relation: str, embedded: str) -> PostgrestError:
    """PGRST200: a select embeds a resource; flux has no foreign keys to embed along."""
    return PostgrestError(
        400,
        "PGRST200",
        f"Could not find a relationship between '{relation}' and '{embedded}' in the schema cache",
    )


def bad_json(details: str | None = None) -> PostgrestError:
    """PGRST102: the body is not the JSON the method needs."""
    return PostgrestError(400, "PGRST102", "Empty or invalid json", details=details)


def ambiguous_or_missing_filter(method: str) -> PostgrestError:
    """A PATCH or DELETE without any filter, refused as pg-safeupdate refuses it (SQLSTATE 21000).

    PostgREST itself would touch every row; its documentation points to pg-safeupdate for exactly this,
    which raises 21000 "UPDATE/DELETE requires a WHERE clause"; PostgREST maps that code to 400.
    """
    verb = "UPDATE" if method == "PATCH" else "DELETE"
    return PostgrestError(
        400,
        "21000",
        f"{verb} requires a WHERE clause",
        hint="Add a filter (e.g. ?id=eq.<id>) to choose the rows.",
    )


def range_not_satisfiable(total: int) -> PostgrestError:
    """PGRST103: the requested offset lies beyond the rows there are."""
    return PostgrestError(
        416,
        "PGRST103",
        "Requested range not satisfiable",
        details=f"An offset of the range was requested but there are only {total} rows",
    )


# SQLSTATE class (first two characters) -> HTTP status, as PostgREST's error table maps them.
_STATUS_BY_CLASS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}
_STATUS_BY_CODE = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "42883": 404,
    "42P01": 404,
    "53400": 500,
    "P0001": 400,
}


def status_for_sqlstate(sqlstate: str, *, anonymous: bool) -> int:
    """The HTTP status PostgREST answers a PostgreSQL error with; any code not listed is a 400."""
    if sqlstate == "42501":
        # Insufficient privilege: the client may not have authenticated yet, or may not do this at all.
        return 401 if anonymous else 403
    if sqlstate in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[sqlstate]
    return _STATUS_BY_CLASS.get(sqlstate[:2], 400)


def error_from_database(error: Exception, *, anonymous: bool = False) -> PostgrestError:
    """Map an asyncpg ``PostgresError`` (anything with ``sqlstate``) to PostgREST's status and body.

    A bad filter value (22P02, 22007), a duplicate reading (23505 -> 409), a check violation (23514)
    become clean client errors, never a 500.
    """
    # asyncpg's PostgresError carries these attributes; a non-database error is an internal one.
    sqlstate = str(getattr(error, "sqlstate", None) or "XX000")
    message = str(getattr(error, "message", None) or error)
    details = getattr(error, "detail", None)
    hint = getattr(error, "hint", None)
    return PostgrestError(
        status_for_sqlstate(sqlstate, anonymous=anonymous),
        sqlstate,
        message,
        details=str(details) if details is not None else None,
        hint=str(hint) if hint is not None else None,
    )
