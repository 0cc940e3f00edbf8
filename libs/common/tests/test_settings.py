"""Settings fragments and the one-line exit on a bad setting."""

from __future__ import annotations

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridloop_common.settings import AmqpSettings, PostgresSettings, load_settings


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
