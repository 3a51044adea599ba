"""What moves between localcloud's S3 and a training job's directory, as SageMaker moves it around a container.

Before training (Downloading): every channel into ``input/data/<channel>/`` (File mode; FastFile is
served the same way), from an ``S3Prefix`` or a ``ManifestFile``, and the checkpoints from
CheckpointConfig's S3 URI into its LocalPath. After it: the checkpoints back to S3, and the packed
model dir as ``<S3OutputPath>/<job>/output/model.tar.gz`` (Uploading). A problem with the job's own
buckets, keys or manifest ends the job as a ClientError, in SageMaker's words.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from localcloud.files import UnsafePath, safe_join
from localcloud.sagemaker.common import client_error, parse_s3_uri
from localcloud.wire import CHUNK_BYTES, ServiceError

if TYPE_CHECKING:
    from localcloud.s3 import S3Backend
    from localcloud.sagemaker.runner import JobPaths


class JobTransfer:
    """Copies for one job; `request` is its stored CreateTrainingJob request."""

    def __init__(self, s3: S3Backend, region: str, job_name: str, request: dict[str, Any]) -> None:
        self.s3 = s3
        self.region = region
        self.job_name = job_name
        self._request = request

    # --- downloading ---------------------------------------------------------------------------------

    def download(self, job: JobPaths, end_if_asked: Callable[[], None]) -> None:
        """Fill a prepared job dir's channels and checkpoints; `end_if_asked` runs before each object."""
        request = self._request
        output_bucket, _ = parse_s3_uri(request["OutputDataConfig"]["S3OutputPath"], "S3OutputPath")
        if not self._bucket_exists(output_bucket):
            raise client_error(
                f'The S3 bucket "{output_bucket}" of OutputDataConfig.S3OutputPath does not exist; '
                "create it before starting the job"
            )
        for channel in request.get("InputDataConfig", []):
            self._download_channel(channel, job.channel_dir(channel["ChannelName"]), end_if_asked)
        if "CheckpointConfig" in request:
            bucket, prefix = parse_s3_uri(request["CheckpointConfig"]["S3Uri"], "CheckpointConfig.S3Uri")
            if self._bucket_exists(bucket):
                for key, relative in self._objects_under(bucket, prefix):
                    self._copy_object(bucket, key, self._checkpoint_dir(job), relative)

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self.s3.bucket(bucket)
        except ServiceError:
            return False
        return True

    def _download_channel(
        self, channel: dict[str, Any], destination: Path, end_if_asked: Callable[[], None]
    ) -> None:
        source = channel["DataSource"]["S3DataSource"]
        uri = source["S3Uri"]
        bucket, prefix = parse_s3_uri(uri, "S3Uri")
        if source["S3DataType"] == "ManifestFile":
            objects = self._manifest_objects(uri, bucket, prefix)
        else:
            objects = [(bucket, key, relative) for key, relative in self._objects_under(bucket, prefix)]
        if not objects:
            raise client_error(
                f'No S3 objects found under S3 URL "{uri}" given in input data source. Please ensure that the '
                f"bucket exists in the selected region ({self.region}), that objects exist under that S3 prefix, and "
                f'that the role "{self._request["RoleArn"]}" has "s3:ListBucket" permissions on bucket "{bucket}".'
            )
        for object_bucket, key, relative in objects:
            end_if_asked()
            self._copy_object(object_bucket, key, destination, relative)

    def _objects_under(self, bucket: str, prefix: str) -> list[tuple[str, str]]:
        """(key, path in the channel) of an S3Prefix, as SageMaker lays it out.

        A prefix that names an object exactly is that one file; otherwise every key under it, at its
        path after the prefix. "Folder" placeholder keys (ending in /) are skipped.
        """
        if not self._bucket_exists(bucket):
            return []
        if prefix and not prefix.endswith("/"):
            try:
                self.s3.head_object(bucket, prefix)
                return [(prefix, PurePosixPath(prefix).name)]
            except ServiceError:
                pass
        return [
            (key, key[len(prefix) :].lstrip("/") or PurePosixPath(key).name)
            for key in self.s3.list_keys(bucket, prefix)
            if not key.endswith("/")
        ]

    def _manifest_objects(self, uri: str, bucket: str, key: str) -> list[tuple[str, str, str]]:
        """(bucket, key, path in the channel) of every entry of a ManifestFile:
        ``[{"prefix": "s3://bucket/prefix/"}, "relative/key", ...]``."""
        try:
            manifest = json.loads(self.s3.get_bytes(bucket, key))
        except ServiceError:
            raise client_error(
                f'The manifest file "{uri}" given in input data source does not exist'
            ) from None
        except ValueError as error:
            raise client_error(f'The manifest file "{uri}" is not valid JSON: {error}') from None
        if (
            not isinstance(manifest, list)
            or not manifest
            or not isinstance(manifest[0], dict)
            or not isinstance(manifest[0].get("prefix"), str)
            or not all(isinstance(entry, str) for entry in manifest[1:])
        ):
            raise client_error(
                f'The manifest file "{uri}" must be a JSON list: [{{"prefix": "s3://bucket/prefix/"}}, "key", ...]'
            )
        prefix_bucket, prefix = parse_s3_uri(manifest[0]["prefix"], "manifest prefix")
        objects = []
        for relative in manifest[1:]:
            object_key = prefix + relative
            try:
                self.s3.head_object(prefix_bucket, object_key)
            except ServiceError:
                raise client_error(
                    f'Data download failed: "s3://{prefix_bucket}/{object_key}", listed in the manifest file '
                    f'"{uri}", does not exist'
                ) from None
            objects.append((prefix_bucket, object_key, relative))
        return objects

    def _copy_object(self, bucket: str, key: str, destination: Path, relative: str) -> None:
        try:
            target = safe_join(destination, relative)
        except UnsafePath as error:
            raise client_error(
                f'S3 object "s3://{bucket}/{key}" cannot be placed in the channel: {error}'
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        _, source = self.s3.open_object(bucket, key)
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)

    # --- checkpoints ---------------------------------------------------------------------------------

    def _checkpoint_dir(self, job: JobPaths) -> Path:
        # LocalPath (default /opt/ml/checkpoints) lives under SAGEMAKER_BASE_DIR, localcloud's /opt/ml.
        local = PurePosixPath(
            self._request.get("CheckpointConfig", {}).get("LocalPath") or "/opt/ml/checkpoints"
        )
        relative = (
            local.relative_to("/opt/ml") if local.is_relative_to("/opt/ml") else PurePosixPath("checkpoints")
        )
        directory = safe_join(job.base, str(relative))
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def sync_checkpoints_out(self, job: JobPaths) -> None:
        """Copy the checkpoint dir's files to CheckpointConfig's S3 URI (nothing without one)."""
        if "CheckpointConfig" not in self._request:
            return
        bucket, prefix = parse_s3_uri(self._request["CheckpointConfig"]["S3Uri"], "CheckpointConfig.S3Uri")
        if not self._bucket_exists(bucket):
            return
        directory = self._checkpoint_dir(job)
        base = prefix.rstrip("/") + "/" if prefix else ""
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                self.s3.put_file(bucket, base + path.relative_to(directory).as_posix(), path)

    # --- uploading -----------------------------------------------------------------------------------

    def upload_model(self, archive: Path) -> str:
        """Store the packed model as ``<S3OutputPath>/<job>/output/model.tar.gz``; returns its S3 URI."""
        bucket, prefix = parse_s3_uri(self._request["OutputDataConfig"]["S3OutputPath"], "S3OutputPath")
        key = "/".join(part for part in (prefix.rstrip("/"), self.job_name, "output", "model.tar.gz") if part)
        try:
            self.s3.put_file(bucket, key, archive, content_type="application/x-tar")
        except ServiceError as error:
            raise client_error(
                f"Uploading the model to s3://{bucket}/{key} failed: {error.message}"
            ) from None
        return f"s3://{bucket}/{key}"
