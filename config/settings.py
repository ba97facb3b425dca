"""Typed settings for the scoring service, read from the environment and `.env`.

Names match the seed service (`S3_MODEL_PATH`, `FEATURES_TABLE`, `LOGS_FRACTION`, `CACHE_MAXSIZE`)
so its deployments move over unchanged. AWS region, credentials and endpoints are deliberately
absent: boto3's standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, ...) provides them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, Json, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SAMPLE_REQUEST: dict[str, Any] = {
    "user": {"userid": "scorer-reload-check"},
    "streams": [{"streamUrl": "https://example.com/scorer-reload-check"}],
    "playlist": {},
}
"""The request a new model version scores once before it replaces the current one."""


class SettingsError(Exception):
    """A setting has a value the service cannot start with."""


class Settings(BaseSettings):
    """Everything an operator can set, with the default the service uses."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    # --- model ---------------------------------------------------------------------------
    s3_model_path: str | None = Field(
        default=None, alias="S3_MODEL_PATH", pattern=r"^s3://[^/]+/.+"
    )
    """`s3://bucket/key` of the cloudpickled model dict, as in the seed service."""
    model_path: Path | None = Field(default=None, alias="MODEL_PATH")
    """A local model file instead of S3, for development. Takes precedence over S3_MODEL_PATH."""
    model_sha256: str | None = Field(
        default=None, alias="MODEL_SHA256", pattern=r"^[0-9a-fA-F]{64}$"
    )
    """Expected SHA-256 of the model file; a mismatch refuses to start (unpickling runs code)."""
    model_poll_seconds: float = Field(default=60.0, alias="MODEL_POLL_SECONDS", ge=0)
    """Seconds between checks of the model's version (S3 HEAD, or mtime+size of a file); 0: off."""
    model_reload_timeout_seconds: float = Field(
        default=300.0, alias="MODEL_RELOAD_TIMEOUT_SECONDS", gt=0
    )
    """Longest a reload may take to download and check a new version before it is refused."""
    model_sample_request: Json[dict[str, Any]] = Field(
        # As text: defaults are validated like the environment's value, which is JSON text.
        default=json.dumps(DEFAULT_SAMPLE_REQUEST),  # type: ignore[arg-type]
        alias="MODEL_SAMPLE_REQUEST",
    )
    """A `/score` body (JSON) a new version must score before it replaces the current one.

    Its streams reach `preprocess` as they are: give them feature values the model needs.
    """

    # --- features ------------------------------------------------------------------------
    features_table: str = Field(default="features", alias="FEATURES_TABLE", min_length=3)
    """DynamoDB table holding stream features (`pk`, `sk`, `value`)."""
    stream_pk_prefix: str = Field(default="STREAM#", alias="STREAM_PK_PREFIX")
    """Prefix of the partition key: `pk = prefix + streamUrl`."""
    cache_maxsize: int = Field(default=50_000, alias="CACHE_MAXSIZE", ge=0)
    """Feature cache entries per worker (one entry per stream and feature)."""
    feature_ttl_seconds: float = Field(default=300.0, alias="FEATURE_TTL_SECONDS", gt=0)
    """Cache lifetime of an item that has no `cache_ttl_in_seconds` attribute of its own."""
    absent_ttl_seconds: float = Field(default=30.0, alias="ABSENT_TTL_SECONDS", ge=0)
    """Cache lifetime of "this item is not in the table", so unknown streams cost one read."""
    feature_timeout_seconds: float = Field(default=0.2, alias="FEATURE_TIMEOUT_SECONDS", gt=0)
    """Per-request budget for fetching features; past it the request is scored without them."""
    fetch_threads: int = Field(default=8, alias="FETCH_THREADS", ge=1, le=256)
    """Threads per worker fetching BatchGetItem chunks concurrently."""
    unprocessed_retries: int = Field(default=5, alias="UNPROCESSED_RETRIES", ge=0, le=20)
    """Retries of `UnprocessedKeys` (exponential backoff with full jitter) within the budget."""
    dynamodb_connect_timeout: float = Field(default=0.5, alias="DYNAMODB_CONNECT_TIMEOUT", gt=0)
    """Seconds to open a connection to DynamoDB."""
    dynamodb_read_timeout: float = Field(default=1.0, alias="DYNAMODB_READ_TIMEOUT", gt=0)
    """Seconds to wait for a DynamoDB response."""
    dynamodb_max_attempts: int = Field(default=3, alias="DYNAMODB_MAX_ATTEMPTS", ge=1, le=10)
    """Attempts per BatchGetItem chunk on throttling, server and connection errors."""

    # --- requests ------------------------------------------------------------------------
    logs_fraction: float = Field(default=0.01, alias="LOGS_FRACTION", ge=0, le=1)
    """Fraction of requests whose user id and enriched streams are logged."""
    max_body_bytes: int = Field(default=1_048_576, alias="MAX_BODY_BYTES", ge=1024)
    """Largest accepted request body; a larger one is refused with 413 from its length."""
    body_timeout_seconds: float = Field(default=5.0, alias="BODY_TIMEOUT_SECONDS", gt=0)
    """Seconds a client has to send its request body; a stalled one gets 408."""
    max_streams: int = Field(default=1000, alias="MAX_STREAMS", ge=1)
    """Most streams in one request; more get 413."""

    # --- server (read by gunicorn.conf.py) -----------------------------------------------
    host: str = Field(default="0.0.0.0", alias="HOST")
    """Address to listen on."""
    port: int = Field(default=8000, alias="PORT", ge=1, le=65535)
    """Port to listen on."""
    web_concurrency: int = Field(default=2, alias="WEB_CONCURRENCY", ge=1, le=64)
    """Worker processes (each holds a copy-on-write view of the preloaded model)."""
    threads: int = Field(default=4, alias="THREADS", ge=1, le=256)
    """Request threads per worker (gthread): fewer keep the tail short, more ride out slow reads."""
    timeout: int = Field(default=30, alias="TIMEOUT", ge=1)
    """Seconds a request may run; then its client gets a 504 and its worker is replaced."""
    max_requests: int = Field(default=0, alias="MAX_REQUESTS", ge=0)
    """Recycle a worker after this many requests (0: never)."""
    gc_freeze: bool = Field(default=True, alias="GC_FREEZE")
    """Freeze the master's objects before fork so the collector does not dirty shared pages."""
    log_level: str = Field(
        default="info", alias="LOG_LEVEL", pattern=r"(?i)^(debug|info|warning|error|critical)$"
    )
    """Log level for the service and gunicorn."""

    @field_validator("model_sample_request")
    @classmethod
    def _sample_has_streams(cls, value: dict[str, Any]) -> dict[str, Any]:
        streams = value.get("streams")
        if not isinstance(streams, list) or not streams:
            raise ValueError("must be a /score body with at least one stream")
        if not all(isinstance(s, dict) and isinstance(s.get("streamUrl"), str) for s in streams):
            raise ValueError("every stream must be an object with a string streamUrl")
        return value

    @model_validator(mode="after")
    def _require_one_model_source(self) -> Settings:
        if self.model_path is None and self.s3_model_path is None:
            raise ValueError("set S3_MODEL_PATH (s3://bucket/key) or MODEL_PATH (a local file)")
        return self

    @property
    def model_name(self) -> str:
        """Return the model file's name, as `/` and `/health` report it."""
        source = str(self.model_path) if self.model_path is not None else str(self.s3_model_path)
        return source.rstrip("/").rsplit("/", 1)[-1]


def load_settings() -> Settings:
    """Read settings from the environment, turning a bad value into one line naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
