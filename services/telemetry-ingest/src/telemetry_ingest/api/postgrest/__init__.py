"""PostgREST semantics for the Flux API: parse a request, compile it to SQL, shape the response."""

from telemetry_ingest.api.postgrest.catalogue import (
    Catalogue,
    Column,
    Function,
    Parameter,
    Privileges,
    Relation,
    load_catalogue,
    quote_identifier,
)
from telemetry_ingest.api.postgrest.compiler import CompiledQuery, compile_query
from telemetry_ingest.api.postgrest.errors import PostgrestError, error_from_database, status_for_sqlstate
from telemetry_ingest.api.postgrest.media import CSV_CONTENT_TYPE, Media, negotiate
from telemetry_ingest.api.postgrest.parser import QueryString, parse_request, parse_rpc
from telemetry_ingest.api.postgrest.query import (
    Argument,
    Condition,
    DeleteQuery,
    Filter,
    InsertQuery,
    InsertRows,
    JsonStep,
    OrderTerm,
    Query,
    ReadQuery,
    SelectItem,
    UpdateQuery,
)
from telemetry_ingest.api.postgrest.response import (
    JSON_CONTENT_TYPE,
    PostgrestResponse,
    build_response,
    error_response,
)

__all__ = [
    "CSV_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "Argument",
    "Catalogue",
    "Column",
    "CompiledQuery",
    "Condition",
    "DeleteQuery",
    "Filter",
    "Function",
    "InsertQuery",
    "InsertRows",
    "JsonStep",
    "Media",
    "OrderTerm",
    "Parameter",
    "PostgrestError",
    "PostgrestResponse",
    "Privileges",
    "Query",
    "QueryString",
    "ReadQuery",
    "Relation",
    "SelectItem",
    "UpdateQuery",
    "build_response",
    "compile_query",
    "error_from_database",
    "error_response",
    "load_catalogue",
    "negotiate",
    "parse_request",
    "parse_rpc",
    "quote_identifier",
    "status_for_sqlstate",
]
