"""Model sources: the version each one reports, and downloads pinned to the version seen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from examples.local_stack import aws_client
from scorer.models.source import FileSource, S3Source, SourceError, Version, VersionGone


def test_versioned_bucket_reports_the_version_id_and_serves_the_version_seen(
    emulator: int,
) -> None:
    s3 = aws_client("s3", emulator)
    s3.create_bucket(Bucket="source-versioned")
    s3.put_bucket_versioning(
        Bucket="source-versioned", VersioningConfiguration={"Status": "Enabled"}
    )
    first = s3.put_object(Bucket="source-versioned", Key="m.pkl", Body=b"first")["VersionId"]
    source = S3Source("s3://source-versioned/m.pkl")

    seen = source.head()
    s3.put_object(Bucket="source-versioned", Key="m.pkl", Body=b"second")  # overwritten meanwhile

    assert (seen.label, seen.version_id) == (first, first)
    assert source.fetch(seen) == (b"first", seen)
    assert source.fetch()[0] == b"second"


def test_unversioned_bucket_reports_the_etag_and_refuses_a_changed_object(emulator: int) -> None:
    s3 = aws_client("s3", emulator)
    s3.create_bucket(Bucket="source-plain")
    etag = s3.put_object(Bucket="source-plain", Key="m.pkl", Body=b"first")["ETag"]
    source = S3Source("s3://source-plain/m.pkl")

    seen = source.head()
    assert seen == Version(etag.strip('"'), None, etag)
    assert source.fetch(seen) == (b"first", seen)

    s3.put_object(Bucket="source-plain", Key="m.pkl", Body=b"second")
    with pytest.raises(VersionGone, match="PreconditionFailed"):
        source.fetch(seen)  # never the new bytes under the old version


def test_missing_object_names_the_path(emulator: int) -> None:
    aws_client("s3", emulator).create_bucket(Bucket="source-empty")
    with pytest.raises(SourceError, match=r"cannot read s3://source-empty/m\.pkl: NoSuchKey"):
        S3Source("s3://source-empty/m.pkl").head()


def test_local_file_version_is_mtime_and_size_and_changes_on_replace(tmp_path: Path) -> None:
    path = tmp_path / "m.pkl"
    path.write_bytes(b"first")
    source = FileSource(path)
    seen = source.head()
    stat = path.stat()

    assert seen.label == f"{stat.st_mtime_ns}-{stat.st_size}"
    assert source.fetch() == (b"first", seen)

    (tmp_path / "new").write_bytes(b"second!")
    os.replace(tmp_path / "new", path)  # published by rename
    assert source.head() != seen
    assert source.fetch()[0] == b"second!"

    path.unlink()
    with pytest.raises(SourceError, match="cannot read MODEL_PATH"):
        source.head()
