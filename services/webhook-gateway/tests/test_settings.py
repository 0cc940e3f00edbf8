"""The gateway's settings for the operator endpoints: the key secret is required and long enough."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from webhook_gateway.settings import GatewaySettings

from .conftest import JWT_SECRET, SECRET


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GRIDLOOP_JWT_SECRET", "GRIDLOOP_GATEWAY_RPC_TIMEOUT_S", "GRIDLOOP_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)


def test_the_rpc_timeout_defaults_to_ten_seconds() -> None:
    settings = GatewaySettings(webhook_secret=SECRET, jwt_secret=JWT_SECRET)  # type: ignore[arg-type]

    assert settings.gateway_rpc_timeout_s == 10.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({}, "jwt_secret"),
        ({"jwt_secret": "x" * 31}, "jwt_secret"),
        ({"jwt_secret": JWT_SECRET, "gateway_rpc_timeout_s": 0}, "gateway_rpc_timeout_s"),
    ],
)
def test_a_missing_or_weak_setting_is_refused(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        GatewaySettings(webhook_secret=SECRET, **overrides)  # type: ignore[arg-type]
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]
