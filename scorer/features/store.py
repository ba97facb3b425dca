"""Read feature items from DynamoDB with BatchGetItem, one chunk of at most 100 keys per call.

The item layout is the seed service's: `pk = prefix + streamUrl`, `sk = feature name`, the
value in `value`, an optional per-item `cache_ttl_in_seconds`. User features live under
`USER#<userid>` and global ones under `GLOBAL` (haystack-ml-stack 0.4's layout): one store per
prefix. A feature with a codec keeps its item's optional `version` beside its value.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from config import Settings
from scorer.features.cache import ABSENT, Entry, FeatureKey
from scorer.features.codecs import Versioned
from scorer.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_BATCH_KEYS = 100
"""BatchGetItem refuses more keys than this in one call."""
RETRYABLE_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
"""DynamoDB error codes worth another attempt; others (validation, access) never succeed."""
MAX_PK_BYTES = 2048
MAX_SK_BYTES = 1024
"""DynamoDB's key size limits: a longer key fails the whole call it is in."""


class _FloatDeserializer(TypeDeserializer):
    """boto3's deserializer with numbers as float and sets as lists, as the seed service gives."""

    def _deserialize_n(self, value: str) -> float:
        return float(Decimal(value))

    def _deserialize_ns(self, value: list[str]) -> list[float]:
        return [float(Decimal(v)) for v in value]

    def _deserialize_ss(self, value: list[str]) -> list[str]:
        return list(value)

    def _deserialize_b(self, value: bytes) -> bytes:
        return bytes(value)

    def _deserialize_bs(self, value: list[bytes]) -> list[bytes]:
        return [bytes(v) for v in value]


_deserializer = _FloatDeserializer()


def deserialize(attribute: dict[str, Any]) -> Any:
    """Convert one low-level DynamoDB attribute value to Python."""
    return _deserializer.deserialize(attribute)  # type: ignore[arg-type]


class StoreConfigError(Exception):
    """boto3 cannot build a DynamoDB client from this environment."""


def check_region(settings: Settings) -> None:
    """Fail at start-up, in the master, if neither the settings nor a profile give a region."""
    if settings.aws_region is None and boto3.session.Session().region_name is None:
        raise StoreConfigError("no AWS region: set AWS_REGION or AWS_DEFAULT_REGION")


def load_botocore_data() -> Any:
    """Parse botocore's DynamoDB model files once, in the master, for workers to share.

    Plain data, no session, client or socket: parsed before fork, the pages stay shared
    copy-on-write instead of each worker parsing its own copy (about 5 MB a worker).
    """
    loader = botocore.loaders.create_loader()
    loader.load_data("sdk-default-configuration")
    loader.load_data("partitions")
    for type_name in ("service-2", "endpoint-rule-set-1"):
        loader.load_service_model("dynamodb", type_name)
    return loader


def make_client(settings: Settings, max_pool_connections: int, botocore_data: Any = None) -> Any:
    """Create the worker's DynamoDB client: thread-safe, pooled, with bounded timeouts."""
    core = botocore.session.Session()
    if botocore_data is not None:
        core.register_component("data_loader", botocore_data)
    session = boto3.session.Session(botocore_session=core)
    config = Config(
        max_pool_connections=max_pool_connections,
        connect_timeout=settings.dynamodb_connect_timeout,
        read_timeout=settings.dynamodb_read_timeout,
        # botocore's own retries back off throttling by up to seconds, past any request's
        # budget, and hide the attempts from our metrics: FeatureStore retries instead.
        retries={"mode": "standard", "total_max_attempts": 1},
        tcp_keepalive=True,
    )
    return session.client(
        "dynamodb",
        config=config,
        region_name=settings.aws_region,  # None: boto3's chain (a profile's region)
        endpoint_url=settings.endpoint_url("dynamodb"),
    )


def is_retryable(exc: Exception) -> bool:
    """Tell whether another attempt may succeed: throttling, server errors, connection errors."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") in RETRYABLE_ERRORS
    # Refused, reset or timed out; not bad parameters or missing credentials.
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def is_valid_key(key: FeatureKey, prefix: str) -> bool:
    """Tell whether DynamoDB would accept this key (one bad key fails a whole chunk)."""
    url, name = key
    return (
        0 < len(name.encode()) <= MAX_SK_BYTES
        and len(prefix.encode()) + len(url.encode()) <= MAX_PK_BYTES
        and len(prefix) + len(url) > 0
    )


class FeatureStore:
    """Fetch chunks of feature keys from one DynamoDB table."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        metrics: Metrics,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        *,
        prefix: str | None = None,
        versioned: frozenset[str] = frozenset(),
    ) -> None:
        self._client = client
        self._table = settings.features_table
        self._prefix = settings.stream_pk_prefix if prefix is None else prefix
        self._versioned = versioned  # the features with a codec: it is given their version
        self._default_ttl = settings.feature_ttl_seconds
        self._absent_ttl = settings.absent_ttl_seconds
        self._retries = settings.unprocessed_retries
        self._max_attempts = settings.dynamodb_max_attempts
        self._metrics = metrics
        self._sleep = sleep
        self._clock = clock

    def fetch_chunk(self, keys: Sequence[FeatureKey], deadline: float) -> dict[FeatureKey, Entry]:
        """Read up to 100 keys; return an entry for every key DynamoDB answered for.

        Keys still unprocessed when the retries or the deadline run out are left out, so the
        caller neither caches them as absent nor waits for them.
        """
        if len(keys) > MAX_BATCH_KEYS:
            raise ValueError(f"at most {MAX_BATCH_KEYS} keys per BatchGetItem, got {len(keys)}")
        by_pk = {(self._prefix + url, name): (url, name) for url, name in keys}
        pending: list[dict[str, Any]] = [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in by_pk]
        found: dict[FeatureKey, Entry] = {}
        errors = unprocessed_tries = 0
        while pending:
            try:
                answered = self._call(pending)
            except (ClientError, BotoCoreError) as exc:
                errors += 1
                if (
                    not is_retryable(exc)
                    or errors >= self._max_attempts
                    or not self._back_off(errors, deadline)
                ):
                    if not found:
                        raise
                    # Keep what earlier rounds read; the rest counts as unprocessed.
                    logger.warning("keeping %d items after %r", len(found), exc)
                    break
                continue
            for item in answered.get("Responses", {}).get(self._table, []):
                key = by_pk.get((item["pk"]["S"], item["sk"]["S"]))
                if key is not None:
                    found[key] = self._entry(item)
            unprocessed = answered.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
            done = {(k["pk"]["S"], k["sk"]["S"]) for k in pending} - {
                (k["pk"]["S"], k["sk"]["S"]) for k in unprocessed
            }
            for pk_sk in done:
                key = by_pk[pk_sk]
                if key not in found:
                    found[key] = Entry(ABSENT, self._absent_ttl)
            pending = unprocessed
            if not pending:
                break
            self._metrics.dynamodb_unprocessed_keys.inc(len(pending))
            unprocessed_tries += 1
            if unprocessed_tries > self._retries or not self._back_off(unprocessed_tries, deadline):
                logger.warning(
                    "giving up on %d unprocessed keys after %d tries",
                    len(pending),
                    unprocessed_tries,
                )
                break
        return found

    def _back_off(self, attempt: int, deadline: float) -> bool:
        """Sleep before another attempt, or return False if the deadline would pass first."""
        # Full jitter: spreads the retries of every worker hitting the same throttled table.
        delay = random.uniform(0, min(1.0, 0.025 * 2**attempt))
        if self._clock() + delay >= deadline:
            return False
        self._sleep(delay)
        return True

    def _call(self, keys: list[dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        outcome = "ok"
        try:
            result: dict[str, Any] = self._client.batch_get_item(
                RequestItems={self._table: {"Keys": keys}}
            )
            return result
        except ClientError as exc:
            outcome = exc.response.get("Error", {}).get("Code", "ClientError")
            raise
        except BotoCoreError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._metrics.dynamodb_duration.observe(time.perf_counter() - started)
            self._metrics.dynamodb_keys_requested.inc(len(keys))
            if outcome != "ok":
                self._metrics.dynamodb_errors.labels(outcome).inc()

    def _entry(self, item: dict[str, Any]) -> Entry:
        value = deserialize(item["value"]) if "value" in item else None
        if value is not None and item["sk"]["S"] in self._versioned:
            version = item.get("version", {})  # as written: "v1" or "1", never "1.0"
            value = Versioned(value, version.get("S", version.get("N")))
        ttl = self._default_ttl
        raw_ttl = item.get("cache_ttl_in_seconds", {}).get("N")
        if raw_ttl is not None:
            try:
                # As in the seed service, zero or a negative number means "use the default".
                ttl = float(raw_ttl) if float(raw_ttl) > 0 else ttl
            except ValueError:
                # %r: the key holds a client's stream URL, escaped so it cannot start a log line.
                logger.warning("ignoring cache_ttl_in_seconds %r of %r", raw_ttl, item["pk"]["S"])
        return Entry(value, ttl)
