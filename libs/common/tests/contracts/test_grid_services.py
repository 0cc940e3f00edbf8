"""The operator RPC contract (docs/design.md §8): scope, MPC defaults, the reply envelope, the routing keys."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from gridloop_common.contracts import (
    OPERATOR_REQUESTS,
    FlatTariffRequest,
    MpcRequest,
    MpcStopRequest,
    OperatorReply,
    next_step_boundary,
    routing,
)

PRICES = {"2026-06-01T19:00:00Z": 0.07}
LIMITS = {"2026-06-01T19:00:00Z": 7.0}
EASTERN = timezone(timedelta(hours=-4))


@pytest.mark.parametrize(
    ("now", "interval", "boundary"),
    [
        (datetime(2026, 6, 1, 18, 7, 30, tzinfo=UTC), 10, datetime(2026, 6, 1, 18, 10, tzinfo=UTC)),
        (datetime(2026, 6, 1, 18, 10, tzinfo=UTC), 10, datetime(2026, 6, 1, 18, 20, tzinfo=UTC)),  # strictly after
        (datetime(2026, 6, 1, 23, 59, tzinfo=UTC), 15, datetime(2026, 6, 2, 0, 0, tzinfo=UTC)),
        (
            datetime(2026, 6, 1, 18, 7, tzinfo=timezone(timedelta(hours=-4))),
            60,
            datetime(2026, 6, 1, 23, 0, tzinfo=UTC),
        ),
        (datetime(2026, 6, 1, 18, 7, 1, tzinfo=UTC), 1, datetime(2026, 6, 1, 18, 8, tzinfo=UTC)),
    ],
)
def test_next_step_boundary(now: datetime, interval: int, boundary: datetime) -> None:
    assert next_step_boundary(now, interval) == boundary


def test_an_mpc_without_start_and_stop_runs_two_hours_from_the_next_boundary() -> None:
    request = MpcRequest.model_validate({"prices": PRICES, "power_limit": LIMITS, "interval": 15})
    resolved = request.resolved(datetime(2026, 6, 1, 18, 7, tzinfo=UTC))

    assert (resolved.start, resolved.stop) == (
        datetime(2026, 6, 1, 18, 15, tzinfo=UTC),
        datetime(2026, 6, 1, 20, 15, tzinfo=UTC),
    )
    given = request.model_copy(update={"start": resolved.start, "stop": resolved.stop})
    assert given.resolved(datetime(2030, 1, 1, tzinfo=UTC)) is given  # nothing to fill in


def test_a_default_that_breaks_the_window_names_the_field() -> None:
    early_stop = MpcRequest.model_validate({"prices": PRICES, "power_limit": LIMITS, "stop": "2026-06-01T18:00:00Z"})
    at_the_end = MpcRequest.model_validate(
        {"prices": PRICES, "power_limit": LIMITS, "start": "9999-12-31T23:00:00+00:00"}
    )

    for request in (early_stop, at_the_end):
        with pytest.raises(ValidationError) as refused:
            request.resolved(datetime(2026, 6, 1, 18, 7, tzinfo=UTC))
        assert [error["loc"] for error in refused.value.errors()] == [("stop",)]


@pytest.mark.parametrize(
    ("site", "parsed"), [(None, None), ("north", ["north"]), (["north", "south"], ["north", "south"])]
)
def test_the_scope_is_a_list_or_none(site: object, parsed: list[str] | None) -> None:
    assert MpcStopRequest.model_validate({"site": site}).site == parsed
    assert MpcStopRequest().site is None


@pytest.mark.parametrize("site", [[], "", ["x" * 256], 5, {"name": "north"}, [None], True])
def test_a_bad_scope_names_site(site: object) -> None:
    with pytest.raises(ValidationError) as refused:
        FlatTariffRequest.model_validate({"date": "2026-06-02T00:00:00Z", "site": site})
    assert {error["loc"][0] for error in refused.value.errors()} == {"site"}


def test_the_reply_envelope() -> None:
    assert OperatorReply.model_validate_json(b'{"body": {"run_id": "r1"}}') == OperatorReply(
        status=200, body={"run_id": "r1"}
    )
    refused = OperatorReply.refused(
        409, "no_prices", "nothing to plan with", errors=[{"field": "date", "message": "x"}]
    )
    assert refused.model_dump() == {
        "status": 409,
        "body": {
            "error": "no_prices",
            "message": "nothing to plan with",
            "errors": [{"field": "date", "message": "x"}],
        },
    }
    for broken in ({"status": 500, "body": {}}, {"status": 199, "body": {}}, {"body": []}, {"status": 200}):
        with pytest.raises(ValidationError):
            OperatorReply.model_validate(broken)


def test_every_operator_routing_key_has_one_request_model_and_reaches_the_optimizer_queue() -> None:
    assert set(OPERATOR_REQUESTS) == set(routing.OperatorRpc.ALL)
    assert len(set(routing.OperatorRpc.ALL)) == len(routing.OperatorRpc.ALL)
    for routing_key in routing.OperatorRpc.ALL:
        # optimizer.rpc is bound with optimizer.#: one more word after "optimizer." and it still matches.
        assert routing_key.startswith("optimizer.") and routing.RoutingKeys.OPTIMIZER_ALL == "optimizer.#"
