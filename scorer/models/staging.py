"""Download and check a new model version in a process of its own.

`python -m scorer.models.staging` runs it.

The master runs this before it swaps models (scorer/models/reload.py). Everything that can hang,
crash or leave a lock held happens here rather than in the master: the S3 calls, and unpickling and
running the team's code (a missing module, a predict that raises). What passes every check is
written to `--out`, byte for byte; one JSON line on stdout says what was seen and decided.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from config import Settings, load_settings
from scorer.codec import encode
from scorer.errors import ScorerError
from scorer.features.store import StoreConfigError, check_region
from scorer.models.model import Model, ModelError, build_model
from scorer.models.source import SourceError, Version, VersionGone, source_for
from scorer.payload import parse_score_request
from scorer.scoring import is_empty, request_params

PIN_ATTEMPTS = 3
"""HEAD then a pinned GET, again if the object was overwritten in between."""


class SampleError(Exception):
    """The new version cannot score the sample request."""


def score_sample(model: Model, body: dict[str, Any], max_streams: int) -> None:
    """Run preprocess, predict and the JSON encoding once, as `/score` would."""
    try:
        request = parse_score_request(orjson.dumps(body), max_streams)
    except ScorerError as exc:
        raise SampleError(f"MODEL_SAMPLE_REQUEST is not a valid /score body: {exc}") from None
    params = request_params(model, {}, None)  # no store here: globals None, no history
    for name in model.user_features:
        request.user.setdefault(name, None)
    try:
        model_input = model.preprocess(request.user, request.streams, request.playlist, params)
        output = model.predict(model_input, params)
        if not is_empty(output):
            encode(output)
    except Exception as exc:  # the team's code can raise anything
        raise SampleError(
            f"model {model.name} fails on the sample request: {type(exc).__name__}: {exc}"
        ) from None


def stage_model(
    settings: Settings,
    out: Path,
    current: str | None,
    report: Callable[[dict[str, Any]], None] = lambda line: None,
) -> dict[str, Any]:
    """Fetch the version there now, check it, write it to `out`; return what happened.

    `report` hears of the version as soon as it is seen, so a check that is killed for taking
    too long, or crashes, still names the version it refused.
    """
    source = source_for(settings)
    seen: Version | None = None
    try:
        for attempt in range(PIN_ATTEMPTS):
            seen = source.head()
            if seen.label == current:
                return {"result": "unchanged", "version": seen.label}
            report({"result": "seen", "version": seen.label})
            try:
                data, seen = source.fetch(seen)
                break
            except VersionGone:
                if attempt == PIN_ATTEMPTS - 1:
                    raise
        assert seen is not None
        model = replace(
            build_model(data, settings.model_name, settings.model_sha256), version=seen.label
        )
        if model.stream_features:
            # A worker that cannot build its DynamoDB client would stop gunicorn.
            check_region(settings)
        score_sample(model, settings.model_sample_request, settings.max_streams)
    except (SourceError, ModelError, StoreConfigError, SampleError) as exc:
        return refusal(seen, str(exc))
    except (Exception, SystemExit) as exc:  # anything else the unpickled code raised
        return refusal(seen, f"{type(exc).__name__}: {exc}")
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, out)
    return {
        "result": "verified",
        "version": seen.label,
        "sha256": model.sha256,
        "bytes": len(data),
        "stream_features": list(model.stream_features),
    }


def refusal(seen: Version | None, cause: str) -> dict[str, Any]:
    """Say why the version seen (if any was) is refused."""
    return {"result": "refused", "version": seen.label if seen else None, "cause": cause}


def main(argv: list[str] | None = None) -> int:
    """Stage the configured model; print JSON lines, the outcome last."""
    parser = argparse.ArgumentParser(prog="python -m scorer.models.staging", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where a verified file goes")
    parser.add_argument("--current", help="the version served now: nothing to do if unchanged")
    parser.add_argument(
        "--settings-on-stdin",
        action="store_true",
        help="read the settings as JSON from stdin (the master's, as it started) instead of "
        "the environment and .env",
    )
    args = parser.parse_args(argv)
    answer = sys.stdout
    sys.stdout = sys.stderr  # whatever the team's code prints must not garble the answer

    def report(line: dict[str, Any]) -> None:
        print(json.dumps(line), file=answer, flush=True)

    try:
        if args.settings_on_stdin:
            settings = Settings.model_validate_json(sys.stdin.read())
        else:
            settings = load_settings()
        outcome = stage_model(settings, args.out, args.current, report)
    except Exception as exc:  # still one answer the master can read
        outcome = refusal(None, f"{type(exc).__name__}: {exc}")
    report(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
