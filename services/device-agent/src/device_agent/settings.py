"""Settings of the device agent, read from the environment once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridloop_common.settings import AmqpSettings, HttpServerSettings, ObservabilitySettings, PostgresSettings

__all__ = ["DeviceAgentSettings"]


class DeviceAgentSettings(BaseSettings):
    """Everything the device agent needs; see README.md for each variable."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    agent_host: str = Field(default="0.0.0.0", description="Address the health/metrics server binds.")
    agent_port: int = Field(default=9103, ge=1, le=65535, description="Health and metrics port.")
    agent_poll_interval_s: float = Field(default=5.0, gt=0, le=3600, description="Seconds between telemetry polls.")
    agent_registry_refresh_s: float = Field(
        default=30.0, gt=0, description="Seconds between re-reads of flux.mg_device_registry."
    )
    agent_revert_timeout_s: int = Field(
        default=60, ge=10, le=3600, description="Revert timer written with every control (InOutWRte_RvrtTms)."
    )
    ocpp_port: int = Field(
        default=9000,
        ge=0,
        le=65535,
        description="Port of the OCPP-J central system EV chargers dial in to; 0: none.",
        json_schema_extra={"published_port": "ocpp"},  # a second port the deployment publishes (tests/deploy)
    )
    ocpp_heartbeat_interval_s: int = Field(
        default=60, ge=1, le=86400, description="Heartbeat interval given to chargers in the BootNotification answer."
    )
    ocpp_offline_margin_s: float = Field(
        default=15.0, gt=0, le=600, description="A charger silent for a heartbeat interval plus this is offline."
    )
    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    http: HttpServerSettings = Field(default_factory=HttpServerSettings)
