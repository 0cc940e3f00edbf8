"""Settings fragments shared by every service: broker, database and observability.

Each service composes the fragments it needs into its own ``BaseSettings`` class; no fragment
holds a field that belongs to one service. Nothing here is read at import time.
"""

from __future__ import annotations

import sys
from typing import Literal, NoReturn, TypeVar

from pydantic import AmqpDsn, Field, PostgresDsn, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "AmqpSettings",
    "ObservabilitySettings",
    "PostgresSettings",
    "UpstreamSettings",
    "load_settings",
]

_SettingsT = TypeVar("_SettingsT", bound=BaseSettings)


class AmqpSettings(BaseSettings):
    """How a service reaches RabbitMQ."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    amqp_url: AmqpDsn = Field(
        default=AmqpDsn("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ connection URL.",
    )
    amqp_prefetch: int = Field(default=32, ge=1, le=10_000, description="Unacked messages per consumer.")
    amqp_confirm_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Seconds to wait for a publisher confirm."
    )


class PostgresSettings(BaseSettings):
    """How a service reaches PostgreSQL."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    database_url: PostgresDsn = Field(
        default=PostgresDsn("postgresql://postgres@127.0.0.1:5432/gridloop"),
        description="PostgreSQL connection URL.",
    )
    database_pool_min: int = Field(default=1, ge=0, le=100, description="Connections kept open.")
    database_pool_max: int = Field(default=10, ge=1, le=500, description="Most connections opened.")


class ObservabilitySettings(BaseSettings):
    """Logging and start-up behaviour."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Lowest level logged.")
    startup_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds to keep retrying the broker and database at start-up."
    )
    shutdown_timeout_s: float = Field(
        default=15.0, gt=0, le=60, description="Seconds in-flight work may take to finish after SIGTERM."
    )


class UpstreamSettings(BaseSettings):
    """The upstream aggregator's HTTP API (seed 002)."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    upstream_url: str = Field(default="http://127.0.0.1:8090", description="Base URL of the upstream API.")
    upstream_token: SecretStr = Field(default=SecretStr(""), description="Bearer token for the upstream.")


def _describe(error: ValidationError, *, env_prefix: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    variable = f"{env_prefix}{location}".upper().replace(".", "_") if location else env_prefix.rstrip("_")
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"invalid setting {variable}: {first['msg']}{extra}"


def load_settings(settings_class: type[_SettingsT], *, program: str) -> _SettingsT:
    """Build settings from the environment, or stop the process with one clear line and exit code 2."""
    try:
        return settings_class()
    except ValidationError as error:
        prefix = str(settings_class.model_config.get("env_prefix", ""))
        _exit_with(f"{program}: {_describe(error, env_prefix=prefix)}")


def _exit_with(line: str) -> NoReturn:
    print(line, file=sys.stderr)
    raise SystemExit(2)
