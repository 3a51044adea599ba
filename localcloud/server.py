"""The HTTP front door: a threaded HTTP/1.1 server on loopback that routes each request to a service.

Why the standard library's ThreadingHTTPServer (measured on the 2-core dev machine, small JSON POSTs,
8 keep-alive clients): ~9,200 req/s and 0.11 ms sequential round trip with TCP_NODELAY, against
~6,800 req/s (0.12 ms) for uvicorn+httptools with handlers inline and ~5,100 req/s (0.18 ms) once
blocking handlers are moved to a thread pool, which they must be here. One thread per connection means
a handler may block on SQLite, disk or a long-poll without stalling other requests, large bodies stream
straight from the socket to disk, and there is nothing to import: the server starts in milliseconds.

Before a request is routed, with only its head read:
1. its framing must be unambiguous: Content-Length plain digits, Transfer-Encoding exactly "chunked",
   never both (400 or 501, and the connection closes);
2. the RequestGuard (trust.py) must accept its Host, Origin, Sec-Fetch-Site and Referer: 403 otherwise,
   before any body is read.

Then the Router (routing.py) picks the service. Resources are bounded: `max_connections` connection
threads (past it: 503 and close, in the accept loop), a request head within `request_head_timeout_s` of
its first byte and 64 KiB in 100 lines, `idle_timeout_s` between keep-alive requests and per body read.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import ipaddress
import json
import logging
import random
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from localcloud.config import Config
from localcloud.routing import InternalHandler, credential_scope, json_error
from localcloud.trust import RequestGuard
from localcloud.wire import FileBody, Request, RequestBody, Response, ServiceError

logger = logging.getLogger("localcloud")

# The whole header block, and so any one line (http.client's per-line limit): 8x S3's 8 KB request
# headers, 6x the 10,240 bytes of request line and headers an HTTP API takes.
_MAX_HEAD_BYTES = 65536
_MAX_HEADERS = 100
_MAX_CONTENT_LENGTH_DIGITS = 18  # under 2^63: an upload of up to 999 PB, which no limit here lets through
# Headers a request may carry once: two differing lengths, or a second Host, is how smuggling starts.
_SINGLE_HEADERS = frozenset({"content-length", "transfer-encoding", "host"})
_HTTP_VERSION = re.compile(r"HTTP/(\d{1,10})\.(\d{1,10})")
_DRAIN_LIMIT = 1 << 20  # an unread body smaller than this is drained to keep the connection; else it closes
_LINGER_S = 2.0  # after answering early and closing, how long unread input is discarded (see _linger)

ErrorRenderer = Callable[[Request, ServiceError], Response]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header for now: formatted once a second, not once a response."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _drained(body: RequestBody) -> bool:
    try:
        return body.discard(_DRAIN_LIMIT)
    except (ConnectionError, ServiceError):
        return False


def _framing_error(headers: dict[str, str]) -> tuple[int, str] | None:
    """(status, reason) when the body's length is not stated in exactly one unambiguous way."""
    transfer_encoding = headers.get("transfer-encoding")
    if transfer_encoding is not None:
        if "content-length" in headers:
            return 400, "a request must not have both Content-Length and Transfer-Encoding"
        if transfer_encoding.lower() != "chunked":
            return 501, f"Transfer-Encoding {transfer_encoding[:100]!r} is not supported; only chunked is"
        return None
    length = headers.get("content-length")
    if length is not None and not (
        length.isascii() and length.isdigit() and len(length) <= _MAX_CONTENT_LENGTH_DIGITS
    ):
        return 400, f"Content-Length must be plain digits, got {length[:40]!r}"
    return None


class _HeadReader(socket.SocketIO):
    """The socket as the request handler reads it, with a deadline for the whole request head.

    A socket timeout bounds one recv only, so a client sending a byte every few seconds would hold its
    thread forever. While `deadline` is set, every recv gets only the time left until it. The deadline
    starts with the first bytes of a head (`head_pending`), or at accept for a new connection. In the
    usual case the whole head arrives in the first recv and none of this costs a system call.
    """

    def __init__(self, sock: socket.socket, head_timeout: float) -> None:
        super().__init__(sock, "rb")
        self.head_timeout = head_timeout
        self.head_pending = True
        self.deadline: float | None = time.monotonic() + head_timeout
        self.retimed = False  # the socket's timeout was changed and must be restored after the head

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        deadline = self.deadline
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request head did not arrive in time")
            self._sock.settimeout(left)
            self.retimed = True
        read = super().readinto(buffer)
        if self.head_pending and deadline is None:
            self.deadline = time.monotonic() + self.head_timeout
        return read


class _SocketWriter(io.BufferedIOBase):
    """Writes go straight to the socket with sendall (what StreamRequestHandler uses when wbufsize is 0)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._sock.sendall(data)
        return len(data)

    def fileno(self) -> int:
        return self._sock.fileno()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it, headers and body in two writes cost 40 ms (delayed ACK)
    server_version = "localcloud"
    # Errors found before the request line's version is read (400, 414) still get a status line: the
    # standard default, HTTP/0.9, would send a bare HTML body that no AWS client can read.
    default_request_version = "HTTP/1.1"
    sys_version = ""
    server: HttpServer

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(self.server.config.idle_timeout_s)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._reader = _HeadReader(self.connection, self.server.config.request_head_timeout_s)
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = _SocketWriter(self.connection)
        self._linger_after = False
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
            if self._linger_after:
                self._linger()
        finally:
            self.server.untrack(self.connection)

    def _linger(self) -> None:
        """Discard what the client still sends, briefly, so it reads our early answer instead of a reset.

        Closing a socket with unread input sends a TCP reset, and a client still writing its body (one
        that did not ask for "100 Continue") would lose the 403 or 413 that was already on its way.
        """
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A short JSON error, and the connection closes: the standard method sends an HTML page."""
        status = HTTPStatus(code)
        body = json.dumps({"__type": status.phrase.replace(" ", ""), "message": message or status.phrase})
        data = body.encode()
        head = (
            f"HTTP/1.1 {code} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nDate: {_http_date()}\r\nConnection: close\r\n\r\n"
        )
        self.close_connection = True
        self._linger_after = True
        with contextlib.suppress(OSError):
            self.wfile.write(head.encode("latin-1") + (b"" if self.command == "HEAD" else data))

    def handle_one_request(self) -> None:
        self._reader.head_pending = True
        try:
            super().handle_one_request()
        finally:
            self._head_read()

    def _head_read(self) -> None:
        """The head is in: what is read next (the body) gets the idle timeout per read, no deadline."""
        reader = self._reader
        reader.head_pending = False
        reader.deadline = None
        if reader.retimed:
            reader.retimed = False
            with contextlib.suppress(OSError):
                self.connection.settimeout(self.server.config.idle_timeout_s)

    def parse_request(self) -> bool:
        """BaseHTTPRequestHandler.parse_request, with the header block read into a plain dict.

        The standard method hands the headers to the email package's feed parser: profiled with yappi,
        that was about a third of localcloud's CPU per API Gateway → Lambda request. This reads the same
        lines into a dict of lower-cased names (a repeated name keeps its last value; Content-Length,
        Transfer-Encoding and Host may not repeat) and keeps the standard method's answers: 400 for a
        malformed request line, 505 for HTTP/2+, 431 for a header line over 64 KiB, a block over 64 KiB
        or more than 100 headers, and the Connection and Expect rules.
        """
        self.command = None  # set in case of error on the first line
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) != 3:  # HTTP/0.9 (two words) is not served: every AWS client speaks HTTP/1.1
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline[:200]!r})")
            return False
        command, path, version = words
        match = _HTTP_VERSION.fullmatch(version)
        if match is None:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version[:40]!r})")
            return False
        number = int(match.group(1)), int(match.group(2))
        if number >= (2, 0):
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})")
            return False
        self.close_connection = number < (1, 1)
        self.command, self.path, self.request_version = command, path, version
        if path.startswith("//"):  # as the standard method does, against open redirects
            self.path = "/" + path.lstrip("/")
        headers: dict[str, str] = {}
        name = ""
        head_bytes = 0
        while True:
            line = self.rfile.readline(_MAX_HEAD_BYTES + 1)
            head_bytes += len(line)
            if head_bytes > _MAX_HEAD_BYTES:  # one line, or all of them
                self.send_error(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"Request headers over {_MAX_HEAD_BYTES} bytes",
                )
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            if len(headers) >= _MAX_HEADERS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"Over {_MAX_HEADERS} headers")
                return False
            text = line.decode("iso-8859-1")
            if text[0] in " \t" and name:  # an obsolete folded continuation of the previous header
                headers[name] += " " + text.strip()
                continue
            raw_name, _, value = text.partition(":")
            if raw_name[-1:] <= " ":  # no name, or whitespace before the colon (RFC 9112: refuse it)
                self.send_error(HTTPStatus.BAD_REQUEST, f"Malformed header name {raw_name[:100]!r}")
                return False
            name = raw_name.lower()
            value = value.strip()
            # Only an identical Content-Length or Host may repeat: two framings is request smuggling.
            if (
                name in headers
                and name in _SINGLE_HEADERS
                and (name == "transfer-encoding" or headers[name] != value)
            ):
                self.send_error(HTTPStatus.BAD_REQUEST, f"{raw_name} given twice")
                return False
            headers[name] = value
        self.headers = headers  # type: ignore[assignment]
        connection = headers.get("connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if headers.get("expect", "").lower() == "100-continue" and number >= (1, 1):
            return self.handle_expect_100()
        return True

    def handle_expect_100(self) -> bool:
        # Deferred to the first body read (see RequestBody), so early rejections cost no upload.
        self._continue_pending = True
        return True

    def _send_continue(self) -> None:
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _serve(self) -> None:
        started = time.perf_counter()
        headers: dict[str, str] = self.headers  # type: ignore[assignment]  # see parse_request
        self._head_read()
        framing = _framing_error(headers)
        if framing is not None:
            self.send_error(*framing)
            return
        path, _, raw_query = self.path.partition("?")
        query = parse_qs(raw_query, keep_blank_values=True)
        body = RequestBody(
            self.rfile,
            self._send_continue if getattr(self, "_continue_pending", False) else None,
            length=int(headers.get("content-length", "0")),
            chunked="transfer-encoding" in headers,
        )
        self._continue_pending = False
        scope = credential_scope(headers, query)
        request = Request(
            method=self.command,
            path=path,
            query=query,
            headers=headers,
            body=body,
            # uuid4() reads os.urandom, which releases the GIL mid-request; an id needs no crypto.
            request_id=f"{random.getrandbits(128):032x}",
            region=(scope[0] if scope else None) or self.server.config.region,
            signing_name=scope[1] if scope else None,
            client_address=self.client_address[0],
        )
        refusal = self.server.guard.refusal(headers)
        if refusal is not None:
            logger.info("refused %s %s: %s", self.command, path, refusal)
            response = self.server.render_error(request, ServiceError("AccessDenied", refusal, 403))
            response.headers["X-Content-Type-Options"] = "nosniff"
            self.close_connection = True  # its body, if any, is never read
        else:
            try:
                response = self.server.dispatch(request)
            except ConnectionError:
                self.close_connection = True
                return
            except Exception:
                logger.exception("%s %s failed before reaching a service", self.command, self.path)
                response = Response(
                    500, {"Content-Type": "application/json"}, b'{"message":"localcloud internal error"}'
                )
        if not body.finished and (self.close_connection or not _drained(body)):
            self.close_connection = True  # the rest of the body is still on the wire
            self._linger_after = not body.continue_pending
        self._write(request, response)
        logger.debug(
            "%s %s -> %d in %.1f ms",
            self.command,
            self.path,
            response.status,
            (time.perf_counter() - started) * 1e3,
        )

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve

    def _write(self, request: Request, response: Response) -> None:
        body = response.body
        length = body.length if isinstance(body, FileBody) else len(body)
        given = {name.lower() for name in response.headers}
        lines = [f"HTTP/1.1 {response.status} {self.responses.get(response.status, ('',))[0]}"]
        for name, value in response.headers.items():
            if name.lower() != "content-length" or self.command == "HEAD":
                lines.append(f"{name}: {value}")
        if self.command != "HEAD" or "content-length" not in given:
            lines.append(f"Content-Length: {length}")
        defaults = {"Date": _http_date()}
        if response.api_headers:
            defaults["Server"] = self.server_version
            defaults["x-amzn-RequestId"] = defaults["x-amz-request-id"] = request.request_id
        lines.extend(f"{name}: {value}" for name, value in defaults.items() if name.lower() not in given)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        try:
            if self.command == "HEAD":
                self.wfile.write(head)
            elif isinstance(body, FileBody):
                self.wfile.write(head)
                if body.length:
                    self.connection.sendfile(body.file, body.offset, body.length)
            else:
                self.wfile.write(head + body)
        finally:
            if isinstance(body, FileBody):
                body.file.close()


class HttpServer(ThreadingHTTPServer):
    """The server of one port: localcloud's own, or a side server (see LocalCloud.start_side_server).

    `render_error` shapes the 403 of a refused request (the Router renders it as the service the request
    is for, so an SDK shows its message); without one it is plain AWS-style JSON.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        dispatch: InternalHandler,
        config: Config,
        render_error: ErrorRenderer | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.dispatch = dispatch
        self.config = config
        self.guard = RequestGuard.for_server(host, config.allowed_hosts, config.allowed_origins)
        self.render_error: ErrorRenderer = render_error or (lambda request, error: json_error(error))
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        """A thread for the connection, or, past max_connections, a 503 from the accept loop itself."""
        if not self._slots.acquire(blocking=False):
            self._refuse_connection(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_connection(self, sock: socket.socket) -> None:
        message = (
            f"localcloud is serving its maximum of {self.config.max_connections} connections "
            "(LOCALCLOUD_MAX_CONNECTIONS); retry shortly"
        )
        body = json.dumps({"__type": "ServiceUnavailable", "message": message}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            sock.setblocking(False)  # the accept loop never waits on a client
            sock.send(head.encode() + body)
        self.shutdown_request(sock)

    def serve_in_background(self, name: str = "localcloud-http") -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    def stop_accepting(self) -> None:
        if self._thread is not None:
            self.shutdown()  # waits for the accept loop to end
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def stop(self) -> None:
        """Stop accepting and unblock every open connection (idle keep-alives, unfinished uploads)."""
        self.stop_accepting()
        self.close_connections()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host; loopback needs none.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its own thread
                connection.shutdown(socket.SHUT_RDWR)
