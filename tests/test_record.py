"""The per-request record: JSON-ready, and what Server-Timing says of it."""

from __future__ import annotations

import json

from scorer.http.fastpath import timing_header
from scorer.record import ScoreRecord


def test_record_round_trips_through_json() -> None:
    record = ScoreRecord(store_ms=1.5, streams_scored=30, retrieval_success=False)
    record.cache_misses["user"] = 2
    data = json.loads(json.dumps(record.as_dict()))
    assert data["cache_misses"] == {"stream": 0, "user": 2, "global": 0}
    assert (data["store_ms"], data["streams_scored"], data["retrieval_success"]) == (1.5, 30, False)


def test_server_timing_adds_the_record_after_queue_and_app() -> None:
    record = ScoreRecord(store_ms=1.234, decode_ms=0.5, preprocess_ms=2, predict_ms=3)
    timing = timing_header(0.001, 0.010, record)
    assert timing.startswith("queue;dur=1.00, app;dur=10.00, store;dur=1.23, decode;dur=0.50, ")
    assert "preprocess;dur=2.00, predict;dur=3.00" in timing
    assert 'retrieval;desc="ok decode_failures=0"' in timing
    assert timing_header(None, 0.002, None) == "app;dur=2.00"  # refusals and errors: no record
