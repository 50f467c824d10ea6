"""Settings: one setting, three spellings (field `database_url`, env `STALWART_DATABASE_URL`,
flag `--database-url`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr
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

    # -- the LLM gateway ---------------------------------------------------------------------------
    llm_tiers: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Models per tier, first choice first: {"small": ["openai:gpt-4o-mini"], '
        '"medium": [...], "large": [...]}. Overrides the routes the app declares.',
    )
    openai_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, LM Studio)."
    )
    openai_api_key: SecretStr | None = Field(None, description="Key for openai:* models.")
    anthropic_base_url: str | None = Field(None, description="Anthropic API endpoint.")
    anthropic_api_key: SecretStr | None = Field(None, description="Key for anthropic:* models.")
    anthropic_open_telemetry: bool = Field(
        False, description="Let the anthropic SDK emit its own OpenTelemetry spans."
    )
    llm_endpoints: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='More providers by name: {"ollama": {"kind": "openai", "base_url": '
        '"http://127.0.0.1:11434/v1", "api_key": "..."}}; route to them as "ollama:llama3.2".',
    )
    llm_timeout_seconds: float = Field(60.0, gt=0, description="One model call's timeout.")
    llm_max_reasks: int = Field(
        2, ge=0, description="Re-asks after an answer that fails its output schema."
    )
    llm_prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Prices per model, overriding genai-prices: {"openai:gpt-4o-mini": '
        '{"input_per_mtok": 0.15, "output_per_mtok": 0.6}}.',
    )
    llm_cache_ttl_seconds: float | None = Field(
        None, gt=0, description="How long cached answers live (unset: until erased)."
    )
    tenant_daily_usd: float | None = Field(
        None, ge=0, description="Default LLM spend limit per tenant per UTC day."
    )
    tenant_monthly_usd: float | None = Field(
        None, ge=0, description="Default LLM spend limit per tenant per UTC month."
    )
    budget_warning_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of a budget that emits its one warning."
    )
    context_window_tokens: int = Field(
        16_000, ge=256, description="Context window assumed for LLM steps that set none."
    )
    context_summarize_ratio: float = Field(
        0.75, gt=0, le=1, description="Context share past which the oldest part is summarized."
    )

    # -- the server -------------------------------------------------------------------------------
    webhook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='HMAC secrets of signed webhooks, by workflow: {"invoice": "..."}; replaces '
        "the secret in the workflow's Webhook.",
    )
    session_hours: float = Field(12.0, gt=0, description="How long a web UI sign-in lasts.")
    event_stream_poll_seconds: float = Field(
        0.5, gt=0, description="How often an event stream looks for new events."
    )

    # -- memory -----------------------------------------------------------------------------------
    embedder: str = Field(
        "auto",
        description='How memory is embedded: "auto" (the local model when '
        'stalwart[local-embed] is installed, else none), "local", "openai:<model>" '
        '(through the LLM gateway: priced, budgeted, in the ledger) or "none" (recall ranks '
        "lexically, BM25).",
    )
    memory_episodes: bool = Field(
        True, description="Store an episode of every job that ends, for later jobs to recall."
    )
    memory_interval_seconds: float = Field(
        2.0, gt=0, description="How often a worker records the episodes of ended jobs."
    )
    memory_chunk_tokens: int = Field(
        200, ge=16, le=4000, description="Words per chunk of a knowledge document."
    )
    memory_chunk_overlap: int = Field(
        40, ge=0, description="Words a chunk repeats from the end of the one before."
    )
    memory_hnsw_ef_search: int = Field(
        200,
        ge=1,
        le=1000,
        description="PostgreSQL with pgvector: candidates an HNSW search keeps (higher finds "
        "more of the exact nearest, slower).",
    )
    memory_recall_tokens: int = Field(
        1500, ge=0, description="Tokens of a prompt that recalled memory may fill."
    )

    # -- observability ----------------------------------------------------------------------------
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines as JSON, as text, or (auto) text on a terminal, else JSON."
    )
    trace_content: bool = Field(
        False,
        description="Record prompts, completions, tool arguments and results on spans (off: "
        "only sizes, ids and outcomes).",
    )
    alert_hooks: list[str] = Field(
        default_factory=lambda: ["log"],
        description='Where alerts go: "log", "command:<shell command>" (the incident as JSON on '
        "stdin), or an http(s) URL on your network (POSTed as JSON).",
    )
    alert_interval_seconds: float = Field(
        30.0, gt=0, description="How often alert rules are evaluated."
    )
    alert_window_seconds: float = Field(
        900.0, gt=0, description="The recent window alert rules look at."
    )
    alert_baseline_seconds: float = Field(
        86400.0, gt=0, description="The rolling baseline the recent window is compared with."
    )
    alert_min_jobs: int = Field(
        5, ge=1, description="Jobs a window needs before rate and cost rules judge it."
    )
    alert_success_drop: float = Field(
        0.2, gt=0, le=1, description="Fire when the success rate falls this far below baseline."
    )
    alert_cost_factor: float = Field(
        2.0, gt=1, description="Fire when cost per job passes this multiple of its average."
    )
