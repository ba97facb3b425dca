"""Where the model file lives and which version of it is there now: an S3 object or a local file.

A version names one exact file: the S3 VersionId when the bucket is versioned, else the ETag; for
MODEL_PATH, the file's mtime (ns) and size. A reload downloads the version it saw, pinned, so an
object overwritten mid-download never yields a mix of two files, nor bytes under the wrong name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config import Settings

READ_ATTEMPTS = 3
"""A local file changing while it is read is read again, this many times at most."""


class SourceError(Exception):
    """The model's file cannot be read or described now."""


class VersionGone(SourceError):
    """The pinned version is no longer there (overwritten since it was seen)."""


@dataclass(frozen=True, slots=True)
class Version:
    """One exact model file: `label` is what /health and the metrics show."""

    label: str
    version_id: str | None = None  # S3, versioned bucket
    etag: str | None = None  # S3, quoted as S3 sends it


class ModelSource(Protocol):
    """The place the model is published to."""

    def head(self) -> Version:
        """Return the version there now, without reading the file."""
        ...

    def fetch(self, pinned: Version | None = None) -> tuple[bytes, Version]:
        """Return the file's bytes and their version (`pinned`'s, when given)."""
        ...


class S3Source:
    """The model as an S3 object; HEAD tells its version, GET is pinned to the one seen."""

    def __init__(
        self,
        url: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 10,
        attempts: int = 3,
    ) -> None:
        self.url = url
        self._region = region
        self._endpoint_url = endpoint_url
        self.bucket, self.key = url.removeprefix("s3://").split("/", 1)
        # Bounded waits: an S3 that accepts but never answers must fail in about 30 s, not
        # after botocore's default 60 s read timeout (between two reads), three times over.
        self._config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": attempts},
        )
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3",
                config=self._config,
                # From the settings: boto3 alone reads only AWS_DEFAULT_REGION.
                region_name=self._region,
                endpoint_url=self._endpoint_url,
            )
        return self._client

    def head(self) -> Version:
        try:
            return _s3_version(self._s3().head_object(Bucket=self.bucket, Key=self.key))
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(f"cannot read {self.url}: {_reason(exc)}") from None

    def fetch(self, pinned: Version | None = None) -> tuple[bytes, Version]:
        pin: dict[str, str] = {}
        if pinned is not None and pinned.version_id:
            pin["VersionId"] = pinned.version_id
        elif pinned is not None and pinned.etag:
            pin["IfMatch"] = pinned.etag  # 412 if the object changed since: never a mix
        try:
            answer = self._s3().get_object(Bucket=self.bucket, Key=self.key, **pin)
            data: bytes = answer["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            reason = _reason(exc)
            if pin and reason in ("PreconditionFailed", "NoSuchVersion"):
                raise VersionGone(f"cannot download {self.url}: {reason}") from None
            raise SourceError(f"cannot download {self.url}: {reason}") from None
        return data, _s3_version(answer)


class FileSource:
    """The model as a local file (MODEL_PATH); writers should publish it by rename."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def head(self) -> Version:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise SourceError(f"cannot read MODEL_PATH {self.path}: {exc.strerror}") from None
        return Version(f"{stat.st_mtime_ns}-{stat.st_size}")

    def fetch(self, pinned: Version | None = None) -> tuple[bytes, Version]:
        # A file has no older versions to ask for: return the bytes with the version they
        # really have, read again if the file changed while it was read.
        for _ in range(READ_ATTEMPTS):
            before = self.head()
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise SourceError(f"cannot read MODEL_PATH {self.path}: {exc.strerror}") from None
            if self.head() == before:
                return data, before
        raise SourceError(f"MODEL_PATH {self.path} kept changing while it was read")


def source_for(
    settings: Settings,
    *,
    connect_timeout: float = 5,
    read_timeout: float = 10,
    attempts: int = 3,
) -> ModelSource:
    """Return the configured model source: MODEL_PATH if set, else S3_MODEL_PATH."""
    if settings.model_path is not None:
        return FileSource(settings.model_path)
    assert settings.s3_model_path is not None  # Settings requires one of the two
    return S3Source(
        settings.s3_model_path,
        region=settings.aws_region,
        endpoint_url=settings.endpoint_url("s3"),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        attempts=attempts,
    )


def _s3_version(answer: dict[str, Any]) -> Version:
    version_id = answer.get("VersionId")
    if version_id == "null":  # an object written before versioning was enabled
        version_id = None
    etag = answer.get("ETag")
    return Version(version_id or (etag or "").strip('"'), version_id, etag)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "error"))
        # HEAD answers carry no body, so botocore only has the status code.
        return {"404": "NoSuchKey", "403": "AccessDenied", "412": "PreconditionFailed"}.get(
            code, code
        )
    return str(exc)
