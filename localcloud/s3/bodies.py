"""Upload bodies: plain, HTTP-chunked or `aws-chunked`, decoded, size-limited and hashed as they stream in.

The MD5 (ETag) is always computed; a CRC32, SHA1, SHA256, SHA512 or MD5 flexible checksum sent by the
client is verified (BadDigest on mismatch); CRC32C, CRC64NVME and XXHASH values are stored and returned
as sent, because the standard library cannot compute them at speed.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from localcloud.s3.exceptions import entity_too_large
from localcloud.wire import Request, ServiceError, chunk_size

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
