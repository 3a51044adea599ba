"""S3Backend: buckets, objects and multipart uploads in the durable store, bodies as immutable blobs.

Keys never become file paths: every object body is a blob with a random id, and the document that
points at it is replaced in one SQLite transaction, so a reader sees the old object or the new one,
never a mix. This is also the in-process API other services use (put_file, put_bytes, open_object,
get_bytes, head_object, list_keys). Every committed write or delete is offered to the bucket's
notification configuration (notifications.py), which sends the matching events to SQS.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from localcloud.config import Config
from localcloud.s3.bodies import Upload
from localcloud.s3.exceptions import precondition_failed
from localcloud.s3.notifications import BucketNotifications
from localcloud.s3.utils import DEFAULT_CONTENT_TYPE, MAX_KEYS, check_key, object_attributes, quoted
from localcloud.service import Backend
from localcloud.store import Store
from localcloud.wire import CHUNK_BYTES, ServiceError

if TYPE_CHECKING:
    from localcloud.app import LocalCloud
    from localcloud.sqs import SqsBackend

BUCKET_KIND = "s3/bucket"  # key: bucket name
OBJECT_KIND = "s3/object"  # key: "<bucket>/<key>" (bucket names cannot contain "/")
UPLOAD_KIND = "s3/upload"  # key: upload id
PART_KIND = "s3/part"  # key: "<upload id>/<part number, 5 digits>"

MiB = 1024 * 1024
MIN_PART_BYTES = 5 * MiB
MAX_PART_NUMBER = 10_000

_BUCKET_NAME = re.compile(r"(?=.{3,63}$)[a-z0-9][a-z0-9.-]*[a-z0-9]")


@dataclass
class Listing:
    objects: list[tuple[str, dict[str, Any]]]
    common_prefixes: list[str]
    truncated: bool
    last_marker: str | None  # the last key or common prefix returned; listing resumes after it


class S3Backend(Backend):
    """Buckets and objects in the store. Other services use put_file/put_bytes/open_object/list_keys."""

    def __init__(self, store: Store, config: Config, sqs: SqsBackend | None = None) -> None:
        self.store = store
        self.config = config
        self.endpoint_url = ""
        self.notifications = BucketNotifications(store, config, sqs)

    def start(self, cloud: LocalCloud) -> None:
        self.endpoint_url = cloud.endpoint_url

    def counts(self) -> dict[str, int]:
        return {"buckets": self.store.count(BUCKET_KIND), "objects": self.store.count(OBJECT_KIND)}

    # buckets

    def create_bucket(self, name: str, region: str) -> None:
        if not _BUCKET_NAME.fullmatch(name) or ".." in name:
            raise ServiceError("InvalidBucketName", "The specified bucket is not valid.", BucketName=name)
        if not self.store.insert(BUCKET_KIND, name, {"created": time.time(), "region": region}):
            raise ServiceError(
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already own it.",
                409,
                BucketName=name,
            )

    def bucket(self, name: str) -> dict[str, Any]:
        doc = self.store.get(BUCKET_KIND, name)
        if doc is None:
            raise ServiceError("NoSuchBucket", "The specified bucket does not exist", 404, BucketName=name)
        return doc

    def list_buckets(self) -> list[tuple[str, dict[str, Any]]]:
        return self.store.scan(BUCKET_KIND)

    def delete_bucket(self, name: str) -> None:
        with self.store.transaction():
            self.bucket(name)
            if self.store.scan(OBJECT_KIND, prefix=f"{name}/", limit=1):
                raise ServiceError(
                    "BucketNotEmpty", "The bucket you tried to delete is not empty", 409, BucketName=name
                )
            for upload_id, doc in self.store.scan(UPLOAD_KIND):
                if doc["bucket"] == name:
                    self._drop_upload(upload_id)
            self.notifications.forget(name)
            self.store.delete(BUCKET_KIND, name)

    def put_notification_configuration(
        self, bucket: str, configuration: dict[str, Any], skip_destination_validation: bool = False
    ) -> None:
        """Replace the bucket's notification configuration (boto3's NotificationConfiguration)."""
        with self.store.transaction():
            region = self.bucket(bucket)["region"]
            self.notifications.put(bucket, region, configuration, skip_destination_validation)

    def notification_configuration(self, bucket: str) -> dict[str, Any]:
        self.bucket(bucket)
        return self.notifications.configuration(bucket)

    # objects

    def _write_blob(self, body) -> str:
        """Stream a request body into a new blob, verifying its checksums before committing it."""
        with self.store.blob_writer() as writer:
            while chunk := body.read(CHUNK_BYTES):
                writer.write(chunk)
            body.verify()
            return writer.commit()

    def put_object(
        self,
        bucket: str,
        key: str,
        body: Upload,
        attributes: dict[str, Any] | None = None,
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> dict[str, Any]:
        """Stream `body` into a new blob and make it the object; returns the object's document."""
        check_key(key)
        self.bucket(bucket)
        blob = self._write_blob(body)
        doc = {
            "blob": blob,
            "size": body.size,
            "etag": body.etag,
            "modified": time.time(),
            "checksum": body.checksum,
            **object_attributes(attributes or {}),
        }
        return self._replace_object(bucket, key, doc, if_match=if_match, if_none_match=if_none_match)

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> dict[str, Any]:
        return self.put_object(
            bucket, key, Upload(io.BytesIO(data), len(data)), {"ContentType": content_type}
        )

    def put_file(
        self, bucket: str, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> dict[str, Any]:
        with open(path, "rb") as file:
            return self.put_object(
                bucket, key, Upload(file, Path(path).stat().st_size), {"ContentType": content_type}
            )

    def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        doc = self.store.get(OBJECT_KIND, f"{bucket}/{key}")
        if doc is None:
            self.bucket(bucket)
            raise ServiceError("NoSuchKey", "The specified key does not exist.", 404, Key=key)
        return doc

    def open_object(self, bucket: str, key: str) -> tuple[dict[str, Any], BinaryIO]:
        """The object's document and its body opened for reading (the caller closes it)."""
        for _ in range(3):
            doc = self.head_object(bucket, key)
            try:
                return doc, self.store.open_blob(doc["blob"])
            except FileNotFoundError:
                continue  # replaced between the two reads; the newer document names a live blob
        raise ServiceError("InternalError", f"object {bucket}/{key} kept changing while being opened", 500)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        _, file = self.open_object(bucket, key)
        with file:
            return file.read()

    def delete_object(self, bucket: str, key: str, if_match: str | None = None) -> None:
        """Delete the object; with ``if_match`` (S3's conditional delete) only if its ETag matches."""
        region = self.bucket(bucket)["region"]
        with self.store.transaction():
            doc = self.store.get(OBJECT_KIND, f"{bucket}/{key}")
            if if_match is not None:
                if doc is None:
                    raise ServiceError("NoSuchKey", "The specified key does not exist.", 404, Key=key)
                if if_match != "*" and doc["etag"] != quoted(if_match):
                    raise precondition_failed("If-Match")
            if doc is not None:
                self.store.delete(OBJECT_KIND, f"{bucket}/{key}")
                self.store.delete_blob(doc["blob"])  # unlinked once the delete is committed
                self.notifications.object_removed(bucket, region, key)

    def copy_object(
        self,
        source_bucket: str,
        source_key: str,
        bucket: str,
        key: str,
        attributes: dict[str, Any] | None,
        *,
        source_if_match: str | None = None,
        source_if_none_match: str | None = None,
    ) -> dict[str, Any]:
        """Copy an object; `attributes` replace the source's content type and metadata when given.

        ``source_if_match`` / ``source_if_none_match`` are S3's x-amz-copy-source-if-(none-)match:
        the copy is made only from (or not from) the source with that ETag, else 412.
        """
        check_key(key)
        source = self.head_object(source_bucket, source_key)
        if source_if_match is not None and source["etag"] != quoted(source_if_match):
            raise precondition_failed("x-amz-copy-source-If-Match")
        if source_if_none_match is not None and source["etag"] == quoted(source_if_none_match):
            raise precondition_failed("x-amz-copy-source-If-None-Match")
        self.bucket(bucket)
        blob = self.store.copy_blob(source["blob"])
        doc = {**source, "blob": blob, "modified": time.time()}
        if attributes is not None:
            doc.update(object_attributes(attributes))
        return self._replace_object(bucket, key, doc, event="Copy")

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        max_keys: int = MAX_KEYS,
        marker: str | None = None,
    ) -> Listing:
        """Keys after `marker` in UTF-8 order; with a delimiter, keys sharing the part of the key up to
        the first delimiter after `prefix` roll up into one common prefix (counted as one entry)."""
        self.bucket(bucket)
        objects: list[tuple[str, dict[str, Any]]] = []
        prefixes: list[str] = []
        cursor = marker
        last: str | None = None
        while True:
            after = None if cursor is None else f"{bucket}/{cursor}"
            batch = self.store.scan(OBJECT_KIND, prefix=f"{bucket}/{prefix}", after=after, limit=MAX_KEYS)
            if not batch:
                return Listing(objects, prefixes, False, last)
            for stored_key, doc in batch:
                key = stored_key[len(bucket) + 1 :]
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    # Every key under `common` sorts before this bound, so the next scan skips them.
                    cursor = common + "\U0010ffff"
                    if marker is not None and common <= marker:
                        break  # rolled up on an earlier page
                    if len(objects) + len(prefixes) == max_keys:
                        return Listing(objects, prefixes, True, last)
                    prefixes.append(common)
                    last = common
                    break
                if len(objects) + len(prefixes) == max_keys:
                    return Listing(objects, prefixes, True, last)
                objects.append((key, doc))
                last = cursor = key

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix`, in order (for in-process use; no pagination)."""
        self.bucket(bucket)
        start = len(bucket) + 1
        return [stored[start:] for stored, _ in self.store.scan(OBJECT_KIND, prefix=f"{bucket}/{prefix}")]

    def _replace_object(
        self,
        bucket: str,
        key: str,
        doc: dict[str, Any],
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
        event: str = "Put",
    ) -> dict[str, Any]:
        """Make `doc` the object, in one transaction; `event` is the ObjectCreated event it sends."""
        try:
            with self.store.transaction():
                region = self.bucket(bucket)["region"]  # it may have been deleted while uploading
                old = self.store.get(OBJECT_KIND, f"{bucket}/{key}")
                if if_none_match == "*" and old is not None:
                    raise precondition_failed("If-None-Match")
                if if_match is not None and (old is None or old["etag"] != quoted(if_match)):
                    raise precondition_failed("If-Match")
                self.store.put(OBJECT_KIND, f"{bucket}/{key}", doc)
                if old is not None:
                    self.store.delete_blob(old["blob"])  # unlinked once the new document is committed
                self.notifications.object_created(bucket, region, key, doc, event)
        except BaseException:
            self.store.delete_blob(doc["blob"])  # no committed document names it
            raise
        return doc

    # multipart uploads

    def create_multipart_upload(
        self, bucket: str, key: str, attributes: dict[str, Any], checksum_algorithm: str | None
    ) -> str:
        check_key(key)
        self.bucket(bucket)
        upload_id = uuid.uuid4().hex
        doc = {
            "bucket": bucket,
            "key": key,
            "initiated": time.time(),
            "checksum_algorithm": checksum_algorithm,
            **object_attributes(attributes),
        }
        self.store.put(UPLOAD_KIND, upload_id, doc)
        return upload_id

    def upload(self, bucket: str, key: str, upload_id: str) -> dict[str, Any]:
        doc = self.store.get(UPLOAD_KIND, upload_id)
        if doc is None or doc["bucket"] != bucket or doc["key"] != key:
            raise ServiceError(
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may be invalid, "
                "or the upload may have been aborted or completed.",
                404,
                UploadId=upload_id,
            )
        return doc

    def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, body: Upload
    ) -> dict[str, Any]:
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise ServiceError(
                "InvalidArgument",
                f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive",
                ArgumentName="partNumber",
            )
        self.upload(bucket, key, upload_id)
        blob = self._write_blob(body)
        doc = {
            "blob": blob,
            "size": body.size,
            "etag": body.etag,
            "md5": body.md5_digest.hex(),
            "checksum": body.checksum,
            "modified": time.time(),
        }
        part_key = f"{upload_id}/{part_number:05d}"
        try:
            with self.store.transaction():
                self.upload(bucket, key, upload_id)
                old = self.store.get(PART_KIND, part_key)
                self.store.put(PART_KIND, part_key, doc)
                if old is not None:
                    self.store.delete_blob(old["blob"])
        except BaseException:
            self.store.delete_blob(blob)
            raise
        return doc

    def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> dict[str, Any]:
        """Join the listed (part number, ETag) parts, in order, into the object."""
        upload = self.upload(bucket, key, upload_id)
        if not parts:
            raise ServiceError("MalformedXML", "You must specify at least one part")
        numbers = [number for number, _ in parts]
        if numbers != sorted(set(numbers)):
            raise ServiceError(
                "InvalidPartOrder",
                "The list of parts was not in ascending order. "
                "The parts list must be specified in order by part number.",
            )
        stored = dict(self.store.scan(PART_KIND, prefix=f"{upload_id}/"))
        chosen = []
        for index, (number, etag) in enumerate(parts):
            part = stored.get(f"{upload_id}/{number:05d}")
            if part is None or part["etag"] != quoted(etag):
                raise ServiceError(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. "
                    "The part may not have been uploaded, "
                    "or the specified entity tag may not have matched the part's entity tag.",
                    PartNumber=number,
                    ETag=etag,
                )
            if index < len(parts) - 1 and part["size"] < MIN_PART_BYTES:
                raise ServiceError(
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                    PartNumber=number,
                    ProposedSize=part["size"],
                    MinSizeAllowed=MIN_PART_BYTES,
                )
            chosen.append(part)
        with self.store.blob_writer() as writer:
            for part in chosen:
                try:
                    source = self.store.open_blob(part["blob"])
                except FileNotFoundError:
                    self.upload(bucket, key, upload_id)  # NoSuchUpload: aborted or completed meanwhile
                    raise
                with source:
                    while chunk := source.read(CHUNK_BYTES):
                        writer.write(chunk)
            blob = writer.commit()
        part_digests = b"".join(bytes.fromhex(part["md5"]) for part in chosen)
        joined_md5 = hashlib.md5(part_digests, usedforsecurity=False).hexdigest()
        doc = {
            "blob": blob,
            "size": writer.size,
            "etag": f'"{joined_md5}-{len(chosen)}"',
            "modified": time.time(),
            "checksum": None,
            "parts": len(chosen),
            **{name: upload[name] for name in ("content_type", "metadata", "headers")},
        }
        try:
            with self.store.transaction():
                # A concurrent Complete or Abort may have won while the parts were being joined.
                self.upload(bucket, key, upload_id)
                doc = self._replace_object(bucket, key, doc, event="CompleteMultipartUpload")
                self._drop_upload(upload_id)
        except BaseException:
            self.store.delete_blob(blob)
            raise
        return doc

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        with self.store.transaction():
            self.upload(bucket, key, upload_id)
            self._drop_upload(upload_id)

    def _drop_upload(self, upload_id: str) -> None:
        with self.store.transaction():
            for part_key, part in self.store.scan(PART_KIND, prefix=f"{upload_id}/"):
                self.store.delete(PART_KIND, part_key)
                self.store.delete_blob(part["blob"])
            self.store.delete(UPLOAD_KIND, upload_id)
