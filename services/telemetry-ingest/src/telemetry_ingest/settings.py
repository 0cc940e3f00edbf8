"""Settings of telemetry-ingest and the Flux API, read from the environment once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gridloop_common.settings import (
    AmqpSettings,
    HttpServerSettings,
    ObservabilitySettings,
    PostgresSettings,
    UpstreamSettings,
)

__all__ = ["IngestSettings", "RoleLimits"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class RoleLimits:
    """What one request of a role may cost: its statement's time, its body's size, its insert's rows."""

    statement_timeout_s: float
    max_body_bytes: int
    max_insert_rows: int


class IngestSettings(BaseSettings):
    """Everything telemetry-ingest needs; see README.md for each variable."""

    model_config = SettingsConfigDict(env_prefix="GRIDLOOP_", extra="ignore")

    ingest_host: str = Field(default="0.0.0.0", description="Address the API server binds.")
    ingest_port: int = Field(default=8081, ge=1, le=65535, description="Flux REST/realtime API, health, metrics.")
    jwt_secret: SecretStr = Field(description="HS256 secret that signs the anon/authenticated/service_role JWTs.")
    ingest_batch_size: int = Field(
        default=10_000,
        ge=1,
        le=100_000,
        description="Most readings per transaction when the readings of concurrent messages are written together.",
    )
    # The group commit can only merge what the broker has delivered: with the shared default of 32 messages
    # (6,400 readings of 200), one 5,000-reading transaction left the next one a few messages to write, and
    # the consumer waited on acks and deliveries instead of on the database. 256 messages of 200 readings
    # are ~40 MB of JSON in hand at most.
    ingest_prefetch: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="Unacked reading messages telemetry-ingest holds (its own GRIDLOOP_AMQP_PREFETCH).",
    )
    rollup_settle_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="Seconds a touched 30-minute period waits before its rollups are recomputed (their lag).",
    )
    reorder: bool = Field(default=True, description="Rewrite closed days of readings in device order (on/off).")
    reorder_after_s: float = Field(
        default=3600.0,
        ge=0,
        le=7 * 86_400,
        description="Seconds after a UTC day ends before its readings are rewritten in device order.",
    )
    reorder_interval_s: float = Field(
        default=900.0, gt=0, le=86_400, description="Seconds between looks for days to rewrite in device order."
    )
    # Realtime limits, Supabase Realtime's kind (it caps channels per client, joins per second and users): one
    # anon client once held 150,000 bindings and stalled the event loop ingest and the REST API share.
    realtime_max_bindings_per_join: int = Field(
        default=100, ge=1, le=10_000, description="Most postgres_changes bindings in one realtime channel join."
    )
    realtime_max_bindings_per_socket: int = Field(
        default=500, ge=1, le=100_000, description="Most postgres_changes bindings on one realtime connection."
    )
    realtime_max_channels_per_socket: int = Field(
        default=100, ge=1, le=10_000, description="Most joined channels on one realtime connection."
    )
    realtime_max_sockets_per_key: int = Field(
        default=500, ge=1, le=1_000_000, description="Most open realtime connections per API key (or user)."
    )
    realtime_max_sockets_per_address: int = Field(
        default=20, ge=1, le=1_000_000, description="Most open realtime connections per client address."
    )
    realtime_joins_per_second: float = Field(
        default=10.0, gt=0, le=10_000, description="Channel joins per second per realtime connection, after a burst."
    )
    realtime_max_frame_bytes: int = Field(
        default=1 << 20, ge=1024, le=16 << 20, description="Largest realtime websocket frame a client may send."
    )
    # Per-role limits of the Flux API. Supabase gives anon 3 s and authenticated 8 s of statement time; the anon
    # key is public, so one anonymous request must not hold a connection for long.
    api_statement_timeout_anon_s: float = Field(
        default=3.0, gt=0, le=600, description="Statement timeout of a Flux API request with the anon key."
    )
    api_statement_timeout_authenticated_s: float = Field(
        default=8.0, gt=0, le=600, description="Statement timeout of a Flux API request with an authenticated key."
    )
    api_statement_timeout_service_role_s: float = Field(
        default=30.0, gt=0, le=600, description="Statement timeout of a Flux API request with the service_role key."
    )
    api_max_body_bytes_anon: int = Field(
        default=_MIB, ge=1024, le=1024 * _MIB, description="Largest Flux API request body with the anon key (bytes)."
    )
    api_max_body_bytes_authenticated: int = Field(
        default=16 * _MIB,
        ge=1024,
        le=1024 * _MIB,
        description="Largest Flux API request body with an authenticated key (bytes).",
    )
    api_max_body_bytes_service_role: int = Field(
        default=16 * _MIB,
        ge=1024,
        le=1024 * _MIB,
        description="Largest Flux API request body with the service_role key (bytes).",
    )
    api_max_insert_rows_anon: int = Field(
        default=1000, ge=1, le=1_000_000, description="Most rows one Flux API insert may carry with the anon key."
    )
    api_max_insert_rows_authenticated: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Most rows one Flux API insert may carry with an authenticated key.",
    )
    api_max_insert_rows_service_role: int = Field(
        default=50_000,
        ge=1,
        le=1_000_000,
        description="Most rows one Flux API insert may carry with the service_role key.",
    )
    api_max_filters: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Most filters (and/or tree leaves included) one Flux API request may hold.",
    )
    api_connections_per_client: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Database connections one API key (anon: one client address) may use at once; more wait, then 429.",
    )
    api_reserved_connections: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Pool connections the Flux API never takes: kept for the readings consumer and /readyz.",
    )
    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    database: PostgresSettings = Field(default_factory=PostgresSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    http: HttpServerSettings = Field(default_factory=HttpServerSettings)
    telemetry_upload: bool = Field(default=True, description="Upload battery telemetry upstream (on/off).")
    # At most 300 s: the upstream wants every device reported at least every five minutes.
    telemetry_upload_interval_s: float = Field(default=60.0, gt=0, le=300, description="Seconds between uploads.")
    telemetry_upload_batch_size: int = Field(
        default=1000, ge=1, le=1000, description="Points per upstream request (the upstream takes at most 1,000)."
    )
    telemetry_upload_max_batches: int = Field(
        default=10, ge=1, le=1000, description="Requests per upload cycle; a longer backlog waits for the next."
    )

    @property
    def consumer_amqp(self) -> AmqpSettings:
        """The broker settings of the readings consumer: the shared ones, with the ingest's own prefetch."""
        return self.amqp.model_copy(update={"amqp_prefetch": self.ingest_prefetch})

    def role_limits(self) -> dict[str, RoleLimits]:
        """The per-role limits of the Flux API, by database role."""
        return {
            "anon": RoleLimits(
                self.api_statement_timeout_anon_s, self.api_max_body_bytes_anon, self.api_max_insert_rows_anon
            ),
            "authenticated": RoleLimits(
                self.api_statement_timeout_authenticated_s,
                self.api_max_body_bytes_authenticated,
                self.api_max_insert_rows_authenticated,
            ),
            "service_role": RoleLimits(
                self.api_statement_timeout_service_role_s,
                self.api_max_body_bytes_service_role,
                self.api_max_insert_rows_service_role,
            ),
        }

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value
