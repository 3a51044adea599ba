"""What a request and a response are inside localcloud, independent of any AWS protocol.

The server turns bytes on a socket into a `Request` and a returned `Response` back into bytes. A service
raises `ServiceError` for anything a client did wrong; its protocol turns that into the AWS error shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

# The piece size localcloud streams request bodies and files in. Below the process's mmap threshold
# (localcloud.cli), so pieces come from the heap and are reused, not mapped and unmapped each time.
CHUNK_BYTES = 256 * 1024

# RFC 9112's chunk-size: hex digits only (no sign, "0x" or spaces), at most 16 of them (2^64 - 1).
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions (aws-chunked signatures are ~100 bytes)
MAX_TRAILER_BYTES = 64 * 1024  # the trailer section, bounded like the header block


class ServiceError(Exception):
    """An AWS error: `code` is what botocore puts in `Error.Code`, `status` the HTTP status.

    Extra keyword fields are added to the error body (S3 `<Key>`, Lambda `"Type"`, ...).
    """

    def __init__(self, code: str, message: str, status: int = 400, **fields: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields


@dataclass
class FileBody:
    """A response body streamed from an open file with sendfile; the server closes the file."""

    file: BinaryIO
    offset: int
    length: int


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | FileBody = b""
    # The x-amzn-RequestId, x-amz-request-id and Server headers every AWS API answer carries; an HTTP API's
    # own traffic (API Gateway's execute-api) is answered without them, as on AWS.
    api_headers: bool = True


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(document, separators=(",", ":")).encode()
    return Response(status, {"Content-Type": "application/json", **(headers or {})}, body)


class RequestBody:
    """The request body as a stream, read on demand so large uploads go straight to disk.

    Handles Content-Length and chunked framing. A client that sent `Expect: 100-continue` gets its
    "100 Continue" only when the body is first read, so a request rejected early (no such bucket, too
    large) never makes the client send the body.
    """

    _READ_SIZE = CHUNK_BYTES

    def __init__(
        self,
        rfile: BinaryIO,
        send_continue: Callable[[], None] | None,
        *,
        length: int | None,
        chunked: bool,
    ) -> None:
        self._rfile = rfile
        self._send_continue = send_continue
        self.length = None if chunked else (length or 0)
        self._chunked = chunked
        self._left = 0 if chunked else self.length  # bytes left in the body, or in the current chunk
        self._done = not chunked and self.length == 0
        self.bytes_read = 0

    @property
    def finished(self) -> bool:
        return self._done

    @property
    def continue_pending(self) -> bool:
        """True while the client is still waiting for "100 Continue" and has sent no body yet."""
        return self._send_continue is not None

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative); b"" at the end of the body."""
        if size < 0:
            parts = []
            while chunk := self.read(self._READ_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        if self._done:
            return b""
        if self._send_continue is not None:
            self._send_continue()
            self._send_continue = None
        if self._chunked and self._left == 0:
            self._start_next_chunk()
            if self._done:
                return b""
        wanted = min(size, self._left)
        data = self._rfile.read(wanted)
        if len(data) < wanted:
            raise ConnectionError("client closed the connection in the middle of the request body")
        self._left -= len(data)
        self.bytes_read += len(data)
        if self._left == 0:
            if self._chunked:
                if self._rfile.readline(3) not in (b"\r\n", b"\n"):  # the line end after every chunk's data
                    raise ServiceError("InvalidRequest", "a chunk is longer than its chunk-size line says")
            else:
                self._done = True
        return data

    def read_all(self, limit: int, too_large: Callable[[int], ServiceError]) -> bytes:
        """The whole body, refusing more than `limit` bytes with the service's own error."""
        if self.length is not None and self.length > limit:
            raise too_large(limit)
        parts, total = [], 0
        while chunk := self.read(self._READ_SIZE):
            total += len(chunk)
            if total > limit:
                raise too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    def discard(self, max_bytes: int) -> bool:
        """Read and drop what is left, up to `max_bytes`; True if the body was fully consumed."""
        if self._send_continue is not None:
            return False  # the client never sent it; the connection must close instead
        if self.length is not None and self.length - self.bytes_read > max_bytes:
            return False  # known to be too long: waiting for it would wait on a client that may not send it
        dropped = 0
        while not self._done and dropped <= max_bytes:
            dropped += len(self.read(self._READ_SIZE))
        return self._done

    def _start_next_chunk(self) -> None:
        line = self._rfile.readline(MAX_CHUNK_LINE + 1)
        if not line.endswith(b"\n"):
            if not line:
                raise ConnectionError("client closed the connection before the last chunk")
            raise ServiceError("InvalidRequest", f"chunk-size line too long or unterminated: {line[:40]!r}")
        try:
            size = chunk_size(line)
        except ValueError:
            raise ServiceError("InvalidRequest", f"malformed chunk-size line {line[:40]!r}") from None
        if size == 0:
            trailer_bytes = 0
            while (trailer := self._rfile.readline(MAX_TRAILER_BYTES + 1)) not in (b"\r\n", b"\n", b""):
                trailer_bytes += len(trailer)  # HTTP trailers carry nothing localcloud needs
                if trailer_bytes > MAX_TRAILER_BYTES:
                    raise ServiceError(
                        "InvalidRequest", f"the trailer section is over {MAX_TRAILER_BYTES} bytes"
                    )
            self._done = True
        self._left = size


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (`1a;ext=v\\r\\n`): plain hex, else ValueError.

    Python's int(x, 16) also takes "-1", "+1a", "0x1a" and " 1a"; "-1" once made a read run to the end
    of the stream.
    """
    size, semicolon, _ = line.rstrip(b"\r\n").partition(b";")
    if semicolon:
        size = size.rstrip(b" \t")  # RFC 9112 allows whitespace before the extensions' ";"
    if not _CHUNK_SIZE.fullmatch(size):
        raise ValueError(f"not a chunk size: {line[:40]!r}")
    return int(size, 16)


@dataclass
class Request:
    """One HTTP request as services see it. Header names are lower-case."""

    method: str
    path: str  # percent-encoded, without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: RequestBody
    request_id: str
    region: str = "us-east-1"
    signing_name: str | None = None  # from the SigV4 credential scope; None when unsigned
    client_address: str = ""

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default
