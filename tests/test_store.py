"""BatchGetItem retries of UnprocessedKeys: pure logic, with a scripted client."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

from scorer.features.cache import ABSENT
from scorer.features.store import FeatureStore, deserialize, is_valid_key, make_client
from scorer.metrics import Metrics
from tests.conftest import make_settings, sample


class ScriptedClient:
    """Answers BatchGetItem from a script: each call leaves the first `hold[i]` keys unprocessed."""

    def __init__(self, table: str, hold: list[int]) -> None:
        self.table = table
        self.hold = hold
        self.calls: list[int] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        keys = RequestItems[self.table]["Keys"]
        self.calls.append(len(keys))
        held = self.hold.pop(0) if self.hold else 0
        answered = [
            {**key, "value": {"N": "1"}} for key in keys[held:] if key["sk"]["S"] != "missing"
        ]
        result: dict[str, Any] = {"Responses": {self.table: answered}}
        if held:
            result["UnprocessedKeys"] = {self.table: {"Keys": keys[:held]}}
        return result


def make_store(client: ScriptedClient, retries: int = 5) -> tuple[FeatureStore, list[float]]:
    slept: list[float] = []
    settings = make_settings(FEATURES_TABLE=client.table, UNPROCESSED_RETRIES=retries)
    return FeatureStore(client, settings, Metrics(), sleep=slept.append, clock=lambda: 0.0), slept


def test_unprocessed_keys_are_retried_with_growing_backoff() -> None:
    client = ScriptedClient("tbl", hold=[3, 2, 1])
    store, slept = make_store(client)
    keys = [(f"u{n}", "f") for n in range(5)] + [("u9", "missing")]

    entries = store.fetch_chunk(keys, deadline=10.0)

    assert client.calls == [6, 3, 2, 1]
    assert len(slept) == 3 and all(0 <= s <= 1.0 for s in slept)
    assert entries[("u9", "missing")].value is ABSENT
    assert all(entries[k].value == 1.0 for k in keys[:5])
    assert sample(store._metrics, "scorer_dynamodb_unprocessed_keys_total") == 6


def test_keys_still_unprocessed_after_the_retries_are_left_out() -> None:
    client = ScriptedClient("tbl", hold=[2, 2, 2])
    store, _ = make_store(client, retries=2)
    keys = [("a", "f"), ("b", "f"), ("c", "f")]

    entries = store.fetch_chunk(keys, deadline=10.0)

    assert set(entries) == {("c", "f")}  # a and b are neither values nor "absent"


def test_no_retry_past_the_deadline() -> None:
    client = ScriptedClient("tbl", hold=[1])
    store, slept = make_store(client)
    store.fetch_chunk([("a", "f"), ("b", "f")], deadline=0.0)
    assert client.calls == [2] and slept == []


def test_numbers_deserialize_as_float_and_sets_as_lists() -> None:
    assert deserialize({"N": "3"}) == 3.0 and isinstance(deserialize({"N": "3"}), float)
    assert deserialize({"NS": ["1", "2"]}) in ([1.0, 2.0], [2.0, 1.0])
    assert deserialize({"M": {"a": {"L": [{"N": "1"}]}}}) == {"a": [1.0]}


def test_keys_over_dynamodb_limits_are_invalid() -> None:
    assert is_valid_key(("https://a", "f"), "STREAM#")
    assert not is_valid_key(("x" * 2042, "f"), "STREAM#")
    assert not is_valid_key(("a", "f" * 1025), "STREAM#")
    assert not is_valid_key(("a", ""), "STREAM#")


class ThrottledClient(ScriptedClient):
    """Refuses the first `throttled` calls with the given error code, then answers."""

    def __init__(self, table: str, throttled: int, code: str) -> None:
        super().__init__(table, hold=[])
        self.throttled = throttled
        self.code = code

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        if self.throttled:
            self.throttled -= 1
            self.calls.append(-1)
            raise ClientError(
                {"Error": {"Code": self.code, "Message": "slow down"}}, "BatchGetItem"
            )
        return super().batch_get_item(RequestItems)


def test_throttling_is_retried_and_every_attempt_counted() -> None:
    client = ThrottledClient("tbl", throttled=2, code="ProvisionedThroughputExceededException")
    store, slept = make_store(client)

    entries = store.fetch_chunk([("a", "f")], deadline=10.0)

    assert entries[("a", "f")].value == 1.0
    assert client.calls == [-1, -1, 1] and len(slept) == 2
    errors = sample(
        store._metrics,
        "scorer_dynamodb_errors_total",
        error="ProvisionedThroughputExceededException",
    )
    assert errors == 2


def test_errors_that_cannot_succeed_are_not_retried() -> None:
    client = ThrottledClient("tbl", throttled=1, code="ValidationException")
    store, slept = make_store(client)
    with pytest.raises(ClientError):
        store.fetch_chunk([("a", "f")], deadline=10.0)
    assert client.calls == [-1] and slept == []


def test_throttling_gives_up_at_the_attempt_limit() -> None:
    client = ThrottledClient("tbl", throttled=5, code="ThrottlingException")
    store, _ = make_store(client)
    with pytest.raises(ClientError):
        store.fetch_chunk([("a", "f")], deadline=10.0)
    assert client.calls == [-1, -1, -1]  # DYNAMODB_MAX_ATTEMPTS defaults to 3


class BrokenClient(ScriptedClient):
    """Answers with unprocessed keys first, then raises the given error."""

    def __init__(self, table: str, error: Exception) -> None:
        super().__init__(table, hold=[1])
        self.error = error

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        if self.calls:
            self.calls.append(-1)
            raise self.error
        return super().batch_get_item(RequestItems)


def test_items_read_before_a_final_error_are_kept() -> None:
    client = BrokenClient("tbl", ParamValidationError(report="bad"))
    store, _ = make_store(client)

    entries = store.fetch_chunk([("a", "f"), ("b", "f")], deadline=10.0)

    assert set(entries) == {("b", "f")}  # "a" was unprocessed, then the retry failed
    assert client.calls == [2, -1]  # a parameter error is not retried


def test_connection_errors_are_retried() -> None:
    client = BrokenClient("tbl", EndpointConnectionError(endpoint_url="http://x"))
    store, slept = make_store(client)
    store.fetch_chunk([("a", "f"), ("b", "f")], deadline=10.0)
    assert client.calls == [2, -1, -1, -1] and len(slept) == 3  # unprocessed once, then 3 errors


def test_client_uses_the_region_and_endpoint_of_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # botocore alone would read AWS_DEFAULT_REGION and ignore AWS_REGION.
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:4566")
    client = make_client(make_settings(), max_pool_connections=1)
    assert (client.meta.region_name, client.meta.endpoint_url) == (
        "eu-west-2",
        "http://127.0.0.1:4566",
    )
