"""Settings fragments and the one-line exit on a bad setting."""

from __future__ import annotations

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridloop_common.settings import AmqpSettings, HttpServerSettings, PostgresSettings, load_settings


class _ExampleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    example_port: int
    amqp: AmqpSettings = AmqpSettings()


def test_defaults_follow_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GRIDLOOP_AMQP_URL", "GRIDLOOP_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert str(AmqpSettings().amqp_url) == "amqp://guest:guest@127.0.0.1:5672/"
    assert str(PostgresSettings().database_url) == "postgresql://postgres@127.0.0.1:5432/gridloop"


def test_missing_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRIDLOOP_EXAMPLE_PORT", raising=False)
    with pytest.raises(SystemExit) as stopped:
        load_settings(_ExampleSettings, program="gridloop-example")
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error == "gridloop-example: invalid setting GRIDLOOP_EXAMPLE_PORT: Field required\n"


def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRIDLOOP_EXAMPLE_PORT", "eighty")
    with pytest.raises(SystemExit):
        load_settings(_ExampleSettings, program="gridloop-example")
    assert capsys.readouterr().err.startswith("gridloop-example: invalid setting GRIDLOOP_EXAMPLE_PORT: ")


class _ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    http: HttpServerSettings = Field(default_factory=HttpServerSettings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GRIDLOOP_FORWARDED_ALLOW_IPS", "10.0.0.0/8,ingress-nginx"),
        ("GRIDLOOP_HTTP_MAX_CONNECTIONS", "10"),
        ("GRIDLOOP_HTTP_MAX_HEADER_BYTES", "10"),
    ],
)
def test_a_bad_http_limit_or_proxy_stops_the_service_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(_ServerSettings, program="gridloop-example")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(f"gridloop-example: invalid setting {variable}: ")


def test_no_proxy_is_trusted_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDLOOP_FORWARDED_ALLOW_IPS", raising=False)
    assert HttpServerSettings().forwarded_allow_list() == []
