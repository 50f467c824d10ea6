"""Settings: one setting, three spellings (field `database_url`, env `STALWART_DATABASE_URL`,
flag `--database-url`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///stalwart.db"


class Settings(BaseSettings):
    """Runtime settings, read from `STALWART_*` environment variables when not given."""

    model_config = SettingsConfigDict(env_prefix="STALWART_", extra="forbid")

    database_url: str = Field(
        DEFAULT_DATABASE_URL, description="Where state lives: sqlite:///path.db (default)."
    )
    app: str | None = Field(None, description="The app to load, as module:attribute.")
    default_tenant: str = Field("default", description="Tenant used when none is given.")
    lease_seconds: float = Field(30.0, gt=0, description="How long a claimed step's lease lasts.")
    poll_interval_seconds: float = Field(0.5, gt=0, description="Idle worker's polling interval.")
    reaper_interval_seconds: float = Field(2.0, gt=0, description="How often leases are reaped.")
    drain_seconds: float = Field(30.0, ge=0, description="How long SIGTERM waits for steps.")
    worker_concurrency: int = Field(10, ge=1, description="Steps one worker runs at once.")
    dedup_window_seconds: float = Field(86400.0, ge=0, description="Idempotency-key window.")
    max_queue_depth: int = Field(10_000, ge=1, description="Unfinished jobs per tenant.")
    queue_full_retry_after_seconds: float = Field(5.0, ge=0, description="Retry-After on 429.")
    max_payload_bytes: int = Field(1_000_000, ge=1, description="Largest input or step output.")
    max_plan_steps: int = Field(100, ge=1, description="Most steps one plan may hold.")
    max_retry_attempts: int = Field(20, ge=1, description="Largest max_attempts a step may ask.")
    max_retry_cap_seconds: float = Field(3600.0, gt=0, description="Largest backoff cap allowed.")
    review_sla_seconds: float = Field(86400.0, gt=0, description="Default approval SLA.")
    sqlite_synchronous: str = Field("FULL", pattern="^(OFF|NORMAL|FULL|EXTRA)$")
    sqlite_busy_timeout_ms: int = Field(10_000, ge=0)
    pg_pool_size: int = Field(
        12, ge=2, description="Most PostgreSQL connections one process opens (plus one to listen)."
    )
    pg_connect_timeout_seconds: float = Field(
        10.0, gt=0, description="How long to wait for a PostgreSQL connection before failing."
    )
    notify_poll_interval_seconds: float = Field(
        1.0,
        gt=0,
        description="Idle polling floor when the database sends wake-ups (PostgreSQL).",
    )
