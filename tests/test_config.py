"""Settings: defaults, the seed's variable names, and one clear line for a bad value."""

from __future__ import annotations

import pytest

from config import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _no_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.setenv("S3_MODEL_PATH", "s3://bucket/models/ranker.pkl")


def test_defaults_match_the_seed_service() -> None:
    settings = load_settings()
    assert (settings.features_table, settings.logs_fraction, settings.cache_maxsize) == (
        "features",
        0.01,
        50_000,
    )
    assert settings.stream_pk_prefix == "STREAM#"
    assert settings.model_name == "ranker.pkl"


def test_local_model_path_takes_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PATH", "/models/local.pkl")
    assert load_settings().model_name == "local.pkl"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOGS_FRACTION", "2"),
        ("CACHE_MAXSIZE", "lots"),
        ("PORT", "0"),
        ("S3_MODEL_PATH", "bucket/key"),
        ("MODEL_SHA256", "abc"),
        ("GC_FREEZE", "maybe"),
        ("AWS_ENDPOINT_URL", "localhost:4566"),
        ("AWS_ENDPOINT_URL", "127.0.0.1"),
        ("AWS_ENDPOINT_URL_S3", "ftp://127.0.0.1:4566"),
        ("AWS_ENDPOINT_URL_S3", "http://"),
        ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:port"),
        ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:99999"),
        ("AWS_REGION", "us east 1"),
        ("HOST", "0.0.0.0:8000"),
        ("HOST", "::1]"),
        ("MODEL_POLL_SECONDS", "-1"),
        ("MODEL_RELOAD_TIMEOUT_SECONDS", "0"),
        ("MODEL_SAMPLE_REQUEST", "{not json"),
        ("MODEL_SAMPLE_REQUEST", '{"streams": []}'),
        ("MODEL_SAMPLE_REQUEST", '{"streams": [{"url": "a"}]}'),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=rf"^invalid settings: {name}: "):
        load_settings()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:4566", "https://dynamodb.eu-west-1.amazonaws.com", "http://[::1]:9000"],
)
def test_endpoint_urls_with_a_scheme_and_host_are_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", url)
    assert load_settings().aws_endpoint_url_dynamodb == url


@pytest.mark.parametrize(
    ("env", "region"),
    [
        ({"AWS_REGION": "eu-west-2"}, "eu-west-2"),
        ({"AWS_DEFAULT_REGION": "eu-west-3"}, "eu-west-3"),
        ({"AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "eu-west-3"}, "eu-west-2"),
        ({}, None),
        ({"AWS_REGION": ""}, None),
    ],
)
def test_region_is_read_from_aws_region_then_aws_default_region(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], region: str | None
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings().aws_region == region


@pytest.mark.parametrize(
    ("host", "bind"),
    [
        ("0.0.0.0", "0.0.0.0:8000"),
        ("localhost", "localhost:8000"),
        ("::", "[::]:8000"),
        ("::1", "[::1]:8000"),
        ("[::1]", "[::1]:8000"),
    ],
)
def test_bind_puts_ipv6_addresses_in_brackets(
    monkeypatch: pytest.MonkeyPatch, host: str, bind: str
) -> None:
    monkeypatch.setenv("HOST", host)
    assert load_settings().bind == bind


def test_no_model_source_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_MODEL_PATH")
    with pytest.raises(SettingsError, match="S3_MODEL_PATH"):
        load_settings()


def test_env_file_is_read(tmp_path: object) -> None:
    import pathlib

    pathlib.Path(".env").write_text("FEATURES_TABLE=from-dotenv\n")
    assert load_settings().features_table == "from-dotenv"


def test_bad_value_at_a_reload_keeps_the_running_settings_with_one_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from config import RunningSettings

    running = RunningSettings()
    monkeypatch.setenv("TIMEOUT", "never")
    with pytest.raises(SettingsError, match="TIMEOUT"):
        running.load()  # the first start has nothing to keep

    monkeypatch.setenv("TIMEOUT", "12")
    assert running.load().timeout == 12
    monkeypatch.setenv("TIMEOUT", "never")
    assert running.load().timeout == 12
    assert [(r.levelname, "TIMEOUT" in r.getMessage()) for r in caplog.records] == [("ERROR", True)]
    monkeypatch.setenv("TIMEOUT", "13")
    assert running.load().timeout == 13
