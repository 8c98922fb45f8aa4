"""Configuration: one pydantic-settings class, read from ``BITFACTOR_*`` variables.

The defaults are the embedded setup: everything under one data directory (``./var``), a
SQLite database and an artifact directory inside it, and no broker URL, which means the
embedded broker that needs no server. Scale-out only changes these values.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "placeholder", "xxx"}


class Settings(BaseSettings):
    """Every setting of bitfactor; each field is also ``BITFACTOR_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="BITFACTOR_", extra="ignore")

    environment: str = Field(
        default="development",
        description="'development' or 'production'; production refuses placeholder secrets.",
    )
    data_dir: Path = Field(
        default=Path("./var"), description="Root of everything bitfactor stores locally."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite file <data_dir>/bitfactor.db.",
    )
    artifacts_dir: Path | None = Field(
        default=None,
        description="Where uploads and packed models live; default <data_dir>/artifacts.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (e.g. redis://127.0.0.1:6379/0); default: embedded, no server.",
    )
    secret_key: str = Field(
        default="dev-insecure-secret",
        description="Server secret (HMAC of API keys); must be set in production.",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Largest accepted model or dataset upload."
    )
    # Service (api/, worker/): jobs, predict and the worker's limits.
    job_soft_time_limit: int = Field(
        default=6 * 3600, gt=0, description="Seconds before a job is asked to stop (soft limit)."
    )
    job_hard_time_limit: int = Field(
        default=6 * 3600 + 300, gt=0, description="Seconds before a job's process is killed."
    )
    job_max_attempts: int = Field(
        default=3, ge=1, description="Deliveries of one job before it fails (worker lost)."
    )
    job_queue: str = Field(
        default="gpu",
        pattern=r"^[A-Za-z0-9_.-]{1,100}$",
        description="Celery queue of training jobs (the API sends there; workers consume it).",
    )
    job_lease_seconds: float = Field(
        default=60.0,
        ge=2.0,
        description="A running job whose heartbeat is older than this is requeued (worker lost).",
    )
    db_retry_seconds: float = Field(
        default=300.0,
        ge=0.0,
        description="How long a worker retries a database write that fails transiently.",
    )
    predict_max_elements: int = Field(
        default=4_000_000, gt=0, description="Largest predict input (number of values)."
    )
    predict_max_batch: int = Field(
        default=4096, gt=0, description="Largest predict batch (first dimension), /v1 and /v2."
    )
    # API limits (api/limits.py): request bodies, per-key rate, per-request deadline.
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="Largest request body outside the uploads (JSON, /v2 binary tensors).",
    )
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="Requests per minute per API key (0 = no rate limit)."
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="Requests one key may send at once (token bucket size)."
    )
    request_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a handler has to start its answer (0 = no deadline; not uploads).",
    )
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes 'bitfactor serve' starts on one port (one per core serves "
        "the most requests).",
    )
    database_pool_size: int = Field(
        default=20,
        ge=1,
        description="Database connections one API process keeps open for reuse (up to as "
        "many again are opened under load and closed after).",
    )
    model_cache_size: int = Field(
        default=8, ge=1, description="Packed models kept loaded in the API process (LRU)."
    )
    inspect_timeout: float = Field(
        default=120.0, gt=0, description="Seconds allowed to validate an uploaded model."
    )
    inspect_max_memory_mb: int = Field(
        default=6144,
        ge=0,
        description="Address space (MiB) of the subprocess that imports an upload; 0: no limit.",
    )
    inspect_max_cpu_seconds: int = Field(
        default=60,
        ge=0,
        description="CPU seconds of the subprocess that imports an upload; 0: no limit.",
    )

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"development", "production", "test"}:
            raise ValueError("environment must be 'development', 'production' or 'test'")
        return value

    @model_validator(mode="after")
    def _no_placeholder_secret_in_production(self) -> Settings:
        if self.environment == "production" and (
            self.secret_key.strip().lower() in _PLACEHOLDER_SECRETS
            or self.secret_key == "dev-insecure-secret"
            or len(self.secret_key) < 16
        ):
            raise ValueError(
                "BITFACTOR_SECRET_KEY must be set to a real secret (16+ characters) in production"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'bitfactor.db').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        """The artifact directory in force."""
        return self.artifacts_dir if self.artifacts_dir is not None else self.data_dir / "artifacts"

    @property
    def embedded_broker(self) -> bool:
        """True when no broker URL is set and the embedded, server-less broker is used."""
        return not self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
