"""Client data in the logs of a real gunicorn: every record starts one line, none is forged."""

from __future__ import annotations

import logging
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.local_stack import aws_client, create_features_table, free_port, upload_model
from scorer.logs import FORMAT, ClientText, RecordFormatter
from tests import fakes
from tests.servers import Server, gunicorn_env, start_service, stop_service, wait_until

FORGED = "[ERROR] scorer.watchdog: forged"
LINE_BREAKS = ["\n", "\r\n", "\r", "\x0b", "\x85", "\u2028"]


@pytest.fixture(scope="module")
def server(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("logs")
    create_features_table(aws_client("dynamodb", emulator), "logs-features")
    model = upload_model(
        aws_client("s3", emulator),
        "logs-models",
        "refusing.pkl",
        fakes.pickle_by_value(fakes.echo_model(predict=fakes.echo_or_refuse_predict)),
    )
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        S3_MODEL_PATH=model,
        FEATURES_TABLE="logs-features",
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        LOGS_FRACTION="1",
    )
    server = start_service(env, tmp)
    yield server
    stop_service(server)


def forged_lines(log: Path, by: str) -> list[str]:
    """Return the log lines a client's text started, as str.splitlines() sees lines."""
    return [line for line in log.read_text().splitlines() if line.startswith(f"{FORGED} {by}")]


def test_client_text_in_a_logged_request_starts_no_line(server: Server) -> None:
    for brk in LINE_BREAKS:
        body = {
            "user": {"userid": f"u{brk}{FORGED} by userid"},
            "streams": [{"streamUrl": f"https://s{brk}{FORGED} by streamUrl", "note": brk}],
        }
        assert server.post("/score", body)[0] == 200

    def all_logged() -> bool:
        return server.log.read_text().count("by userid") >= len(LINE_BREAKS)

    assert wait_until(all_logged, 10), server.log.read_text()
    assert forged_lines(server.log, "by userid") == []
    assert forged_lines(server.log, "by streamUrl") == []
    assert f"user 'u\\n{FORGED} by userid' streams: " in server.log.read_text()


def test_exception_text_carrying_client_data_starts_no_line(server: Server) -> None:
    for brk in LINE_BREAKS:
        body = {"user": {"userid": f"u{brk}{FORGED} by exception", "refuse": True}}
        body["streams"] = [{"streamUrl": "https://s"}]
        assert server.post("/score", body) == (500, {"detail": "Model prediction failed"})

    def all_logged() -> bool:
        return server.log.read_text().count("cannot score user") >= len(LINE_BREAKS)

    assert wait_until(all_logged, 10), server.log.read_text()
    assert forged_lines(server.log, "by exception") == []
    # Each traceback is still there, its lines indented under the record that carries it.
    assert "\n    ValueError: cannot score user u\n    " + FORGED in server.log.read_text()


def test_deeply_nested_client_data_is_logged_without_failing_the_request(
    server: Server,
) -> None:
    # 1000 levels: under orjson's limit of 1024, over what repr() can recurse through.
    deep = "[" * 1000 + "]" * 1000
    body = '{"user": {"userid": "deep"}, "streams": [{"streamUrl": "https://d", "x": %s}]}'
    request = urllib.request.Request(server.url("/score"), data=(body % deep).encode())

    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert wait_until(lambda: "user 'deep' streams: " in server.log.read_text(), 10)


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_formatter_keeps_a_record_on_its_first_line(brk: str) -> None:
    try:
        raise ValueError(f"bad{brk}{FORGED}\x1b[2K")
    except ValueError:
        record = logging.LogRecord("scorer", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
        record.exc_info = sys.exc_info()
    lines = RecordFormatter(FORMAT).format(record).split("\n")

    assert lines[0].startswith("[") and lines[0].endswith("failed x")
    assert all(line.startswith("    ") for line in lines[1:])
    # No other line break, and terminal escapes written out rather than sent.
    assert all(line.isprintable() for line in lines)


def test_client_text_renders_as_one_escaped_line() -> None:
    assert str(ClientText(f"u\n{FORGED}\u2028")) == f"'u\\n{FORGED}\\u2028'"
