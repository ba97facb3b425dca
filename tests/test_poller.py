"""The poll: one poller at a time, one SIGHUP per new version, refused versions left alone."""

from __future__ import annotations

import os
from pathlib import Path

from scorer.metrics import Metrics
from scorer.models.poller import ModelPoller
from scorer.models.reload import ReloadState, write_state
from scorer.models.source import SourceError, Version
from tests.conftest import sample


class Published:
    """A source whose version the test sets, or breaks."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.error: Exception | None = None

    def head(self) -> Version:
        if self.error is not None:
            raise self.error
        return Version(self.label)

    def fetch(self, pinned: Version | None = None) -> tuple[bytes, Version]:
        raise AssertionError("the poll never downloads")


def poller(source: Published, run_dir: Path, metrics: Metrics, signals: list[int]) -> ModelPoller:
    return ModelPoller(
        source, 1.0, run_dir, "v1", metrics, master_pid=os.getppid(), signal_master=signals.append
    )


def test_a_new_version_signals_the_master_once(tmp_path: Path) -> None:
    source, signals = Published("v1"), []
    poll = poller(source, tmp_path, Metrics(), signals)

    unchanged = poll.poll_once()
    source.label = "v2"
    first, second = poll.poll_once(), poll.poll_once()  # the reload may take a while

    assert (unchanged, first, second) == (False, True, False)
    assert signals == [os.getppid()]


def test_a_refused_version_is_not_asked_for_until_the_object_changes(tmp_path: Path) -> None:
    write_state(tmp_path, ReloadState("v2", "failure", "has no 'predict'"))
    source, signals = Published("v2"), []
    poll = poller(source, tmp_path, Metrics(), signals)  # a new worker after the refusal

    refused = poll.poll_once()
    source.label = "v3"
    newer = poll.poll_once()

    assert (refused, newer) == (False, True)


def test_errors_are_counted_and_the_next_period_tries_again(tmp_path: Path) -> None:
    metrics, source, signals = Metrics(), Published("v2"), []
    poll = poller(source, tmp_path, metrics, signals)
    source.error = SourceError("cannot read s3://b/m.pkl: Could not connect")

    failed = [poll.poll_once(), poll.poll_once()]
    source.error = None

    assert (failed, poll.poll_once()) == ([False, False], True)
    assert sample(metrics, "scorer_model_poll_errors_total") == 2


def test_one_process_polls_until_it_lets_go(tmp_path: Path) -> None:
    first = poller(Published("v1"), tmp_path, Metrics(), [])
    second = poller(Published("v1"), tmp_path, Metrics(), [])

    assert (first.hold_lock(), second.hold_lock(), first.hold_lock()) == (True, False, True)
    first.release_lock()  # as when its worker exits
    assert second.hold_lock()
    second.release_lock()
