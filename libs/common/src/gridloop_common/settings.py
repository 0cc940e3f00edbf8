"""Settings fragments shared by every service: broker, database and observability.

Each service composes the fragments it needs into its own ``BaseSettings`` class; no fragment
holds a field that belongs to one service. Nothing here is read at import time.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Literal, NoReturn, TypeVar

from pydantic import AmqpDsn, Field, PostgresDsn, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "AmqpSettings",
    "HttpServerSettings",
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


class HttpServerSettings(BaseSettings):
    """Limits and proxy trust of every HTTP server a service runs (API, webhooks, health and metrics)."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    # Nothing is trusted by default: a forwarded address is believed only from a proxy the operator names.
    # Trusting 127.0.0.1 (uvicorn's default) would let any local process, or a sidecar the operator did not
    # mean to trust, choose the client address that rate limits are keyed on.
    forwarded_allow_ips: str = Field(
        default="",
        description="Proxies whose X-Forwarded-For/-Proto are believed: IPs or CIDRs, comma-separated, or *.",
    )
    http_max_header_bytes: int = Field(
        default=32_768, ge=1024, le=1_048_576, description="Largest request line and headers (431 past it)."
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Seconds a request's headers may take to arrive in full."
    )
    http_body_timeout_s: float = Field(
        default=15.0, gt=0, le=3600, description="Seconds a request's body may take to arrive after its headers."
    )
    http_keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=300, description="Seconds an idle keep-alive connection stays open."
    )
    http_limit_concurrency: int = Field(
        default=1000, ge=1, le=100_000, description="Connections and requests in hand before 503 answers."
    )
    http_max_connections: int = Field(
        default=1200, ge=1, le=100_000, description="Open connections; one past it is closed when accepted."
    )

    def forwarded_allow_list(self) -> list[str]:
        """The trusted proxies, as uvicorn takes them; empty when none is trusted."""
        return [part.strip() for part in self.forwarded_allow_ips.split(",") if part.strip()]

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses_or_networks(cls, value: str) -> str:
        for part in (item.strip() for item in value.split(",")):
            if part and part != "*":
                try:
                    ipaddress.ip_network(part, strict=False)
                except ValueError:
                    raise ValueError(f"{part!r} is not an IP address, a CIDR network or *") from None
        return value

    @field_validator("http_max_connections")
    @classmethod
    def _connections_hold_the_concurrency(cls, value: int, info: ValidationInfo) -> int:
        concurrency = info.data.get("http_limit_concurrency")
        if concurrency is not None and value < concurrency:
            raise ValueError(f"must be at least GRIDLOOP_HTTP_LIMIT_CONCURRENCY ({concurrency})")
        return value


class UpstreamSettings(BaseSettings):
    """The upstream aggregator's HTTP API (docs/design.md §3)."""

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
