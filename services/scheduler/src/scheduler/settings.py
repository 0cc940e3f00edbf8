"""Settings of the scheduler, read from the environment once at start-up."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridloop_common.settings import (
    AmqpSettings,
    HttpServerSettings,
    ObservabilitySettings,
    PostgresSettings,
    UpstreamSettings,
)

__all__ = ["SchedulerSettings"]


class SchedulerSettings(BaseSettings):
    """Everything the scheduler needs; see README.md for each variable."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    scheduler_host: str = Field(default="0.0.0.0", description="Address the health/metrics server binds.")
    scheduler_port: int = Field(default=9101, ge=1, le=65535, description="Health and metrics port.")
    upstream_ack_path: str = Field(
        default="/v1/commands/{id}",
        description="PATCH path template for acknowledgements ({id} = command id).",
    )
    upstream_max_envelope_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest upstream envelope taken from the queue; larger ones are dead-lettered, not stored.",
    )
    agent_revert_timeout_s: int = Field(
        default=60,
        ge=10,
        le=3600,
        description="The device-agent's revert timer (the agent's own setting, shared): a cancellation whose "
        "release the agent does not confirm is acknowledged once this long has passed since the stop was sent.",
    )
    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    http: HttpServerSettings = Field(default_factory=HttpServerSettings)

    @field_validator("upstream_ack_path")
    @classmethod
    def _path_names_the_command(cls, value: str) -> str:
        if "{id}" not in value or not value.startswith("/"):
            raise ValueError("must start with / and contain {id}")
        return value
