"""Reads in flight: claimed once, joined by the others, released when done or refused."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from scorer.features.cache import ABSENT, Entry
from scorer.features.inflight import InFlight, Read, Waits, collect
from scorer.features.lookup import Shared

PREFIX = "STREAM#"


def test_a_key_missed_twice_is_read_once_and_the_second_lookup_waits_on_it() -> None:
    inflight = InFlight(PREFIX)
    submitted: list[list[Any]] = []
    first: Waits = {}
    claim = inflight.join_or_claim([(("a", "f"), 1), (("b", "f"), 2)], first)
    assert (claim.owned, claim.fetched, claim.coalesced) == ([("a", "f"), ("b", "f")], 3, 0)
    inflight.start(claim.owned, first, lambda chunk, future: submitted.append(chunk))
    second: Waits = {}
    joined = inflight.join_or_claim([(("a", "f"), 1)], second)
    assert (joined.owned, joined.coalesced) == ([], 1)
    assert list(second.values()) == [[("a", "f")]] and set(second) == set(first)
    assert submitted == [[("a", "f"), ("b", "f")]]


def test_a_key_dynamodb_would_refuse_is_never_sent() -> None:
    claim = InFlight(PREFIX).join_or_claim([(("a" * 2048, "f"), 1)], {})  # a pk over 2 KiB
    assert (claim.owned, claim.invalid) == ([], 1)


def test_a_read_the_pool_refuses_fails_at_once_and_frees_its_keys() -> None:
    inflight = InFlight(PREFIX)
    waits: Waits = {}

    def refuse(chunk: Any, future: Read) -> None:
        raise RuntimeError("cannot schedule new futures after shutdown")

    inflight.start([("a", "f")], waits, refuse)
    assert len(inflight) == 0
    (future,) = waits
    assert isinstance(future.exception(), RuntimeError)


def test_collect_takes_the_values_and_says_what_fell_short() -> None:
    done: Read = Future()
    done.set_result({("a", "f"): Entry(1.0, 60), ("b", "f"): Entry(ABSENT, 60)})
    failed: Read = Future()
    failed.set_exception(OSError("store down"))
    late: Read = Future()
    found: dict[str, dict[str, Any]] = {}
    shared: Shared = {}
    waits: Waits = {done: [("a", "f"), ("b", "f"), ("c", "f")], failed: [("d", "f")], late: []}
    reasons = collect(waits, 0.01, found, shared)
    assert found == {"a": {"f": 1.0}}
    assert reasons == {"unprocessed", "error", "timeout"}  # c was not in the answer
