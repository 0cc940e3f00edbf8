"""Settings of the optimizer, read from the environment once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridloop_common.settings import AmqpSettings, HttpServerSettings, ObservabilitySettings, PostgresSettings

__all__ = ["OptimizerSettings"]


class OptimizerSettings(BaseSettings):
    """Everything the optimizer needs; see README.md for each variable."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    optimizer_host: str = Field(default="0.0.0.0", description="Address the health/metrics server binds.")
    optimizer_port: int = Field(default=9102, ge=1, le=65535, description="Health and metrics port.")
    optimizer_time_limit_s: float = Field(
        default=5.0, gt=0, le=300, description="Most seconds one solve may take; the best plan found by then is used."
    )
    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    http: HttpServerSettings = Field(default_factory=HttpServerSettings)
