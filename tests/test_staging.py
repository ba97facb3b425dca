"""Staging a new version: download pinned, check like start-up, score one sample request."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from examples.local_stack import aws_client, upload_model
from scorer.models.source import Version, VersionGone
from scorer.models.staging import stage_model
from tests import fakes
from tests.conftest import make_settings
from tests.servers import ROOT


def publish(emulator: int, bucket: str, data: bytes) -> str:
    return upload_model(aws_client("s3", emulator), bucket, "m.pkl", data)


def test_verified_version_is_written_byte_for_byte(emulator: int, tmp_path: Path) -> None:
    data = fakes.pickle_by_value(fakes.tagged_model("v1"))
    settings = make_settings(S3_MODEL_PATH=publish(emulator, "staging-ok", data))
    out = tmp_path / "staged.pkl"
    seen: list[dict[str, Any]] = []

    outcome = stage_model(settings, out, current="an older version", report=seen.append)

    assert outcome["result"] == "verified", outcome
    assert outcome["sha256"] == hashlib.sha256(data).hexdigest()
    assert out.read_bytes() == data
    assert seen == [{"result": "seen", "version": outcome["version"]}]


def test_the_version_served_now_is_not_downloaded_again(emulator: int, tmp_path: Path) -> None:
    data = fakes.pickle_by_value(fakes.tagged_model("v1"))
    settings = make_settings(S3_MODEL_PATH=publish(emulator, "staging-same", data))
    first = stage_model(settings, tmp_path / "a.pkl", current=None)

    again = stage_model(settings, tmp_path / "b.pkl", current=first["version"])

    assert again == {"result": "unchanged", "version": first["version"]}
    assert not (tmp_path / "b.pkl").exists()


def test_sample_request_reaches_preprocess_with_its_feature_values(
    emulator: int, tmp_path: Path
) -> None:
    def needs_f1(model_input: Any, params: Any) -> Any:
        return [s["f1"] * 2 for s in model_input["streams"]]  # KeyError without the feature

    data = fakes.pickle_by_value(fakes.echo_model(predict=needs_f1))
    path = publish(emulator, "staging-sample", data)
    without = stage_model(make_settings(S3_MODEL_PATH=path), tmp_path / "a.pkl", None)
    sample = {"streams": [{"streamUrl": "https://s/1", "f1": 2.0}]}
    settings = make_settings(S3_MODEL_PATH=path, MODEL_SAMPLE_REQUEST=json.dumps(sample))

    with_features = stage_model(settings, tmp_path / "b.pkl", None)

    assert without["result"] == "refused"
    assert "fails on the sample request: KeyError: 'f1'" in without["cause"]
    assert with_features["result"] == "verified"


def test_unencodable_output_is_refused(emulator: int, tmp_path: Path) -> None:
    def opaque_output(model_input: Any, params: Any) -> Any:
        return {"scores": object()}  # /score would answer 500

    data = fakes.pickle_by_value(fakes.echo_model([], predict=opaque_output))
    settings = make_settings(S3_MODEL_PATH=publish(emulator, "staging-encode", data))

    outcome = stage_model(settings, tmp_path / "a.pkl", None)

    assert outcome["result"] == "refused"
    assert "fails on the sample request: TypeError" in outcome["cause"]


def test_an_overwrite_between_head_and_download_is_fetched_again(tmp_path: Path) -> None:
    data = fakes.pickle_by_value(fakes.tagged_model("v2"))

    class Overwritten:
        """The first pinned download finds the object changed; the second succeeds."""

        heads = 0

        def head(self) -> Version:
            self.heads += 1
            return Version(f"v{self.heads}")

        def fetch(self, pinned: Version | None = None) -> tuple[bytes, Version]:
            assert pinned is not None
            if pinned.label == "v1":
                raise VersionGone("cannot download: PreconditionFailed")
            return data, pinned

    source = Overwritten()
    pytest.MonkeyPatch().setattr("scorer.models.staging.source_for", lambda settings: source)
    try:
        outcome = stage_model(make_settings(), tmp_path / "a.pkl", None)
    finally:
        pytest.MonkeyPatch().undo()

    assert (outcome["result"], outcome["version"], source.heads) == ("verified", "v2", 2)


def test_command_reads_the_masters_settings_and_keeps_model_prints_off_its_answer(
    emulator: int, tmp_path: Path
) -> None:
    def chatty(user: Any, streams: Any, playlist: Any, params: Any) -> Any:
        print("preprocessing!")  # the team's code may print anything
        return streams

    data = fakes.pickle_by_value(fakes.echo_model([], preprocess=chatty, predict=fakes.tag_predict))
    settings = make_settings(S3_MODEL_PATH=publish(emulator, "staging-cli", data))
    out = tmp_path / "staged.pkl"

    done = subprocess.run(
        [sys.executable, "-m", "scorer.models.staging", "--out", str(out), "--settings-on-stdin"],
        input=settings.model_dump_json(by_alias=True, round_trip=True),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )

    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["result"] for line in lines] == ["seen", "refused"]
    # tag_predict needs params["tag"]: the answer names the cause, the print went to stderr.
    assert "KeyError: 'tag'" in lines[-1]["cause"]
    assert "preprocessing!" in done.stderr
