"""Request parsing: every malformed body is a ScorerError with a 4xx, never anything else."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorer.errors import ScorerError
from scorer.payload import parse_score_request

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
streams = st.lists(st.fixed_dictionaries({"streamUrl": json_values}) | json_values, max_size=4)
# The machine is shared: generation speed is not what these tests are about.
relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@relaxed
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_get_a_client_error(raw: bytes) -> None:
    try:
        parse_score_request(raw, max_streams=100)
    except ScorerError as exc:
        assert 400 <= exc.status < 500
        assert exc.detail


@relaxed
@given(
    st.fixed_dictionaries(
        {},
        optional={"user": json_values, "streams": streams | json_values, "playlist": json_values},
    )
)
def test_any_json_object_parses_or_names_a_field(body: dict[str, object]) -> None:
    try:
        parsed = parse_score_request(orjson.dumps(body), max_streams=100)
    except ScorerError as exc:
        assert exc.status in (413, 422)
        assert any(name in exc.detail for name in ("user", "streams", "playlist"))
    else:
        assert all(isinstance(s["streamUrl"], str) for s in parsed.streams)


@relaxed
@given(st.lists(st.text(), max_size=20))
def test_valid_streams_come_back_unchanged(urls: list[str]) -> None:
    streams = [{"streamUrl": u, "extra": i} for i, u in enumerate(urls)]
    parsed = parse_score_request(orjson.dumps({"streams": streams}), max_streams=100)
    assert parsed.streams == streams
    assert parsed.user == {} and parsed.playlist == {}


def test_error_names_the_stream_index() -> None:
    with pytest.raises(ScorerError, match=r"streams\[3\]\.streamUrl must be a string"):
        parse_score_request(
            orjson.dumps({"streams": [{"streamUrl": "a"}] * 3 + [{"streamUrl": None}]}), 10
        )
