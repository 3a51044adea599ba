"""Helpers the S3 backend and service share: keys, ETags, stored attributes, ranges, conditions, tokens."""

from __future__ import annotations

import base64
import re
from typing import Any

from localcloud.s3.exceptions import invalid_range, precondition_failed
from localcloud.shapes import to_datetime
from localcloud.wire import ServiceError

MAX_KEYS = 1000
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
STORED_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")


def check_key(key: str) -> None:
    if len(key.encode()) > 1024:
        raise ServiceError(
            "KeyTooLongError", "Your key is too long", Size=len(key.encode()), MaxSizeAllowed=1024
        )


def quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def object_attributes(params: dict[str, Any]) -> dict[str, Any]:
    """The client-chosen attributes S3 stores with an object: content type, headers, user metadata."""
    headers = {name: params[name] for name in STORED_HEADERS if params.get(name)}
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


def checksum_members(doc: dict[str, Any], with_type: bool = True) -> dict[str, str]:
    checksum = doc.get("checksum")
    if not checksum:
        return {}
    members = {f"Checksum{checksum['algorithm']}": checksum["value"]}
    if with_type:  # parts have no checksum type of their own
        members["ChecksumType"] = "FULL_OBJECT"
    return members


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) for a single `bytes=` range; None means the whole object (S3 ignores bad syntax)."""
    found = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not found or found.groups() == ("", ""):
        return None
    first, last = found.groups()
    if first == "":
        length = min(int(last), size)
        start = size - length
        if length == 0:
            raise invalid_range(header, size)
        return start, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise invalid_range(header, size)
    if last and int(last) < start:
        return None  # syntactically invalid ranges are ignored, as RFC 9110 says
    return start, end - start + 1


def check_preconditions(params: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Raise 412 for a failed If-Match / If-Unmodified-Since; True when the answer is 304 Not Modified."""
    modified = to_datetime(doc["modified"]).replace(microsecond=0)
    if (
        params.get("IfMatch") is not None
        and quoted(params["IfMatch"]) != doc["etag"]
        and params["IfMatch"] != "*"
    ):
        raise precondition_failed("If-Match")
    if params.get("IfUnmodifiedSince") is not None and modified > params["IfUnmodifiedSince"]:
        raise precondition_failed("If-Unmodified-Since")
    if params.get("IfNoneMatch") is not None:
        return quoted(params["IfNoneMatch"]) == doc["etag"] or params["IfNoneMatch"] == "*"
    return params.get("IfModifiedSince") is not None and modified <= params["IfModifiedSince"]


def encode_token(marker: str | None) -> str:
    return base64.urlsafe_b64encode((marker or "").encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(
            "InvalidArgument",
            "The continuation token provided is incorrect",
            ArgumentName="continuation-token",
        ) from None
