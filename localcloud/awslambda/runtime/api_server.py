"""The Lambda Runtime API one worker polls: a loopback port of its own, serving awslambdaric's requests.

    GET  /2018-06-01/runtime/invocation/next              long poll: the next event for this worker
    POST /2018-06-01/runtime/invocation/<id>/response     the handler's result
    POST /2018-06-01/runtime/invocation/<id>/error        the handler raised
    POST /2018-06-01/runtime/init/error                   the handler module failed to import

Why a port per worker: the client's Python half opens `http.client.HTTPConnection(AWS_LAMBDA_RUNTIME_API)`
(for init errors), which takes no path, so the port is the only thing that can tell workers apart; and
knowing which worker holds an invocation is what lets a timeout kill exactly that process. The endpoint is
RuntimeApiServer, not localcloud's general HTTP server: its one client speaks a fixed dialect (one
keep-alive connection, four endpoints, Content-Length bodies), and parsing just that costs a tenth of a
general request parse, twice per invocation, on the hot path.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus

from localcloud.trust import RequestGuard
from localcloud.wire import Response, json_response

RuntimeHandler = Callable[[str, str, dict[str, str], bytes], "Response | None"]
_REASONS = {status.value: status.phrase for status in HTTPStatus}

NEXT_PATH = "/2018-06-01/runtime/invocation/next"
INVOCATION_PREFIX = "/2018-06-01/runtime/invocation/"
INIT_ERROR_PATH = "/2018-06-01/runtime/init/error"


def accepted() -> Response:
    """The Runtime API's answer to a result, an error or an init error."""
    return Response(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')


def _encode(response: Response) -> bytes:
    head = [f"HTTP/1.1 {response.status} {_REASONS[response.status]}"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    head.append(f"Content-Length: {len(response.body)}\r\n\r\n")
    return "\r\n".join(head).encode() + response.body


_LOOPBACK_ONLY = RequestGuard()  # the worker's client says Host: 127.0.0.1:<port> and sends no Origin


class RuntimeApiServer:
    """One worker's Runtime API: a loopback port serving the runtime client's requests in order.

    The client keeps one connection open (its C half, for /next and results) and opens another only to
    report an init error, before the first exists; so one thread serving one connection at a time is
    enough. A GET /next with nothing to run is parked (the handler returns None): the thread goes back to
    reading, and the invoking thread writes the answer with send() when an invocation comes.
    """

    def __init__(self, handle: RuntimeHandler, name: str) -> None:
        self._handle = handle
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=8)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._connection: socket.socket | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and end the open connection; a blocked read on it returns at once."""
        self._closed = True
        for sock in (self._listener, self._connection):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _serve(self) -> None:
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection = connection
            try:
                self._serve_connection(connection)
            except (ConnectionError, OSError, ValueError):
                pass  # the worker went away, is being killed, or sent something that is not HTTP
            finally:
                self._connection = None
                connection.close()

    def _serve_connection(self, connection: socket.socket) -> None:
        pending = bytearray()
        while not self._closed:
            while (end := pending.find(b"\r\n\r\n")) < 0:
                if not self._receive(connection, pending):
                    return
            lines = bytes(pending[:end]).decode("latin-1").split("\r\n")
            del pending[: end + 4]
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if (refusal := _LOOPBACK_ONLY.refusal(headers)) is not None:
                # A web page can reach this port too; answer it and close, so the worker can connect.
                connection.sendall(
                    _encode(json_response({"errorMessage": refusal, "errorType": "Forbidden"}, 403))
                )
                return
            length = int(headers.get("content-length") or 0)
            if len(pending) < length and headers.get("expect", "").lower() == "100-continue":
                connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(pending) < length:
                if not self._receive(connection, pending):
                    return
            body = bytes(pending[:length])
            del pending[:length]
            response = self._handle(method, target.partition("?")[0], headers, body)
            if response is not None:  # None: a parked GET /next, answered later through send()
                connection.sendall(_encode(response))

    def send(self, response: Response) -> None:
        """Answer the request the worker waits on (a parked GET /next), from another thread.

        Safe beside _serve_connection's reads: the worker sends nothing more until it has this answer.
        """
        connection = self._connection
        if connection is None or self._closed:
            raise ConnectionError("the worker's Runtime API connection is closed")
        connection.sendall(_encode(response))

    @staticmethod
    def _receive(connection: socket.socket, pending: bytearray) -> bool:
        chunk = connection.recv(1 << 16)
        pending += chunk
        return bool(chunk)
