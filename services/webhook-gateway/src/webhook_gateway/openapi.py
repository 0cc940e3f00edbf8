"""The OpenAPI 3.1 description of the operator endpoints, generated from their contract models.

Served at ``GET /openapi.json`` (no key needed); ``tests/test_operator_openapi.py`` checks it against the
endpoints as they answer.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel

from webhook_gateway.operator_endpoints import ENDPOINTS, NOT_BUILT

__all__ = ["OPENAPI_PATH", "document"]

OPENAPI_PATH: Final = "/openapi.json"
_REF_TEMPLATE: Final = "#/components/schemas/{model}"

_ERROR_SCHEMA: Final = {
    "type": "object",
    "description": "Every error answer of the gateway.",
    "properties": {
        "error": {"type": "string", "description": "A short code: invalid_request, unauthorized, gateway_timeout..."},
        "message": {"type": "string", "description": "What is wrong, for a person."},
        "errors": {
            "type": "array",
            "description": "Each bad field (422, 400).",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                "required": ["field", "message"],
            },
        },
    },
    "required": ["error", "message"],
}

# Status -> what it means on every operator endpoint.
_ERRORS: Final = {
    "400": "The body is not JSON gridloop accepts (NaN, \\u0000, nesting over 64...).",
    "401": "No API key, or an invalid one (WWW-Authenticate says which).",
    "403": "A valid key whose role is neither service_role nor grid_operator.",
    "413": "The body is larger than GRIDLOOP_WEBHOOK_MAX_BODY_BYTES.",
    "415": "A body that is not Content-Type: application/json.",
    "422": "A field is wrong; `errors` names each one. The service may also refuse a request this way.",
    "502": "The service behind the endpoint failed, or answered something that is not an OperatorReply.",
    "503": "The broker could not take the request (Retry-After: 5).",
    "504": "No reply within GRIDLOOP_GATEWAY_RPC_TIMEOUT_S.",
}


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    collected: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF_TEMPLATE)
        collected.update(schema.pop("$defs", {}))
        collected[model.__name__] = schema
    return collected


# Answered by the HTTP server itself (gridloop_common.observability), before any endpoint, as plain text.
_HEADERS_TOO_LARGE: Final = {
    "description": "The request line and headers (query string included) are over GRIDLOOP_HTTP_MAX_HEADER_BYTES.",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _error_responses(*statuses: str) -> dict[str, Any]:
    reference = {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model="Error")}}}
    found: dict[str, Any] = {status: {"description": _ERRORS[status], "content": reference} for status in statuses}
    return {**found, "431": _HEADERS_TOO_LARGE}


def document() -> dict[str, Any]:
    """The OpenAPI document as a mapping."""
    paths: dict[str, Any] = {}
    models: list[type[BaseModel]] = []
    site_parameter = {
        "name": "site",
        "in": "query",
        "required": False,
        "description": "Only with an empty body: the sites it applies to (repeat for several); none: every site.",
        "schema": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 255}},
        "style": "form",
        "explode": True,
    }
    for endpoint in ENDPOINTS:
        models.append(endpoint.request)
        body_schema: dict[str, Any] = {"$ref": _REF_TEMPLATE.format(model=endpoint.request.__name__)}
        description = (
            f"{endpoint.summary}\n\nSent on `gridloop.rpc` with routing key `{endpoint.routing_key}`; the answer "
            "is the status and body of the service's OperatorReply. An empty body is `{}`."
        )
        if endpoint.without_body is not None:
            routing_key, model, meaning = endpoint.without_body
            models.append(model)
            description = (
                f"{endpoint.summary}\n\n{meaning} (routing key `{routing_key}`, request {model.__name__}).\n\n"
                f"With a body: sent on `gridloop.rpc` with routing key `{endpoint.routing_key}`; the answer is the "
                "status and body of the service's OperatorReply."
            )
        paths[endpoint.path] = {
            "post": {
                "operationId": endpoint.routing_key.removeprefix("optimizer."),
                "summary": endpoint.summary,
                "description": description,
                "security": [{"bearer": []}, {"apikey": []}],
                "parameters": [site_parameter],
                "requestBody": {"required": False, "content": {"application/json": {"schema": body_schema}}},
                "responses": {
                    "200": {
                        "description": "The service's answer (docs/design.md §8 gives each endpoint's fields).",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_error_responses("400", "401", "403", "413", "415", "422", "502", "503", "504"),
                    "404": {
                        "description": "What the service answers for a run_id it does not know.",
                        "content": {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model="Error")}}},
                    },
                    "409": {
                        "description": "The service cannot do it now (no prices for the day...); message says why.",
                        "content": {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model="Error")}}},
                    },
                },
            }
        }
    for not_built in NOT_BUILT:
        paths[not_built.path] = {
            not_built.method.lower(): {
                "operationId": not_built.path.strip("/").replace("-", "_"),
                "summary": f"{not_built.what.capitalize()}: not built yet (gridloop issue {not_built.issue}).",
                "security": [{"bearer": []}, {"apikey": []}],
                "responses": {
                    "501": {
                        "description": f"Answered until gridloop issue {not_built.issue} builds it.",
                        "content": {"application/json": {"schema": {"$ref": _REF_TEMPLATE.format(model="Error")}}},
                    },
                    **_error_responses("401", "403"),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gridloop operator endpoints",
            "version": "1.0.0",
            "description": (
                "The grid operator's endpoints of the webhook gateway (docs/design.md §8). Each takes an API key "
                "(`gridloop keys`) whose role is service_role or grid_operator, checks its body against the "
                "contract model below, and makes one RPC over RabbitMQ to the service that owns the work."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted({**_schemas(*models), "Error": _ERROR_SCHEMA}.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apikey": {"type": "apiKey", "in": "header", "name": "apikey"},
            },
        },
    }
