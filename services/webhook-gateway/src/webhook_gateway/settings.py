"""Settings of the webhook gateway, read from the environment once at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridloop_common.auth import MINIMUM_SECRET_LENGTH
from gridloop_common.settings import AmqpSettings, HttpServerSettings, ObservabilitySettings, UpstreamSettings
from webhook_gateway.signatures import SECRET_PREFIX, decode_secret

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseSettings):
    """Everything the gateway needs; see README.md for each variable."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    gateway_host: str = Field(default="0.0.0.0", description="Address the HTTP server binds.")
    gateway_port: int = Field(default=8080, ge=1, le=65535, description="HTTP port (webhooks, health, metrics).")
    gateway_rpc_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Seconds an operator endpoint waits for its service's reply (504)."
    )
    jwt_secret: SecretStr = Field(
        description="HS256 secret of the API keys; the operator endpoints take service_role and grid_operator keys."
    )
    webhook_secret: SecretStr = Field(
        description="Standard Webhooks secret(s), whsec_..., several separated by spaces or commas."
    )
    webhook_tolerance_s: int = Field(default=300, ge=1, le=3600, description="Accepted webhook clock skew.")
    webhook_max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest webhook body accepted.")
    upstream_poll: Literal["on", "off"] = Field(default="off", description="Poll GET {upstream}/v1/commands.")
    upstream_poll_interval_s: float = Field(default=60.0, gt=0, description="Seconds between polls (jittered).")
    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    http: HttpServerSettings = Field(default_factory=HttpServerSettings)

    @field_validator("webhook_secret")
    @classmethod
    def _secrets_are_standard_webhooks_keys(cls, value: SecretStr) -> SecretStr:
        secrets = [part for part in value.get_secret_value().replace(",", " ").split() if part]
        if not secrets:
            raise ValueError("at least one secret is required")
        for position, secret in enumerate(secrets, start=1):
            if not secret.startswith(SECRET_PREFIX) or len(secret) <= len(SECRET_PREFIX):
                raise ValueError("each secret must look like whsec_<base64>")
            try:
                # Decoded here, at start-up, so a bad key stops the service with one line instead of a
                # traceback when the first delivery arrives.
                decode_secret(secret)
            except ValueError as error:
                raise ValueError(f"secret {position} of {len(secrets)}: {error}") from None
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MINIMUM_SECRET_LENGTH:
            raise ValueError(f"must be at least {MINIMUM_SECRET_LENGTH} characters")
        return value

    def webhook_secrets(self) -> list[str]:
        """The active secrets, in the order given."""
        return [part for part in self.webhook_secret.get_secret_value().replace(",", " ").split() if part]
