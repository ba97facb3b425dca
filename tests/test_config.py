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


def test_no_model_source_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_MODEL_PATH")
    with pytest.raises(SettingsError, match="S3_MODEL_PATH"):
        load_settings()


def test_env_file_is_read(tmp_path: object) -> None:
    import pathlib

    pathlib.Path(".env").write_text("FEATURES_TABLE=from-dotenv\n")
    assert load_settings().features_table == "from-dotenv"


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    from config import Settings

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [f.alias for f in Settings.model_fields.values() if f"| `{f.alias}` |" not in readme]
    assert missing == []
