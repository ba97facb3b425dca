"""Typed settings for the scoring service, read from the environment and `.env`.

Names match the seed service (`S3_MODEL_PATH`, `FEATURES_TABLE`, `LOGS_FRACTION`, `CACHE_MAXSIZE`)
so its deployments move over unchanged. AWS credentials are deliberately absent: boto3's standard
chain provides them. The region and endpoints are here because boto3 alone ignores `AWS_REGION`
and finds a bad endpoint only when a client is built, in every worker, as a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    Json,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SAMPLE_REQUEST: dict[str, Any] = {
    "user": {"userid": "scorer-reload-check"},
    "streams": [{"streamUrl": "https://example.com/scorer-reload-check"}],
    "playlist": {},
}
"""The request a new model version scores once before it replaces the current one."""


SECRET_KEYS_FIELDS = ("KAFKA_WRITER_USER", "KAFKA_WRITER_PASSWORD", "KAFKA_BROKER_CA_CERTIFICATE")
"""What the seed's `SECRET_KEYS` JSON holds for Kafka: user, password, base64 of the CA's PEM."""


class SettingsError(Exception):
    """A setting has a value the service cannot start with."""


def is_http_url(url: str) -> bool:
    """Tell whether botocore can use `url` as an endpoint: http(s), a host, a valid port."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in 0-65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
    cache_max_bytes: int = Field(default=64 * 1024 * 1024, alias="CACHE_MAX_BYTES", ge=0, lt=2**48)
    """Estimated bytes the feature caches of one worker may hold; past them, the least recently
    used streams are evicted even under CACHE_MAXSIZE (clients choose the URLs it is keyed by).
    A model with user or global features gives a quarter to users and 1/32 to globals."""
    user_cache_maxsize: int = Field(default=80_000, alias="USER_CACHE_MAXSIZE", ge=0)
    """User-feature cache entries per worker (one per user and feature; `user_features` models)."""
    global_cache_maxsize: int = Field(default=1_000, alias="GLOBAL_CACHE_MAXSIZE", ge=0)
    """Global-feature cache entries per worker (`global_features` models)."""
    max_history_streams: int = Field(default=256, alias="MAX_HISTORY_STREAMS", ge=0, le=10_000)
    """Most watched streams of a user's history the model gets, most recent first."""
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
    """Fraction of requests whose user id and enriched streams are logged (escaped literals)."""
    max_body_bytes: int = Field(default=1_048_576, alias="MAX_BODY_BYTES", ge=1024)
    """Largest accepted request body; a larger one is refused with 413 from its length."""
    head_timeout_seconds: float = Field(default=5.0, alias="HEAD_TIMEOUT_SECONDS", gt=0)
    """Seconds a client has, from its first byte, to send the request line and headers; then 408."""
    body_timeout_seconds: float = Field(default=5.0, alias="BODY_TIMEOUT_SECONDS", gt=0)
    """Seconds a client has to send its whole request body; a slower one gets 408."""
    max_streams: int = Field(default=1000, alias="MAX_STREAMS", ge=1)
    """Most streams in one request; more get 413."""

    # --- inference event log (scorer/eventlog/) ---------------------------------------
    kafka_bootstrap_servers: str | None = Field(default=None, alias="KAFKA_BOOTSTRAP_SERVERS")
    """Kafka brokers (`host:port,...`) to publish one event per logged request to; unset: off."""
    kafka_topic: str | None = Field(default=None, alias="KAFKA_TOPIC", pattern=r"^[A-Za-z0-9._-]+$")
    """Topic of the inference events; required with KAFKA_BOOTSTRAP_SERVERS."""
    kafka_fraction: float = Field(default=0.01, alias="KAFKA_FRACTION", ge=0, le=1)
    """Share of users whose requests are logged, by a hash of the user id: the same users stay
    logged across restarts, pods and a move from the seed service, which uses the same rule."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = (
        Field(default=None, alias="KAFKA_SECURITY_PROTOCOL")
    )
    """How to reach the brokers; unset: PLAINTEXT, or SASL_SSL when SECRET_KEYS is given."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, alias="KAFKA_SASL_MECHANISM"
    )
    """SASL mechanism; unset: none, or SCRAM-SHA-512 when SECRET_KEYS is given (the seed's)."""
    kafka_sasl_username: str | None = Field(default=None, alias="KAFKA_SASL_USERNAME")
    """SASL user name (Confluent Cloud: the API key); over SECRET_KEYS' KAFKA_WRITER_USER."""
    kafka_sasl_password: SecretStr | None = Field(default=None, alias="KAFKA_SASL_PASSWORD")
    """SASL password (Confluent Cloud: the API secret); never logged."""
    kafka_ssl_ca_location: Path | None = Field(default=None, alias="KAFKA_SSL_CA_LOCATION")
    """A CA bundle (PEM file) to check the brokers' certificates with; unset: the system's."""
    secret_keys: SecretStr | None = Field(default=None, alias="SECRET_KEYS")
    """The seed's JSON of Kafka credentials (KAFKA_WRITER_USER, KAFKA_WRITER_PASSWORD,
    KAFKA_BROKER_CA_CERTIFICATE as base64 PEM), accepted as is for a drop-in move."""
    kafka_queue_max_messages: int = Field(
        default=10_000, alias="KAFKA_QUEUE_MAX_MESSAGES", ge=1, le=10_000_000
    )
    """Events one worker may hold for the broker; past it (or KAFKA_QUEUE_MAX_KBYTES) new events
    are dropped and counted, so a slow or absent broker never slows a request."""
    kafka_queue_max_kbytes: int = Field(
        default=16_384, alias="KAFKA_QUEUE_MAX_KBYTES", ge=1, le=2_097_151
    )
    """KiB of events one worker may hold for the broker: counts against the pod's memory."""
    kafka_flush_seconds: float = Field(default=10.0, alias="KAFKA_FLUSH_SECONDS", ge=0, le=20)
    """Longest an exiting worker (stop, reload, recycling) waits for the broker to take its queued
    events; what is left is counted as dropped. At most 20: gunicorn's graceful_timeout (30 s)
    covers the requests' drain and this, and TIMEOUT must exceed it (the master kills a worker
    silent for longer)."""

    # --- overload (scorer/serving/shedding.py) -------------------------------------------
    shedding: bool = Field(default=True, alias="SHEDDING")
    """Refuse /score requests that cannot be answered in time (503) instead of queueing them."""
    shed_queue_target_ms: float = Field(default=10.0, alias="SHED_QUEUE_TARGET_MS", gt=0)
    """Queue delay (waiting for a thread) a worker aims at; past it for a whole interval, it
    sheds requests that waited over twice this (CoDel)."""
    shed_queue_interval_ms: float = Field(default=100.0, alias="SHED_QUEUE_INTERVAL_MS", gt=0)
    """Window over which the queue delay must stay above the target before shedding starts."""
    shed_max_queue_ms: float = Field(default=1000.0, alias="SHED_MAX_QUEUE_MS", ge=0)
    """Longest a request may wait for a thread in any case, a safety net far above any stall (a
    GC pause, a GIL hand-off): standing queues and deadlines are what shed; 0: no cap."""
    shed_warmup_seconds: float = Field(default=5.0, alias="SHED_WARMUP_SECONDS", ge=0)
    """Seconds from a worker's first request during which waits are not refused: its feature
    cache starts empty (at start and after every model reload)."""

    # --- AWS (credentials come from boto3's own chain) -----------------------------------
    aws_region: str | None = Field(
        default=None,
        alias="AWS_REGION",
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        pattern=r"^[a-z0-9-]*$",
    )
    """Region of the S3 and DynamoDB clients, else AWS_DEFAULT_REGION, else the profile's."""
    aws_endpoint_url: str | None = Field(default=None, alias="AWS_ENDPOINT_URL")
    """Endpoint of every AWS client, for an emulator only: `http(s)://host[:port]`."""
    aws_endpoint_url_s3: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_S3")
    """Endpoint of the S3 client (the model download), over AWS_ENDPOINT_URL."""
    aws_endpoint_url_dynamodb: str | None = Field(default=None, alias="AWS_ENDPOINT_URL_DYNAMODB")
    """Endpoint of the DynamoDB client (the features), over AWS_ENDPOINT_URL."""

    # --- server (read by gunicorn.conf.py) -----------------------------------------------
    host: str = Field(default="0.0.0.0", alias="HOST")
    """Address to listen on: an IPv4 or IPv6 address (`::` for all) or a host name."""
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
    switch_interval_ms: float = Field(default=1.0, alias="SWITCH_INTERVAL_MS", gt=0, le=100)
    """How long a worker's thread may hold the interpreter while another waits (Python's own
    default is 5 ms): shorter lets a cheap request through beside a CPU-heavy one sooner."""
    gc_freeze: bool = Field(default=True, alias="GC_FREEZE")
    """Freeze the master's objects before fork so the collector does not dirty shared pages."""
    log_level: str = Field(
        default="info", alias="LOG_LEVEL", pattern=r"(?i)^(debug|info|warning|error|critical)$"
    )
    """Log level for the service and gunicorn."""

    @field_validator("aws_region")
    @classmethod
    def _empty_region_is_unset(cls, region: str | None) -> str | None:
        return region or None  # then boto3's chain decides, as it would for an empty variable

    @field_validator("aws_endpoint_url", "aws_endpoint_url_s3", "aws_endpoint_url_dynamodb")
    @classmethod
    def _check_endpoint(cls, url: str | None) -> str | None:
        if not url:
            return None  # an empty variable means unset, as for boto3
        if not is_http_url(url):
            raise ValueError(
                f"must be http(s)://host[:port], e.g. http://localhost:4566, not {url!r}"
            )
        return url

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str) -> str:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            return str(ipaddress.ip_address(bare))
        except ValueError:
            pass
        if bare == host and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            return host
        raise ValueError(f"must be an IP address or a host name, without a port, not {host!r}")

    @field_validator("model_sample_request")
    @classmethod
    def _sample_has_streams(cls, value: dict[str, Any]) -> dict[str, Any]:
        streams = value.get("streams")
        if not isinstance(streams, list) or not streams:
            raise ValueError("must be a /score body with at least one stream")
        if not all(isinstance(s, dict) and isinstance(s.get("streamUrl"), str) for s in streams):
            raise ValueError("every stream must be an object with a string streamUrl")
        return value

    @field_validator("kafka_bootstrap_servers", "kafka_sasl_username")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("secret_keys")
    @classmethod
    def _check_secret_keys(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never quotes the value: it holds a password.
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            keys = json.loads(value.get_secret_value())
        except ValueError:
            raise ValueError("must be a JSON object (its content is not shown)") from None
        if not isinstance(keys, dict):
            raise ValueError("must be a JSON object (its content is not shown)")
        missing = [name for name in SECRET_KEYS_FIELDS if not isinstance(keys.get(name), str)]
        if missing:
            raise ValueError("has no string " + ", ".join(missing))
        return value

    @model_validator(mode="after")
    def _check_event_log(self) -> Settings:
        if self.kafka_bootstrap_servers is None:
            return self
        if self.kafka_topic is None:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is set: set KAFKA_TOPIC too")
        if self.kafka_flush_seconds >= self.timeout:
            raise ValueError(
                "KAFKA_FLUSH_SECONDS must be below TIMEOUT: the master kills a worker that is"
                " silent for TIMEOUT seconds, flushing or not"
            )
        return self

    @property
    def kafka_secret_keys(self) -> dict[str, str]:
        """Return SECRET_KEYS as a dict (empty when unset): checked at start-up."""
        if self.secret_keys is None:
            return {}
        keys: dict[str, str] = json.loads(self.secret_keys.get_secret_value())
        return keys

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

    @property
    def bind(self) -> str:
        """Return gunicorn's `host:port`, an IPv6 address in brackets (`[::]:8000`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def endpoint_url(self, service: Literal["s3", "dynamodb"]) -> str | None:
        """Return one client's endpoint: its service's own setting, else AWS_ENDPOINT_URL."""
        own = self.aws_endpoint_url_s3 if service == "s3" else self.aws_endpoint_url_dynamodb
        return own or self.aws_endpoint_url


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
