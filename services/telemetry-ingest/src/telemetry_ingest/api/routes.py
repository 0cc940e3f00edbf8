"""The Flux REST API over HTTP: `/rest/v1/...` with PostgREST's semantics, keys, rate limits and metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gridloop_common.clock import Clock
from gridloop_common.observability import Health, health_routes
from telemetry_ingest.api.auth import AuthenticationError, Authenticator, Identity
from telemetry_ingest.api.connection_share import ConnectionsBusy, ConnectionShare, client_key
from telemetry_ingest.api.openapi import OPENAPI_CONTENT_TYPE, build_openapi
from telemetry_ingest.api.postgrest import (
    JSON_CONTENT_TYPE,
    Catalogue,
    CompiledQuery,
    PostgrestError,
    PostgrestResponse,
    Query,
    build_response,
    compile_query,
    error_from_database,
    error_response,
    negotiate,
    parse_request,
    parse_rpc,
)
from telemetry_ingest.api.postgrest.errors import parse_error
from telemetry_ingest.api.postgrest.privileges import check_method, check_privileges, filter_count
from telemetry_ingest.api.postgrest.query import DeleteQuery, InsertQuery, ReadQuery, UpdateQuery
from telemetry_ingest.api.rate_limits import RateLimiter, bucket_key, rate_limited
from telemetry_ingest.settings import IngestSettings, RoleLimits

__all__ = ["DEFAULT_MAX_ROWS", "RPC_FUNCTIONS", "build_app"]

logger = logging.getLogger(__name__)

# Supabase's default db-max-rows: PostgREST's own default is unlimited, which one GET can exhaust memory with.
DEFAULT_MAX_ROWS = 1000
# Only these functions of schema flux are RPCs; the others (partition maintenance, rollup refresh, the
# interpolation helper) are internals that PostgREST would expose because they share the schema.
RPC_FUNCTIONS = ("get_meter_readings_5m", "get_meter_readings_30m")
# Deeper and/or trees are refused before parsing: the parser and compiler recurse once per level, and
# PostgreSQL answers a very deep expression with 54001 (a 500 in PostgREST's mapping).
MAX_NESTING = 32
POOL_ACQUIRE_TIMEOUT_S = 10.0
# The client gives a statement this much longer than its server-side statement timeout before it cancels it
# itself, so that PostgreSQL's own 57014 is what is normally seen.
CLIENT_TIMEOUT_MARGIN_S = 2.0

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
_READ_METHODS = ("GET", "HEAD")
_TABLE_ALLOW = "OPTIONS,GET,HEAD,POST,PATCH,DELETE"
_RPC_ALLOW = "OPTIONS,GET,HEAD,POST"

REQUESTS = Counter("gridloop_api_requests_total", "Flux REST API requests by method and status.", ["method", "status"])
REQUEST_SECONDS = Histogram(
    "gridloop_api_request_seconds",
    "Flux REST API latency, from request to response headers.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# One round trip sets the request's role (PostgREST's SET LOCAL ROLE), its claims for policies, and a
# statement timeout; all three end with the transaction.
_REQUEST_CONTEXT = (
    "SELECT set_config('statement_timeout', $1, true), set_config('request.jwt.claims', $2, true), "
    "set_config('role', $3, true)"
)
# RPCs also plan every call for its own arguments (~6 ms) and never JIT-compile. The RPC functions are inlined
# into the statement, so that its LIMIT bounds their work (migration 0010); a generic plan cached for unknown
# arguments would have to suit all of them (a few meters or all, an hour or a year), and JIT compiling the inlined
# query's many expressions took ~120 ms, more than running it.
_RPC_CONTEXT = (
    _REQUEST_CONTEXT + ", set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true)"
)

Action = Callable[[Request, Identity, list[tuple[str, str]]], Awaitable[PostgrestResponse]]


class _Rollback(Exception):
    """Raised inside a transaction to undo it while still answering ``response`` (e.g. 406 PGRST116)."""

    def __init__(self, response: PostgrestResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _internal_error() -> PostgrestError:
    return PostgrestError(500, "PGRSTX00", "Internal server error")


def _too_large(role: str, limit: int) -> PostgrestError:
    return PostgrestError(
        413,
        "PGRST102",
        f"Request body too large: the limit for the {role} role is {limit} bytes",
        details=f"The limit is {limit} bytes",
    )


def _too_many_rows(role: str, rows: int, limit: int) -> PostgrestError:
    return PostgrestError(
        413,
        "PGRST102",
        f"Too many rows in one insert: {rows}; the limit for the {role} role is {limit} rows",
        hint="Split the rows over several requests.",
    )


def _too_many_filters(count: int, limit: int) -> PostgrestError:
    return PostgrestError(
        400,
        "PGRST100",
        f"Too many filters: {count}; a request may hold at most {limit} (and/or trees counted by their leaves)",
        hint="Use in.(...) for a list of values, or split the request.",
    )


def _statement_timeout(role: str, limit_s: float) -> PostgrestError:
    # PostgreSQL's 57014 and its message, with PostgREST's status for class 57 (500); the details say which limit.
    return PostgrestError(
        500,
        "57014",
        "canceling statement due to statement timeout",
        details=f"The statement timeout of the {role} role is {limit_s:g} s",
    )


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _check_characters(parameters: list[tuple[str, str]]) -> None:
    # PostgreSQL text cannot hold a NUL: in a bound value it is 22021, in a name (a quoted select alias)
    # it broke the protocol (08P01, a 503). No request needs one.
    for key, value in parameters:
        if "\x00" in key or "\x00" in value:
            raise parse_error(
                f"{key.replace(chr(0), '%00')} parameter", "%00", 1, "a NUL character (%00) is not allowed"
            )


def _check_nesting(parameters: list[tuple[str, str]]) -> None:
    for key, value in parameters:
        depth = deepest = 0
        for character in value:
            if character == "(":
                depth += 1
                deepest = max(deepest, depth)
            elif character == ")":
                depth -= 1
        if deepest > MAX_NESTING:
            raise parse_error(
                "logic tree", f"{key}={value[:40]}...", 1, f"more than {MAX_NESTING} nested levels of parentheses"
            )


class _Api:
    """The request pipeline: key, rate limit, schema profile, body, then the table/RPC/root action."""

    def __init__(
        self,
        *,
        pool: Any,
        catalogue: Catalogue,
        authenticator: Authenticator,
        rate_limiter: RateLimiter,
        max_rows: int | None,
        role_limits: dict[str, RoleLimits],
        max_filters: int,
        share: ConnectionShare,
    ) -> None:
        self.pool = pool
        self.catalogue = catalogue
        self.authenticator = authenticator
        self.rate_limiter = rate_limiter
        self.max_rows = max_rows
        self.role_limits = role_limits
        self.max_filters = max_filters
        self.share = share
        self.openapi_body = json.dumps(build_openapi(catalogue)).encode()

    # --- endpoints ------------------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return await self._handle(request, self._openapi, allow="OPTIONS,GET,HEAD")

    async def table(self, request: Request) -> Response:
        return await self._handle(request, self._table, allow=_TABLE_ALLOW)

    async def rpc(self, request: Request) -> Response:
        return await self._handle(request, self._rpc, allow=_RPC_ALLOW)

    async def unknown_path(self, request: Request) -> Response:
        return await self._handle(request, self._invalid_path, allow="OPTIONS")

    # --- pipeline -------------------------------------------------------------------------------------

    async def _handle(self, request: Request, action: Action, *, allow: str) -> Response:
        started = time.perf_counter()
        method = request.method
        extra_headers: dict[str, str] = {}
        try:
            result = await self._respond(request, action, allow, extra_headers)
        except Exception:
            # Everything a request can cause is mapped in _respond; reaching here is a bug, logged with its trace.
            logger.exception("unhandled error in API request", extra={"method": method, "path": request.url.path})
            result = error_response(_internal_error())
        headers = {**result.headers, **extra_headers}
        body = None if result.body is None or method == "HEAD" else result.body.encode()
        response = Response(content=body, status_code=result.status, headers=headers)
        label = method if method in _ALL_METHODS else "other"
        REQUESTS.labels(method=label, status=str(result.status)).inc()
        REQUEST_SECONDS.labels(method=label).observe(time.perf_counter() - started)
        return response

    async def _respond(
        self, request: Request, action: Action, allow: str, extra_headers: dict[str, str]
    ) -> PostgrestResponse:
        client_address = _client_address(request)
        parameters = parse_qsl(request.url.query, keep_blank_values=True)
        # Supabase's gateway also takes the key as ?apikey=; it is no filter.
        apikey_parameter = next((value for key, value in reversed(parameters) if key == "apikey"), None)
        parameters = [(key, value) for key, value in parameters if key != "apikey"]
        identity: Identity | None = None
        refusal: PostgrestError | None = None
        if request.method != "OPTIONS":  # a CORS preflight carries no key
            try:
                identity = self.authenticator.authenticate(request.headers, apikey_parameter)
            except AuthenticationError as error:
                refusal = error
        # Unauthenticated requests draw on the anon bucket of their address, so a key-guessing client is
        # throttled like any anonymous one.
        role = identity.role if identity is not None else "anon"
        decision = self.rate_limiter.take(
            role,
            bucket_key(role=role, identity=identity, client_address=client_address),
        )
        extra_headers.update(decision.headers())
        if not decision.allowed:
            return error_response(rate_limited(decision))
        if request.method == "OPTIONS":
            return PostgrestResponse(200, {"Allow": allow}, None)
        if refusal is not None or identity is None:
            return self._error(refusal or _internal_error())
        try:
            self._check_profile(request)
            _check_nesting(parameters)
            _check_characters(parameters)
            return await action(request, identity, parameters)
        except PostgrestError as error:
            return self._error(error)
        except RecursionError:
            # The query string's nesting is bounded above, so this is a JSON body nested too deeply to decode.
            return self._error(PostgrestError(400, "PGRST102", "Empty or invalid json", details="nested too deeply"))
        except ClientDisconnect:
            return self._error(PostgrestError(400, "PGRST102", "The client disconnected before sending the body"))

    @staticmethod
    def _error(error: PostgrestError) -> PostgrestResponse:
        response = error_response(error)
        if isinstance(error, ConnectionsBusy):
            return dataclasses.replace(response, headers={**response.headers, "Retry-After": str(error.retry_after)})
        if error.status != 401:
            return response
        # PostgREST challenges on every 401: a bad token with its description, a permission error plainly.
        challenge = error.challenge if isinstance(error, AuthenticationError) else "Bearer"
        return dataclasses.replace(response, headers={**response.headers, "WWW-Authenticate": challenge})

    def _check_profile(self, request: Request) -> None:
        # PostgREST serves one schema here; clients name it in Accept-Profile (reads) or Content-Profile
        # (writes), and no header means that schema.
        header = "accept-profile" if request.method in _READ_METHODS else "content-profile"
        profile = request.headers.get(header)
        if profile is not None and profile != self.catalogue.schema:
            raise PostgrestError(
                406,
                "PGRST106",
                f"Invalid schema: {profile}",
                hint=f"Only the following schemas are exposed: {self.catalogue.schema}",
            )

    async def _read_body(self, request: Request, identity: Identity) -> bytes:
        if request.method in _READ_METHODS:
            return b""
        limit = self.role_limits[identity.role].max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise _too_large(identity.role, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(identity.role, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_query(self, query: Query, identity: Identity) -> None:
        """What is refused before any SQL is built: too many filters or rows, a missing privilege."""
        if isinstance(query, ReadQuery | UpdateQuery | DeleteQuery):
            count = filter_count(query.where)
            if count > self.max_filters:
                raise _too_many_filters(count, self.max_filters)
        check_privileges(self.catalogue, identity.role, query, anonymous=identity.anonymous)
        if isinstance(query, InsertQuery):
            limit = self.role_limits[identity.role].max_insert_rows
            if query.rows.row_count > limit:
                raise _too_many_rows(identity.role, query.rows.row_count, limit)

    # --- actions --------------------------------------------------------------------------------------

    async def _openapi(
        self, request: Request, identity: Identity, parameters: list[tuple[str, str]]
    ) -> PostgrestResponse:
        if request.method not in _READ_METHODS:
            raise PostgrestError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
        # PostgREST's root offers the OpenAPI document as itself or as plain JSON; any other type is 406.
        media = negotiate(request.headers.get("accept"), ("openapi", "json"))
        content_type = OPENAPI_CONTENT_TYPE if media == "openapi" else JSON_CONTENT_TYPE
        return PostgrestResponse(200, {"Content-Type": content_type}, self.openapi_body.decode())

    async def _invalid_path(
        self, request: Request, identity: Identity, parameters: list[tuple[str, str]]
    ) -> PostgrestResponse:
        raise PostgrestError(404, "PGRST125", "Invalid path specified in request URL")

    async def _table(
        self, request: Request, identity: Identity, parameters: list[tuple[str, str]]
    ) -> PostgrestResponse:
        relation = request.path_params["table"]
        # A role that may not write the table at all is refused before its body is read or parsed.
        check_method(self.catalogue, identity.role, relation, request.method, anonymous=identity.anonymous)
        query = parse_request(
            self.catalogue,
            method=request.method,
            relation=relation,
            query=parameters,
            headers=request.headers,
            body=await self._read_body(request, identity),
            max_rows=self.max_rows,
        )
        self._check_query(query, identity)
        return await self._execute(query, identity, _client_address(request), readonly=request.method in _READ_METHODS)

    async def _rpc(self, request: Request, identity: Identity, parameters: list[tuple[str, str]]) -> PostgrestResponse:
        query = parse_rpc(
            self.catalogue,
            method=request.method,
            function=request.path_params["function"],
            query=parameters,
            headers=request.headers,
            body=await self._read_body(request, identity),
            max_rows=self.max_rows,
        )
        self._check_query(query, identity)
        return await self._execute(
            query, identity, _client_address(request), readonly=request.method in _READ_METHODS, context=_RPC_CONTEXT
        )

    async def _execute(
        self,
        query: Query,
        identity: Identity,
        client_address: str,
        *,
        readonly: bool,
        context: str = _REQUEST_CONTEXT,
    ) -> PostgrestResponse:
        """One transaction as the key's role; PostgreSQL errors become PostgREST's, a refused result rolls back.

        The connection comes from the API's share of the pool (see connection_share.py), at most a few per
        client; the statement runs under the role's statement timeout.
        """
        compiled = compile_query(self.catalogue, query)
        claims = json.dumps(dict(identity.claims), default=str)
        timeout_s = self.role_limits[identity.role].statement_timeout_s
        client = client_key(
            role=identity.role, token=identity.token, claims=identity.claims, client_address=client_address
        )
        try:
            async with self.share.hold(client):
                try:
                    connection = await self.pool.acquire(timeout=POOL_ACQUIRE_TIMEOUT_S)
                except TimeoutError as error:
                    raise PostgrestError(
                        503, "PGRST003", "Timed out acquiring connection from connection pool."
                    ) from error
                try:
                    return await self._run(connection, compiled, context, claims, identity, query, readonly, timeout_s)
                finally:
                    await self.pool.release(connection)
        except asyncpg.PostgresError as error:
            mapped = error_from_database(error, anonymous=identity.anonymous)
            if mapped.code == "57014" and "statement timeout" in mapped.message:
                raise _statement_timeout(identity.role, timeout_s) from error
            raise mapped from error
        except UnicodeError as error:
            # A JSON string with a lone surrogate (valid JSON, not encodable UTF-8) used as an RPC argument.
            raise PostgrestError(
                400, "22021", 'invalid byte sequence for encoding "UTF8"', details=str(error)
            ) from error
        except asyncpg.InterfaceError as error:
            if isinstance(error, ValueError):  # asyncpg's client-side "invalid input for query argument"
                raise PostgrestError(400, "22P02", str(error)) from error
            raise PostgrestError(503, "PGRST001", "Database client error. Retrying the connection.") from error
        except OSError as error:
            raise PostgrestError(503, "PGRST000", "Database connection error. Retrying the connection.") from error

    async def _run(
        self,
        connection: Any,
        compiled: CompiledQuery,
        context: str,
        claims: str,
        identity: Identity,
        query: Query,
        readonly: bool,
        timeout_s: float,
    ) -> PostgrestResponse:
        try:
            async with connection.transaction(readonly=readonly):
                await connection.fetchrow(context, f"{round(timeout_s * 1000)}ms", claims, identity.role)
                # The server cancels the statement at the role's timeout (57014); the client's own timeout is
                # only the net for a server that does not answer, and is reported as the same timeout.
                row = await connection.fetchrow(
                    compiled.sql, *compiled.parameters, timeout=timeout_s + CLIENT_TIMEOUT_MARGIN_S
                )
                response = build_response(
                    query, total_count=row["total_count"], page_count=row["page_count"], body=row["body"]
                )
                if response.status >= 400:
                    raise _Rollback(response)
        except _Rollback as rollback:
            return rollback.response
        except TimeoutError as error:
            raise _statement_timeout(identity.role, timeout_s) from error
        return response


async def _routing_error(request: Request, exception: Exception) -> Response:
    """Starlette's own 404/405 (paths outside /rest/v1, unknown methods) in PostgREST's body."""
    status = exception.status_code if isinstance(exception, HTTPException) else 500
    headers = dict(exception.headers or {}) if isinstance(exception, HTTPException) else {}
    if status == 405:
        error = PostgrestError(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
    elif status == 404:
        error = PostgrestError(404, "PGRST125", "Invalid path specified in request URL")
    else:
        error = PostgrestError(status, "PGRSTX00", str(getattr(exception, "detail", "Error")))
    result = error_response(error)
    REQUESTS.labels(method=request.method if request.method in _ALL_METHODS else "other", status=str(status)).inc()
    return Response(
        content=None if request.method == "HEAD" else (result.body or "").encode(),
        status_code=status,
        headers={**result.headers, **headers},
        media_type=None,
    )


def build_app(
    *,
    pool: Any,
    catalogue: Catalogue,
    settings: IngestSettings,
    health: Health,
    extra_routes: Sequence[BaseRoute] = (),
    clock: Clock | None = None,
    rate_limiter: RateLimiter | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    rpc_functions: Collection[str] = RPC_FUNCTIONS,
) -> Starlette:
    """The API app: `/rest/v1/{table}`, `/rest/v1/rpc/{function}`, `/rest/v1/` (OpenAPI), health, extras.

    ``pool`` is an asyncpg pool whose login role is a member of anon/authenticated/service_role (migration
    0003 grants that); ``clock`` drives token expiry and the rate limiter's buckets.
    """
    exposed = dataclasses.replace(
        catalogue, functions={name: function for name, function in catalogue.functions.items() if name in rpc_functions}
    )
    # The pool's own size when it tells it (the tests' pools are smaller than the setting says).
    pool_size = pool.get_max_size() if hasattr(pool, "get_max_size") else settings.database.database_pool_max
    api = _Api(
        pool=pool,
        catalogue=exposed,
        authenticator=Authenticator(settings.jwt_secret.get_secret_value(), clock=clock),
        rate_limiter=rate_limiter or RateLimiter(clock=clock),
        max_rows=max_rows,
        role_limits=settings.role_limits(),
        max_filters=settings.api_max_filters,
        share=ConnectionShare(
            total=max(1, pool_size - settings.api_reserved_connections),
            per_client=settings.api_connections_per_client,
        ),
    )
    routes: list[BaseRoute] = [
        Route("/rest/v1/", api.root, methods=_ALL_METHODS),
        Route("/rest/v1", api.root, methods=_ALL_METHODS),
        Route("/rest/v1/rpc/{function}", api.rpc, methods=_ALL_METHODS),
        Route("/rest/v1/{table}", api.table, methods=_ALL_METHODS),
        *health_routes(health),
        *extra_routes,
        Route("/rest/v1/{path:path}", api.unknown_path, methods=_ALL_METHODS),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _routing_error})
    # PostgREST never redirects; a client following a redirect would replay a POST as GET.
    app.router.redirect_slashes = False
    return app
