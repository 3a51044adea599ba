"""Amazon S3 (rest-xml): buckets, objects, listings and multipart uploads, bodies streamed to blob files.

Clients use path-style addressing (`http://127.0.0.1:4566/<bucket>/<key>`); for boto3:
`botocore.config.Config(s3={"addressing_style": "path"})`. Keys never become file paths: every object
body is an immutable blob with a random id, and the metadata row that points at it is replaced in one
SQLite transaction, so a reader sees the old object or the new one, never a mix.

Upload bodies may be plain, HTTP-chunked, or `aws-chunked` (signed chunks and/or trailing checksums).
The MD5 (ETag) is always computed; a CRC32, SHA1, SHA256, SHA512 or MD5 flexible checksum sent by the
client is verified (BadDigest on mismatch); CRC32C, CRC64NVME and XXHASH values are stored and returned
as sent, because the standard library cannot compute them at speed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol
from urllib.parse import quote, quote_plus, unquote

from localcloud.config import Config
from localcloud.protocols import to_datetime
from localcloud.service import Backend, Service, operation
from localcloud.store import Store
from localcloud.wire import CHUNK_BYTES, FileBody, Request, Response, ServiceError, chunk_size

if TYPE_CHECKING:
    from localcloud.app import LocalCloud

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
BUCKET_KIND = "s3/bucket"  # key: bucket name
OBJECT_KIND = "s3/object"  # key: "<bucket>/<key>" (bucket names cannot contain "/")
UPLOAD_KIND = "s3/upload"  # key: upload id
PART_KIND = "s3/part"  # key: "<upload id>/<part number, 5 digits>"

MiB = 1024 * 1024
MIN_PART_BYTES = 5 * MiB
MAX_PART_NUMBER = 10_000
MAX_KEYS = 1000
DEFAULT_CONTENT_TYPE = "binary/octet-stream"

_BUCKET_NAME = re.compile(r"(?=.{3,63}$)[a-z0-9][a-z0-9.-]*[a-z0-9]")
_STORED_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")
CHECKSUM_ALGORITHMS = (
    "CRC32",
    "CRC32C",
    "CRC64NVME",
    "SHA1",
    "SHA256",
    "SHA512",
    "MD5",
    "XXHASH64",
    "XXHASH3",
    "XXHASH128",
)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# --- request bodies --------------------------------------------------------------------------------


class AwsChunkedReader:
    """Decodes an `aws-chunked` body: `<hex size>[;chunk-signature=...]\\r\\n<data>\\r\\n` ... `0\\r\\n`
    followed by trailers such as `x-amz-checksum-crc32:<base64>` and a blank line.

    Chunk signatures are not verified (no signature is); trailers are exposed in `.trailers`.
    """

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw
        self._buffer = b""
        self._left = 0
        self._done = False
        self.trailers: dict[str, str] = {}

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        if self._left == 0:
            header = self._readline()
            try:
                self._left = chunk_size(header)
            except ValueError:
                raise ServiceError(
                    "InvalidRequest", f"malformed aws-chunked chunk header {header[:60]!r}"
                ) from None
            if self._left == 0:
                while line := self._readline():
                    name, _, value = line.decode("latin-1").partition(":")
                    self.trailers[name.strip().lower()] = value.strip()
                self._done = True
                return b""
        wanted = self._left if size < 0 else min(size, self._left)
        data = self._take(wanted)
        self._left -= len(data)
        if self._left == 0 and self._take(2) != b"\r\n":
            raise ServiceError("InvalidRequest", "aws-chunked chunk is longer than its declared size")
        return data

    def _more(self) -> None:
        data = self._raw.read(64 * 1024)
        if not data:
            raise ServiceError("IncompleteBody", "The request body ended before the final aws-chunked chunk")
        self._buffer += data

    def _readline(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > 8192:
                raise ServiceError("InvalidRequest", "aws-chunked header line is too long")
            self._more()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if len(self._buffer) >= 64 * 1024:  # large reads go straight through, not via the buffer
                more = self._raw.read(size - len(self._buffer))
                if not more:
                    raise ServiceError("IncompleteBody", "The request body ended in the middle of a chunk")
                self._buffer += more
            else:
                self._more()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


_DIGESTS: dict[str, Callable[[], Any]] = {
    "CRC32": _Crc32,
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
    "MD5": lambda: hashlib.md5(usedforsecurity=False),
}


@dataclass
class Upload:
    """An object body on its way in: decoded, size-limited and hashed as it is read.

    `checksum_algorithm` is the flexible checksum the client announced; the expected value comes from
    `expected` (headers) or, for aws-chunked bodies, from the trailer, and is checked by verify().
    """

    source: _Readable
    limit: int
    declared_size: int | None = None
    checksum_algorithm: str | None = None
    expected: dict[str, str] = field(default_factory=dict)  # header name -> base64 value
    content_md5: str | None = None
    size: int = 0

    def __post_init__(self) -> None:
        if self.declared_size is not None and self.declared_size > self.limit:
            raise entity_too_large(self.declared_size, self.limit)
        self._md5 = hashlib.md5(usedforsecurity=False)
        factory = _DIGESTS.get(self.checksum_algorithm or "")
        self._checksum = factory() if factory else None

    @classmethod
    def from_request(cls, request: Request, params: dict[str, Any], limit: int) -> Upload:
        headers = request.headers
        streaming = headers.get("x-amz-content-sha256", "").startswith("STREAMING-")
        source: _Readable = request.body
        declared = request.body.length
        if "aws-chunked" in headers.get("content-encoding", "") or streaming:
            source = AwsChunkedReader(request.body)
            declared = (
                int(headers["x-amz-decoded-content-length"])
                if "x-amz-decoded-content-length" in headers
                else None
            )
        algorithm = params.get("ChecksumAlgorithm")
        expected = {name: value for name, value in headers.items() if name.startswith("x-amz-checksum-")}
        expected.pop("x-amz-checksum-type", None)
        expected.pop("x-amz-checksum-mode", None)
        trailer = headers.get("x-amz-trailer", "").lower()
        named = trailer or next(iter(expected), "")
        if named.startswith("x-amz-checksum-"):
            algorithm = named.removeprefix("x-amz-checksum-").upper()
        return cls(
            source, limit, declared, algorithm and algorithm.upper(), expected, params.get("ContentMD5")
        )

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.size += len(data)
        if self.size > self.limit:
            raise entity_too_large(self.size, self.limit)
        self._md5.update(data)
        if self._checksum is not None:
            self._checksum.update(data)
        return data

    def verify(self) -> None:
        """After the last read: sizes and every digest the client sent must match what arrived."""
        if self.declared_size is not None and self.size != self.declared_size:
            raise ServiceError(
                "IncompleteBody",
                f"You did not provide the number of bytes specified: {self.size} of {self.declared_size}",
            )
        if self.content_md5 is not None and self.content_md5 != base64.b64encode(self._md5.digest()).decode():
            raise ServiceError("BadDigest", "The Content-MD5 you specified did not match what we received.")
        trailers = getattr(self.source, "trailers", {})
        value = self.expected.get(self._header) or trailers.get(self._header)
        if self._checksum is not None and value is not None and value != self.checksum_value:
            raise ServiceError(
                "BadDigest",
                f"The {self.checksum_algorithm} you specified did not match the calculated checksum.",
            )

    @property
    def _header(self) -> str:
        return f"x-amz-checksum-{(self.checksum_algorithm or '').lower()}"

    @property
    def etag(self) -> str:
        return f'"{self._md5.hexdigest()}"'

    @property
    def md5_digest(self) -> bytes:
        return self._md5.digest()

    @property
    def checksum_value(self) -> str | None:
        if self._checksum is not None:
            return base64.b64encode(self._checksum.digest()).decode()
        trailers = getattr(self.source, "trailers", {})
        return self.expected.get(self._header) or trailers.get(self._header)  # stored as sent

    @property
    def checksum(self) -> dict[str, str] | None:
        value = self.checksum_value if self.checksum_algorithm in CHECKSUM_ALGORITHMS else None
        return {"algorithm": self.checksum_algorithm, "value": value} if value else None


def entity_too_large(size: int, limit: int) -> ServiceError:
    return ServiceError(
        "EntityTooLarge",
        "Your proposed upload exceeds the maximum allowed size",
        ProposedSize=size,
        MaxSizeAllowed=limit,
    )


# --- backend -----------------------------------------------------------------------------------


@dataclass
class Listing:
    objects: list[tuple[str, dict[str, Any]]]
    common_prefixes: list[str]
    truncated: bool
    last_marker: str | None  # the last key or common prefix returned; listing resumes after it


class S3Backend(Backend):
    """Buckets and objects in the store. Other services use put_file/put_bytes/open_object/list_keys."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.endpoint_url = ""

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
            self.store.delete(BUCKET_KIND, name)

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
        _check_key(key)
        self.bucket(bucket)
        blob = self._write_blob(body)
        doc = {
            "blob": blob,
            "size": body.size,
            "etag": body.etag,
            "modified": time.time(),
            "checksum": body.checksum,
            **_object_attributes(attributes or {}),
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
        self.bucket(bucket)
        with self.store.transaction():
            doc = self.store.get(OBJECT_KIND, f"{bucket}/{key}")
            if if_match is not None:
                if doc is None:
                    raise ServiceError("NoSuchKey", "The specified key does not exist.", 404, Key=key)
                if if_match != "*" and doc["etag"] != _quoted(if_match):
                    raise _precondition_failed("If-Match")
            if doc is not None:
                self.store.delete(OBJECT_KIND, f"{bucket}/{key}")
                self.store.delete_blob(doc["blob"])  # unlinked once the delete is committed

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
        _check_key(key)
        source = self.head_object(source_bucket, source_key)
        if source_if_match is not None and source["etag"] != _quoted(source_if_match):
            raise _precondition_failed("x-amz-copy-source-If-Match")
        if source_if_none_match is not None and source["etag"] == _quoted(source_if_none_match):
            raise _precondition_failed("x-amz-copy-source-If-None-Match")
        self.bucket(bucket)
        blob = self.store.copy_blob(source["blob"])
        doc = {**source, "blob": blob, "modified": time.time()}
        if attributes is not None:
            doc.update(_object_attributes(attributes))
        return self._replace_object(bucket, key, doc)

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
    ) -> dict[str, Any]:
        try:
            with self.store.transaction():
                self.bucket(bucket)  # it may have been deleted while the body was uploading
                old = self.store.get(OBJECT_KIND, f"{bucket}/{key}")
                if if_none_match == "*" and old is not None:
                    raise _precondition_failed("If-None-Match")
                if if_match is not None and (old is None or old["etag"] != _quoted(if_match)):
                    raise _precondition_failed("If-Match")
                self.store.put(OBJECT_KIND, f"{bucket}/{key}", doc)
                if old is not None:
                    self.store.delete_blob(old["blob"])  # unlinked once the new document is committed
        except BaseException:
            self.store.delete_blob(doc["blob"])  # no committed document names it
            raise
        return doc

    # multipart uploads

    def create_multipart_upload(
        self, bucket: str, key: str, attributes: dict[str, Any], checksum_algorithm: str | None
    ) -> str:
        _check_key(key)
        self.bucket(bucket)
        upload_id = uuid.uuid4().hex
        doc = {
            "bucket": bucket,
            "key": key,
            "initiated": time.time(),
            "checksum_algorithm": checksum_algorithm,
            **_object_attributes(attributes),
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
            if part is None or part["etag"] != _quoted(etag):
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
                doc = self._replace_object(bucket, key, doc)
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


def _check_key(key: str) -> None:
    if len(key.encode()) > 1024:
        raise ServiceError(
            "KeyTooLongError", "Your key is too long", Size=len(key.encode()), MaxSizeAllowed=1024
        )


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _object_attributes(params: dict[str, Any]) -> dict[str, Any]:
    """The client-chosen attributes S3 stores with an object: content type, headers, user metadata."""
    headers = {name: params[name] for name in _STORED_HEADERS if params.get(name)}
    encoding = ",".join(
        part for part in headers.get("ContentEncoding", "").split(",") if part.strip() != "aws-chunked"
    )
    if encoding:
        headers["ContentEncoding"] = encoding
    else:
        headers.pop("ContentEncoding", None)
    return {
        "content_type": params.get("ContentType") or DEFAULT_CONTENT_TYPE,
        "metadata": {name.lower(): value for name, value in (params.get("Metadata") or {}).items()},
        "headers": headers,
    }


# --- wire --------------------------------------------------------------------------------------


class S3Service(Service):
    model_name = "s3"
    validation_error_code = "MalformedXML"  # the only required members not in the URL are XML bodies
    internal_error_code = "InternalError"
    xml_namespace = S3_NAMESPACE
    xml_root_names = {
        "ListBuckets": "ListAllMyBucketsResult",
        "ListObjects": "ListBucketResult",
        "ListObjectsV2": "ListBucketResult",
        "DeleteObjects": "DeleteResult",
        "CreateMultipartUpload": "InitiateMultipartUploadResult",
        "CompleteMultipartUpload": "CompleteMultipartUploadResult",
    }
    backend: S3Backend

    def request_too_large(self, limit: int) -> ServiceError:
        return ServiceError(
            "MaxMessageLengthExceeded", f"Your request was too big: the limit is {limit} bytes."
        )

    @property
    def _owner(self) -> dict[str, str]:
        return {
            "ID": hashlib.sha256(self.config.account_id.encode()).hexdigest(),
            "DisplayName": "localcloud",
        }

    # buckets

    @operation("CreateBucket")
    def create_bucket(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        region = (params.get("CreateBucketConfiguration") or {}).get("LocationConstraint") or "us-east-1"
        self.backend.create_bucket(params["Bucket"], region)
        return {"Location": f"/{params['Bucket']}", "BucketArn": f"arn:aws:s3:::{params['Bucket']}"}

    @operation("HeadBucket")
    def head_bucket(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        bucket = self.backend.bucket(params["Bucket"])
        return {"BucketRegion": bucket["region"], "BucketArn": f"arn:aws:s3:::{params['Bucket']}"}

    @operation("GetBucketLocation")
    def get_bucket_location(self, params: dict[str, Any], request: Request) -> Response:
        region = self.backend.bucket(params["Bucket"])["region"]
        text = "" if region == "us-east-1" else region  # S3's historical quirk: us-east-1 is empty
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<LocationConstraint xmlns="{S3_NAMESPACE}">{text}</LocationConstraint>'
        )
        return Response(200, {"Content-Type": "application/xml"}, body.encode())

    @operation("ListBuckets")
    def list_buckets(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        buckets = [
            {"Name": name, "CreationDate": doc["created"], "BucketRegion": doc["region"]}
            for name, doc in self.backend.list_buckets()
            if name.startswith(params.get("Prefix", ""))
        ]
        return {"Buckets": buckets, "Owner": self._owner, "Prefix": params.get("Prefix")}

    @operation("DeleteBucket")
    def delete_bucket(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_bucket(params["Bucket"])
        return {}

    # objects

    @operation("PutObject")
    def put_object(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.bucket(params["Bucket"])  # fail before the client sends the body
        body = Upload.from_request(request, params, self.config.max_object_bytes)
        doc = self.backend.put_object(
            params["Bucket"],
            params["Key"],
            body,
            params,
            if_match=params.get("IfMatch"),
            if_none_match=params.get("IfNoneMatch"),
        )
        return {"ETag": doc["etag"], "Size": doc["size"], **_checksum_members(doc)}

    @operation("GetObject")
    def get_object(self, params: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        return self._read_object(params, request, with_body=True)

    @operation("HeadObject")
    def head_object(self, params: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        return self._read_object(params, request, with_body=False)

    def _read_object(
        self, params: dict[str, Any], request: Request, with_body: bool
    ) -> dict[str, Any] | Response:
        doc, file = self.backend.open_object(params["Bucket"], params["Key"])
        try:
            not_modified = _check_preconditions(params, doc)
            if not_modified:
                file.close()
                return Response(304, {"ETag": doc["etag"]})
            size = doc["size"]
            span = _parse_range(params.get("Range"), size)
            start, length = span if span else (0, size)
            out: dict[str, Any] = {
                "ContentLength": length,
                "ContentType": params.get("ResponseContentType") or doc["content_type"],
                "ETag": doc["etag"],
                "LastModified": doc["modified"],
                "Metadata": doc["metadata"] or None,
                "AcceptRanges": "bytes",
                "PartsCount": doc.get("parts"),
                **doc["headers"],
            }
            if span:
                out["ContentRange"] = f"bytes {start}-{start + length - 1}/{size}"
            elif params.get("ChecksumMode") == "ENABLED":
                out.update(_checksum_members(doc))  # a whole-object checksum only describes the whole object
            if with_body:
                out["Body"] = FileBody(file, start, length)
            else:
                file.close()
        except BaseException:
            file.close()
            raise
        if span:
            return self.serialize("GetObject" if with_body else "HeadObject", out, request, status=206)
        return out

    @operation("DeleteObject")
    def delete_object(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_object(params["Bucket"], params["Key"], if_match=params.get("IfMatch"))
        return {}

    @operation("DeleteObjects")
    def delete_objects(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        objects = params["Delete"].get("Objects", [])
        if not 1 <= len(objects) <= MAX_KEYS:
            raise ServiceError(
                "MalformedXML", f"Delete must name between 1 and {MAX_KEYS} objects, got {len(objects)}"
            )
        deleted, errors = [], []
        for entry in objects:
            try:
                self.backend.delete_object(params["Bucket"], entry["Key"])
                deleted.append({"Key": entry["Key"]})
            except ServiceError as error:
                if error.code == "NoSuchBucket":
                    raise
                errors.append({"Key": entry["Key"], "Code": error.code, "Message": error.message})
        quiet = params["Delete"].get("Quiet", False)
        return {"Deleted": None if quiet else deleted, "Errors": errors or None}

    @operation("CopyObject")
    def copy_object(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        source = unquote(params["CopySource"].split("?", 1)[0]).lstrip("/")
        source_bucket, _, source_key = source.partition("/")
        if not source_key:
            raise ServiceError(
                "InvalidArgument",
                f"Copy Source must mention the source bucket and key: {params['CopySource']!r}",
            )
        replace = params.get("MetadataDirective") == "REPLACE"
        if (source_bucket, source_key) == (params["Bucket"], params["Key"]) and not replace:
            raise ServiceError(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without "
                "changing the object's metadata, storage class, website redirect location or encryption "
                "attributes.",
            )
        doc = self.backend.copy_object(
            source_bucket,
            source_key,
            params["Bucket"],
            params["Key"],
            params if replace else None,
            source_if_match=params.get("CopySourceIfMatch"),
            source_if_none_match=params.get("CopySourceIfNoneMatch"),
        )
        return {"CopyObjectResult": {"ETag": doc["etag"], "LastModified": doc["modified"]}}

    @operation("ListObjectsV2")
    def list_objects_v2(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        token = params.get("ContinuationToken")
        marker = _decode_token(token) if token is not None else params.get("StartAfter")
        listing, out = self._list(params, marker)
        out.update(
            KeyCount=len(listing.objects) + len(listing.common_prefixes),
            ContinuationToken=token,
            StartAfter=params.get("StartAfter"),
            NextContinuationToken=_encode_token(listing.last_marker) if listing.truncated else None,
        )
        return out

    @operation("ListObjects")
    def list_objects(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        listing, out = self._list(params, params.get("Marker"))
        out["Marker"] = params.get("Marker", "")
        if listing.truncated and params.get("Delimiter"):
            out["NextMarker"] = self._encode_key(params, listing.last_marker)
        return out

    def _list(self, params: dict[str, Any], marker: str | None) -> tuple[Listing, dict[str, Any]]:
        max_keys = min(params.get("MaxKeys", MAX_KEYS), MAX_KEYS)
        if max_keys < 0:
            raise ServiceError("InvalidArgument", "max-keys must not be negative", ArgumentName="max-keys")
        prefix, delimiter = params.get("Prefix", ""), params.get("Delimiter", "")
        listing = self.backend.list_objects(params["Bucket"], prefix, delimiter, max_keys, marker)
        owner = self._owner if params.get("FetchOwner") else None
        contents = [
            {
                "Key": self._encode_key(params, key),
                "LastModified": doc["modified"],
                "ETag": doc["etag"],
                "Size": doc["size"],
                "StorageClass": "STANDARD",
                "Owner": owner,
                "ChecksumAlgorithm": [doc["checksum"]["algorithm"]] if doc.get("checksum") else None,
            }
            for key, doc in listing.objects
        ]
        out = {
            "Name": params["Bucket"],
            "Prefix": self._encode_key(params, prefix),
            "Delimiter": self._encode_key(params, delimiter) or None,
            "MaxKeys": max_keys,
            "EncodingType": params.get("EncodingType"),
            "IsTruncated": listing.truncated,
            "Contents": contents or None,
            "CommonPrefixes": [{"Prefix": self._encode_key(params, p)} for p in listing.common_prefixes]
            or None,
        }
        return listing, out

    @staticmethod
    def _encode_key(params: dict[str, Any], value: str | None) -> str | None:
        # boto3 asks for encoding-type=url and decodes with unquote_plus, so any key survives XML.
        if value is None or params.get("EncodingType") != "url":
            return value
        return quote_plus(value, safe="/")

    # multipart uploads

    @operation("CreateMultipartUpload")
    def create_multipart_upload(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        algorithm = params.get("ChecksumAlgorithm")
        upload_id = self.backend.create_multipart_upload(params["Bucket"], params["Key"], params, algorithm)
        return {
            "Bucket": params["Bucket"],
            "Key": params["Key"],
            "UploadId": upload_id,
            "ChecksumAlgorithm": algorithm,
        }

    @operation("UploadPart")
    def upload_part(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        # Fail before the client sends the body.
        self.backend.upload(params["Bucket"], params["Key"], params["UploadId"])
        body = Upload.from_request(request, params, self.config.max_object_bytes)
        doc = self.backend.upload_part(
            params["Bucket"], params["Key"], params["UploadId"], params["PartNumber"], body
        )
        return {"ETag": doc["etag"], **_checksum_members(doc, with_type=False)}

    @operation("CompleteMultipartUpload")
    def complete_multipart_upload(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        parts = [
            (part["PartNumber"], part["ETag"])
            for part in (params.get("MultipartUpload") or {}).get("Parts", [])
        ]
        doc = self.backend.complete_multipart_upload(
            params["Bucket"], params["Key"], params["UploadId"], parts
        )
        host = request.headers.get("host", "localhost")
        return {
            "Location": f"http://{host}/{params['Bucket']}/{quote(params['Key'])}",
            "Bucket": params["Bucket"],
            "Key": params["Key"],
            "ETag": doc["etag"],
        }

    @operation("AbortMultipartUpload")
    def abort_multipart_upload(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.abort_multipart_upload(params["Bucket"], params["Key"], params["UploadId"])
        return {}


def _checksum_members(doc: dict[str, Any], with_type: bool = True) -> dict[str, str]:
    checksum = doc.get("checksum")
    if not checksum:
        return {}
    members = {f"Checksum{checksum['algorithm']}": checksum["value"]}
    if with_type:  # parts have no checksum type of their own
        members["ChecksumType"] = "FULL_OBJECT"
    return members


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) for a single `bytes=` range; None means the whole object (S3 ignores bad syntax)."""
    found = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not found or found.groups() == ("", ""):
        return None
    first, last = found.groups()
    if first == "":
        length = min(int(last), size)
        start = size - length
        if length == 0:
            raise _invalid_range(header, size)
        return start, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise _invalid_range(header, size)
    if last and int(last) < start:
        return None  # syntactically invalid ranges are ignored, as RFC 9110 says
    return start, end - start + 1


def _invalid_range(header: str | None, size: int) -> ServiceError:
    return ServiceError(
        "InvalidRange",
        "The requested range is not satisfiable",
        416,
        RangeRequested=header,
        ActualObjectSize=size,
    )


def _check_preconditions(params: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Raise 412 for a failed If-Match / If-Unmodified-Since; True when the answer is 304 Not Modified."""
    modified = to_datetime(doc["modified"]).replace(microsecond=0)
    if (
        params.get("IfMatch") is not None
        and _quoted(params["IfMatch"]) != doc["etag"]
        and params["IfMatch"] != "*"
    ):
        raise _precondition_failed("If-Match")
    if params.get("IfUnmodifiedSince") is not None and modified > params["IfUnmodifiedSince"]:
        raise _precondition_failed("If-Unmodified-Since")
    if params.get("IfNoneMatch") is not None:
        return _quoted(params["IfNoneMatch"]) == doc["etag"] or params["IfNoneMatch"] == "*"
    return params.get("IfModifiedSince") is not None and modified <= params["IfModifiedSince"]


def _precondition_failed(condition: str) -> ServiceError:
    return ServiceError(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        412,
        Condition=condition,
    )


def _encode_token(marker: str | None) -> str:
    return base64.urlsafe_b64encode((marker or "").encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(
            "InvalidArgument",
            "The continuation token provided is incorrect",
            ArgumentName="continuation-token",
        ) from None
