"""Small S3 helpers over a boto3 client (``S3Hook(...).conn`` in tasks, moto in tests).

Functions take the client rather than making one, so the caller's Airflow connection decides
where S3 is: AWS or localcloud.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from botocore.exceptions import ClientError

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); raise ValueError naming the URI otherwise."""
    if not uri.startswith("s3://") or "/" not in uri[5:] or uri[5:].startswith("/"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def is_not_found(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in _NOT_FOUND


def head(s3, bucket: str, key: str) -> dict | None:
    """The object's metadata, or None when there is no such object."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if is_not_found(error):
            return None
        raise


def exists(s3, bucket: str, key: str) -> bool:
    return head(s3, bucket, key) is not None


class ObjectTooLarge(ValueError):
    """An object is larger than its reader accepts; nothing beyond the limit was read."""


def get_bytes(s3, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
    """The object's bytes; with ``max_bytes``, ObjectTooLarge is raised instead of reading more."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as error:
        if is_not_found(error):
            raise FileNotFoundError(f"s3://{bucket}/{key} does not exist") from error
        raise
    try:
        data = body.read() if max_bytes is None else body.read(max_bytes + 1)
    finally:
        body.close()
    if max_bytes is not None and len(data) > max_bytes:
        raise ObjectTooLarge(f"s3://{bucket}/{key} is larger than {max_bytes} bytes")
    return data


def chunks(body, size: int = 1 << 20) -> Iterator[bytes]:
    """A GetObject ``Body`` in pieces of at most ``size`` bytes; closed at the end."""
    try:
        while chunk := body.read(size):
            yield chunk
    finally:
        body.close()


def get_json(s3, bucket: str, key: str, default=FileNotFoundError):
    """The object parsed as JSON; ``default`` when it does not exist (raise if none is given)."""
    try:
        data = get_bytes(s3, bucket, key)
    except FileNotFoundError:
        if default is FileNotFoundError:
            raise
        return default
    try:
        return json.loads(data)
    except ValueError as error:
        raise ValueError(f"s3://{bucket}/{key} is not valid JSON: {error}") from error


def json_bytes(document) -> bytes:
    """Stable JSON (sorted keys, no NaN) so that equal documents are equal bytes."""
    return (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def put_bytes(s3, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return f"s3://{bucket}/{key}"


def put_json(s3, bucket: str, key: str, document) -> str:
    return put_bytes(s3, bucket, key, json_bytes(document), "application/json")


def list_keys(s3, bucket: str, prefix: str, *, recursive: bool = True) -> Iterator[dict]:
    """Objects under ``prefix`` in key order (``Key``, ``Size``, ``ETag``...), across pages.

    With ``recursive=False`` only the objects directly under the prefix, not in "subfolders".
    """
    arguments = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        arguments["Delimiter"] = "/"
    for page in s3.get_paginator("list_objects_v2").paginate(**arguments):
        yield from page.get("Contents", [])
