"""Schemathesis against the OpenAPI description at /rest/v1/: generated requests never get a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .api_fixtures import ControlledClock, headers_for, key
from .api_fixtures import api_clock as api_clock
from .api_fixtures import api_server as api_server
from .api_fixtures import api_url as api_url

pytestmark = pytest.mark.connected

EXAMPLES_PER_OPERATION = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_generated_requests_get_no_server_error(api_url: str, api_clock: ControlledClock, mode: GenerationMode) -> None:
    service = key("service_role")
    schema = schemathesis.openapi.from_url(f"{api_url}/rest/v1/", headers=headers_for(service))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5 * 5 + 2 * 2  # five methods on every table, two on each RPC
    session = requests.Session()
    calls = 0

    for operation in operations:
        # Each operation starts with a full bucket: the fuzzing is about inputs, not about the rate limit.
        api_clock.advance(3600)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=f"{api_url}/rest/v1", session=session, headers=headers_for(service))
            case.validate_response(response, checks=CHECKS)

        exercise()
    assert calls >= len(operations)
