"""Running Lambda functions: worker processes with AWS's runtime client, and the Runtime API they poll.

Each worker runs awslambdaric, the Runtime Interface Client inside AWS's Python base images, as
`python -m awslambdaric <handler>` does (_RUNTIME_CLIENT says which one setting localcloud changes), in the
version's code directory. It polls the Lambda Runtime API on a loopback port of its own, as an execution
environment polls its sandbox's API on AWS:

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

A FunctionPool holds the workers of one function version: an invocation goes to the worker that was idle
last (or waits in the queue for one that has just answered); a new worker is started (a cold start,
reported as "Init Duration") when none is idle and the pool is below its size limit; past the queue limit,
callers get TooManyRequests. The hot path creates no threads or processes, wakes no thread but the
worker's Runtime API reader, and writes nothing to SQLite: worker output goes to CloudWatch Logs through
the LogShipper, in batches, off the request path.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import json
import logging
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING

from localcloud.processes import ProcessGroups, end_group, python_command, signal_group
from localcloud.trust import RequestGuard
from localcloud.wire import Response, ServiceError, json_response

if TYPE_CHECKING:
    from localcloud.app import LocalCloud
    from localcloud.logs import LogsBackend

RuntimeHandler = Callable[[str, str, dict[str, str], bytes], "Response | None"]
_REASONS = {status.value: status.phrase for status in HTTPStatus}

logger = logging.getLogger("localcloud")

NEXT_PATH = "/2018-06-01/runtime/invocation/next"
INVOCATION_PREFIX = "/2018-06-01/runtime/invocation/"
INIT_ERROR_PATH = "/2018-06-01/runtime/init/error"

INIT_TIMEOUT_S = 10  # Lambda's limit on the init phase
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # a synchronous invocation's response, as on AWS
TAIL_BYTES = 4096  # LogType Tail returns the last 4 KB of the invocation's log
IDLE_RECHECK_S = 1.0  # how often a queued invocation's caller rechecks whether it can still be run
# How long a queued invocation waits for a worker that has just answered (and is about to ask for more) before
# a parked worker is given it instead; the runtime client asks again within a fraction of a millisecond.
RETURN_GRACE_S = 0.05
LOG_FLUSH_INTERVAL_S = 0.2
MAX_LOG_EVENT_BYTES = 256 * 1024 - 26  # CloudWatch's limit on one event, less its per-event overhead
LOG_BATCH_EVENTS = 10_000
LOG_BATCH_BYTES = 1_000_000
# While a worker is busy, its output is collected when it answers; the pump only needs to wake now and then.
PUMP_COALESCE_S = 0.05
MEMORY_SAMPLE_INTERVAL_S = 0.25
PIPE_READ_BYTES = 65536

# Names Lambda sets itself; a function may not override them (AWS refuses them in Environment too).
RESERVED_ENVIRONMENT = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)

# A worker dies with localcloud, even a SIGKILLed one, and takes its process group with it
# (localcloud.processes): the kernel signals it when the thread that started it ends, so all workers are
# started from the one long-lived launcher thread.


def _accepted() -> Response:
    """The Runtime API's answer to a result, an error or an init error."""
    return Response(202, {"Content-Type": "application/json"}, b'{"status":"OK"}')


# The runtime client as shipped, with one setting changed: for python3.12+ runtimes it waits for each
# event in a new helper thread, so that its main thread can take signals while it waits. localcloud never
# signals a worker except to kill it, and that thread costs ~0.3 ms of CPU and wall time per invocation,
# a third of the whole warm invoke path, so it is turned off. AWS_EXECUTION_ENV still names the runtime.
_RUNTIME_CLIENT = (
    "import sys; from awslambdaric import __main__ as ric, lambda_config; "
    "lambda_config.LambdaConfigProvider.SUPPORTED_THREADPOLLING_ENVS = frozenset(); ric.main(sys.argv)"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class FunctionSpec:
    """Everything a worker of one function version runs with; a changed spec means new workers."""

    function_name: str
    version: str  # "$LATEST" or "1", "2", ...
    function_arn: str  # unqualified
    handler: str
    runtime: str
    code_dir: Path
    environment: tuple[tuple[str, str], ...]
    timeout_s: int
    memory_mb: int
    log_group: str
    region: str

    @property
    def key(self) -> tuple[str, str]:
        return self.function_name, self.version


@dataclass
class InvocationResult:
    payload: bytes
    function_error: str | None  # "Unhandled" when the function failed, as in X-Amz-Function-Error
    log_tail: str | None  # base64 of the last 4 KB of the invocation's log, when asked for
    executed_version: str


class PoolRetired(Exception):
    """The pool stopped taking invocations (its version was replaced or deleted); resolve it again."""


class Invocation:
    """One request's trip through a worker; the caller waits on `done`."""

    __slots__ = (
        "request_id",
        "payload",
        "invoked_arn",
        "client_context",
        "log",
        "queued_at",
        "started_at",
        "worker",
        "finished",
        "done",
        "response",
        "function_error",
        "failure",
    )

    def __init__(self, payload: bytes, invoked_arn: str, client_context: str | None, tail: bool) -> None:
        # A random UUID without uuid4's urandom call, which releases the GIL to every waiting thread.
        self.request_id = str(uuid.UUID(int=random.getrandbits(128), version=4))
        self.payload = payload
        self.invoked_arn = invoked_arn
        self.client_context = client_context
        self.log: list[str] | None = [] if tail else None
        self.queued_at = time.monotonic()
        self.started_at: float | None = None
        self.worker: Worker | None = None
        self.finished = False  # set under the pool's lock by whoever decides the outcome
        self.done = threading.Event()
        self.response = b""
        self.function_error: str | None = None
        self.failure: ServiceError | None = None  # an API error instead of a result (throttled, shut down)

    def trace_id(self) -> str:
        return f"Root=1-{int(time.time()):08x}-{self.request_id.replace('-', '')[:24]};Sampled=0"


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


class Worker:
    """One execution environment: an awslambdaric process and the Runtime API port it polls."""

    def __init__(self, pool: FunctionPool) -> None:
        self.pool = pool
        self.id = uuid.uuid4().hex
        day = time.strftime("%Y/%m/%d", time.gmtime())
        self.log_stream = f"{day}/[{pool.spec.version}]{self.id}"
        self.process: subprocess.Popen[bytes] | None = None
        self.server: RuntimeApiServer | None = None
        self.launched_at = time.monotonic()
        self.starting = True  # until its first /next
        self.stopped = False  # no longer takes invocations; its process is (being) killed
        self.init_duration_ms: float | None = None  # reported once, on its first invocation's REPORT
        self.init_error: bytes | None = None
        self.current: Invocation | None = None
        self.returning = False  # answered an invocation, has not asked for the next one yet
        self.max_memory_mb = 0
        self._memory_sampled_at = 0.0
        self._out_lock = threading.Lock()
        self._out_closed = False
        self._partial = b""
        self._pump: threading.Thread | None = None
        self._group: str | None = None  # the record of its process group (localcloud.processes)

    # --- process -----------------------------------------------------------------------------------

    def launch(self) -> None:
        spec = self.pool.spec
        self.server = RuntimeApiServer(self.handle, f"lambda-runtime-{self.id[:8]}")
        process = subprocess.Popen(
            python_command(_RUNTIME_CLIENT, spec.handler),
            cwd=spec.code_dir,
            env=self.pool.worker_environment(self, self.server.address),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes anything it started too
        )
        try:
            self._group = self.pool.runtime.processes.add(
                process, f"Lambda worker of {spec.function_name}:{spec.version}"
            )
        except BaseException:  # unrecorded, a killed localcloud's successor could not reap it
            signal_group(process, signal.SIGKILL)
            end_group(process)
            process.stdout.close()
            raise
        self.process = process
        os.set_blocking(self.process.stdout.fileno(), False)
        self._pump = threading.Thread(target=self._pump_output, name=f"lambda-out-{self.id[:8]}", daemon=True)
        self._pump.start()

    def kill(self) -> None:
        """SIGKILL the worker's process group (and everything it started)."""
        self.stopped = True
        if self.server is not None:
            self.server.close()
        if self.process is not None:
            signal_group(self.process, signal.SIGKILL)

    def join(self, timeout: float) -> None:
        if self._pump is not None:
            self._pump.join(timeout)

    def memory_used_mb(self) -> int:
        """Peak resident memory so far (VmHWM), what Lambda reports as "Max Memory Used".

        Sampled at most every MEMORY_SAMPLE_INTERVAL_S: the peak only grows, and a read of /proc per
        invocation would be a noticeable share of the invoke path.
        """
        now = time.monotonic()
        if now - self._memory_sampled_at < MEMORY_SAMPLE_INTERVAL_S:
            return self.max_memory_mb
        self._memory_sampled_at = now
        try:
            with open(f"/proc/{self.process.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmHWM:"):
                        self.max_memory_mb = max(self.max_memory_mb, math.ceil(int(line.split()[1]) / 1024))
                        break
        except (OSError, AttributeError, ValueError):
            pass  # exited, or no /proc here: keep the last figure
        return self.max_memory_mb

    # --- output ------------------------------------------------------------------------------------

    def _pump_output(self) -> None:
        fd = self.process.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        at_end = False
        while not at_end:
            poller.poll()
            if self.current is not None:
                time.sleep(PUMP_COALESCE_S)  # complete() takes this invocation's output itself
            with self._out_lock:
                at_end = self._read_output(fd, flush_partial=False)
        with self._out_lock:
            self._out_closed = True
            self.process.stdout.close()
        returncode = end_group(self.process)  # what the function left running ends with its worker
        try:
            self.pool.runtime.processes.remove(self._group)
        except Exception:  # a full disk: the next start finds the group gone
            logger.exception("could not forget the process group of Lambda worker %s", self.id)
        if self.server is not None:
            self.server.close()
        self.pool.worker_exited(self, returncode)

    def drain_output(self) -> None:
        """Take in what the worker printed before it answered, so it lands in that invocation's log.

        The runtime client flushes stdout before it posts a result, so all of it is in the pipe by now.
        """
        with self._out_lock:
            if not self._out_closed:
                self._read_output(self.process.stdout.fileno(), flush_partial=True)

    def _read_output(self, fd: int, flush_partial: bool) -> bool:
        """Emit the complete lines waiting in the pipe; True at end of file. Call with _out_lock held."""
        chunks = [self._partial]
        at_end = False
        while True:
            try:
                chunk = os.read(fd, PIPE_READ_BYTES)
            except BlockingIOError:
                break
            if not chunk:
                at_end = True
                break
            chunks.append(chunk)
            if len(chunk) < PIPE_READ_BYTES:
                break  # a pipe read returns everything waiting, so the pipe is empty now
        lines = b"".join(chunks).split(b"\n")
        self._partial = lines.pop()
        if self._partial and (flush_partial or at_end):
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            # The runtime client joins a multi-line record (an error and its traceback) with "\r" so that
            # CloudWatch shows it as one event.
            self.emit(line.decode("utf-8", "replace").rstrip("\r").replace("\r", "\n"))
        return at_end

    def emit(self, message: str, invocation: Invocation | None = None) -> None:
        """One log event in this worker's stream, and in the invocation's tail when it asked for one."""
        self.pool.shipper.add(self.pool.spec.log_group, self.log_stream, now_ms(), message)
        invocation = invocation or self.current
        if invocation is not None and invocation.log is not None:
            invocation.log.append(message)

    # --- the Runtime API this worker polls -----------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response | None:
        if method == "GET" and path == NEXT_PATH:
            return self.pool.next_invocation(self)
        if method == "POST" and path.startswith(INVOCATION_PREFIX):
            request_id, _, outcome = path[len(INVOCATION_PREFIX) :].partition("/")
            if outcome in ("response", "error"):
                error_type = headers.get("lambda-runtime-function-error-type", "Unhandled")
                return self.pool.complete(self, request_id, body, error_type if outcome == "error" else None)
        if method == "POST" and path == INIT_ERROR_PATH:
            return self.pool.init_failed(self, body)
        return json_response(
            {"errorMessage": f"no Runtime API endpoint {method} {path}", "errorType": "NotFound"}, 404
        )


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


class FunctionPool:
    """The workers of one function version and the invocations waiting for them."""

    def __init__(self, spec: FunctionSpec, runtime: LambdaRuntime, max_workers: int, max_queue: int) -> None:
        self.spec = spec
        self.runtime = runtime
        self.shipper = runtime.shipper
        self.max_workers = max_workers
        self.max_queue = max_queue
        self._lock = threading.RLock()
        self._queue: collections.deque[Invocation] = collections.deque()
        self._workers: set[Worker] = set()  # taking invocations: started and not stopped
        self._alive: set[Worker] = set()  # launched and not yet exited, stopped or not
        # Idle workers whose GET /next waits unanswered, most recently parked last (see next_invocation).
        self._parked: list[Worker] = []
        self._returning = 0  # workers that answered an invocation and have not asked for the next yet
        self._starting = 0  # workers launched that have not asked for work yet
        self._closed = False
        self._base_environment = self._environment()

    # --- callers' side -------------------------------------------------------------------------------

    def invoke(
        self, payload: bytes, invoked_arn: str, *, client_context: str | None = None, tail: bool = False
    ) -> InvocationResult:
        """Run one invocation on a warm (or newly started) worker and wait for its outcome."""
        invocation = Invocation(payload, invoked_arn, client_context, tail)
        self._enqueue(invocation)
        timeout = self.spec.timeout_s
        wait = timeout if invocation.started_at is not None else RETURN_GRACE_S
        while not invocation.done.wait(wait):
            started = invocation.started_at
            now = time.monotonic()
            if started is None:
                if now - invocation.queued_at > timeout + INIT_TIMEOUT_S:
                    self._give_up_waiting(invocation)
                else:  # the worker it waited for did not come back: any parked one will do
                    with self._lock:
                        handed = self._dispatch(reserve=0)
                    self._deliver(handed)
                wait = IDLE_RECHECK_S
            elif now >= started + timeout:
                self.time_out(invocation)
            else:
                wait = started + timeout - now
        if invocation.failure is not None:
            raise invocation.failure
        tail = None
        if invocation.log is not None:
            text = "".join(line + "\n" for line in invocation.log).encode()[-TAIL_BYTES:]
            tail = base64.b64encode(text.decode("utf-8", "ignore").encode()).decode()
        return InvocationResult(invocation.response, invocation.function_error, tail, self.spec.version)

    def _enqueue(self, invocation: Invocation) -> None:
        worker = None
        with self._lock:
            if self._closed:
                raise PoolRetired
            # Throttle only what would wait beyond every worker that is idle, starting or may still start.
            capacity = len(self._parked) + self._starting + self.max_workers - len(self._workers)
            if len(self._queue) >= capacity + self.max_queue:
                raise ServiceError(
                    "TooManyRequestsException",
                    f"Rate Exceeded: {len(self._queue)} invocations of {self.spec.function_name}:"
                    f"{self.spec.version} are already waiting for one of its {self.max_workers} workers",
                    429,
                    Reason="ConcurrentInvocationLimitExceeded",
                )
            self._queue.append(invocation)
            handed = self._dispatch(reserve=self._returning)
            worker = self._new_worker_if_needed()
        self._deliver(handed)
        if worker is not None:
            self.runtime.launch(worker)

    def _dispatch(self, reserve: int) -> list[tuple[Worker, Invocation]]:
        """Give queued invocations, beyond the first `reserve`, to parked workers. Call with the lock held.

        The worker parked last goes first, so at low concurrency one warm process, whose caches still hold
        the handler, takes invocation after invocation while the workers beyond what the load needs stay
        idle; and the first `self._returning` invocations are left for the workers that have just
        answered, which take them from the queue when they ask for more. Measured on the MNIST endpoint at
        concurrency 1 with four warm workers: p50 0.70-0.74 ms, against 0.94-1.17 ms with first-come,
        first-woken turns. Returns the pairs for _deliver, to be called without the lock.
        """
        handed = []
        while len(self._queue) > reserve and self._parked:
            worker = self._parked.pop()
            if not worker.stopped:
                invocation = self._queue.popleft()
                self._start(worker, invocation)
                handed.append((worker, invocation))
        return handed

    def _deliver(self, handed: list[tuple[Worker, Invocation]]) -> None:
        """Answer each parked worker's GET /next with its invocation, from the caller's thread.

        Writing the answer here, rather than waking the worker's Runtime API thread to write it, takes a
        thread switch off every invocation's path.
        """
        for worker, invocation in handed:
            try:
                worker.server.send(self._event_response(worker, invocation))
            except OSError:  # the worker is going away; its exit fails the invocation it holds
                worker.kill()

    @staticmethod
    def _start(worker: Worker, invocation: Invocation) -> None:
        invocation.worker = worker
        invocation.started_at = time.monotonic()
        worker.current = invocation

    def _new_worker_if_needed(self) -> Worker | None:
        """A worker to start when more invocations wait than workers can take. Call with the lock held."""
        waiting_for_one = len(self._queue) > len(self._parked) + self._starting + self._returning
        if not waiting_for_one or len(self._workers) >= self.max_workers or self._closed:
            return None
        worker = Worker(self)
        self._workers.add(worker)
        self._alive.add(worker)
        self._starting += 1
        return worker

    def _give_up_waiting(self, invocation: Invocation) -> None:
        """An invocation no worker took in time: a stuck init is killed, a full pool answers throttled."""
        with self._lock:
            if invocation.finished or invocation.started_at is not None:
                return
            self._queue.remove(invocation)
            invocation.finished = True
            stuck = [
                w for w in self._workers if w.starting and time.monotonic() - w.launched_at > INIT_TIMEOUT_S
            ]
        for worker in stuck:
            worker.kill()
        if stuck:
            message = (
                f"RequestId: {invocation.request_id} Error: Task timed out after {INIT_TIMEOUT_S:.2f} seconds"
            )
            invocation.response = error_payload("Sandbox.Timedout", message)
            invocation.function_error = "Unhandled"
        else:
            invocation.failure = ServiceError(
                "TooManyRequestsException",
                f"Rate Exceeded: no worker of {self.spec.function_name}:{self.spec.version} was free for "
                f"{self.spec.timeout_s + INIT_TIMEOUT_S} s",
                429,
                Reason="ConcurrentInvocationLimitExceeded",
            )
        invocation.done.set()

    def time_out(self, invocation: Invocation) -> None:
        """The function ran past its timeout: kill its worker and answer as Lambda does."""
        worker = invocation.worker
        worker.drain_output()
        with self._lock:
            if invocation.finished:
                return
            invocation.finished = True
            worker.current = None
            worker.stopped = True
            self._workers.discard(worker)
        timeout = self.spec.timeout_s
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        worker.emit(f"{stamp} {invocation.request_id} Task timed out after {timeout:.2f} seconds", invocation)
        self._report(worker, invocation, timeout * 1000.0, status="timeout")
        worker.kill()
        message = f"RequestId: {invocation.request_id} Error: Task timed out after {timeout:.2f} seconds"
        invocation.response = error_payload("Sandbox.Timedout", message)
        invocation.function_error = "Unhandled"
        invocation.done.set()

    # --- workers' side (the Runtime API) -----------------------------------------------------------------

    def next_invocation(self, worker: Worker) -> Response | None:
        """A worker's GET /next: the next queued invocation, or None to park the worker.

        A parked worker's request stays unanswered, as a long poll does; _deliver answers it when an
        invocation comes, and its Runtime API thread meanwhile waits for the worker's next request.
        """
        with self._lock:
            if worker.starting:
                worker.starting = False
                self._starting -= 1
                worker.init_duration_ms = (time.monotonic() - worker.launched_at) * 1000
            if worker.returning:
                worker.returning = False
                self._returning -= 1
            invocation = None
            if not worker.stopped and self._queue:
                invocation = self._queue.popleft()
                self._start(worker, invocation)
            elif not worker.stopped and not self._closed:
                self._parked.append(worker)
                return None
            else:
                worker.stopped = True
                self._workers.discard(worker)
        if invocation is None:
            worker.kill()
            # The server drops the connection without answering; the process is being killed anyway.
            raise ConnectionError(f"Lambda worker {worker.id} stopped")
        return self._event_response(worker, invocation)

    def _event_response(self, worker: Worker, invocation: Invocation) -> Response:
        """The answer to GET /next that hands `invocation` to `worker`."""
        worker.emit(f"START RequestId: {invocation.request_id} Version: {self.spec.version}", invocation)
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(now_ms() + self.spec.timeout_s * 1000),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.invoked_arn,
            # Without a trace id the runtime client's C half crashes.
            "Lambda-Runtime-Trace-Id": invocation.trace_id(),
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        return Response(200, headers, invocation.payload)

    def complete(
        self, worker: Worker, request_id: str, body: bytes, error_type: str | None
    ) -> Response | None:
        """A worker's result (or error) for the invocation it holds.

        The caller is answered first, then the worker (so that it can ask for more), and only then are its
        output and the END/REPORT lines logged: at concurrency 1 the worker's next GET /next is on the next
        request's path. An invocation that asked for its log tail is answered after the log lines instead.
        """
        invocation = worker.current
        if invocation is None or invocation.request_id != request_id:
            return json_response(
                {"errorMessage": f"Invalid request ID: {request_id}", "errorType": "InvalidRequestID"}, 400
            )
        if invocation.log is not None:
            worker.drain_output()  # while it is still the worker's current invocation: lines go to its tail
        with self._lock:
            if invocation.finished:  # timed out a moment ago; the worker is being killed
                return _accepted()
            invocation.finished = True
            worker.current = None
            worker.returning = True
            self._returning += 1
        duration_ms = (time.monotonic() - invocation.started_at) * 1000
        if len(body) > MAX_RESPONSE_BYTES:
            invocation.response = error_payload(
                "Function.ResponseSizeTooLarge",
                f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
            )
            invocation.function_error = "Unhandled"
            worker.drain_output()
            self._report(worker, invocation, duration_ms, status="error")
            invocation.done.set()
            return json_response(
                {
                    "errorMessage": "Exceeded maximum allowed payload size",
                    "errorType": "RequestEntityTooLarge",
                },
                413,
            )
        invocation.response = body
        invocation.function_error = "Unhandled" if error_type is not None else None
        if invocation.log is None:
            invocation.done.set()
        with contextlib.suppress(OSError):  # the worker went away after answering; its answer stands
            worker.server.send(_accepted())
        worker.drain_output()  # what it printed before answering: the runtime client flushes first
        self._report(worker, invocation, duration_ms, status=None)
        invocation.done.set()  # a no-op unless the caller waits for its log tail
        return None

    def init_failed(self, worker: Worker, body: bytes) -> Response:
        worker.drain_output()
        worker.init_error = body
        elapsed = (time.monotonic() - worker.launched_at) * 1000
        worker.emit(f"INIT_REPORT Init Duration: {elapsed:.2f} ms\tPhase: init\tStatus: error")
        return _accepted()

    def worker_exited(self, worker: Worker, returncode: int) -> None:
        """The process is gone: fail what it held, and what waits for it when no other worker can run it."""
        with self._lock:
            self._workers.discard(worker)
            self._alive.discard(worker)
            if worker.starting:
                worker.starting = False
                self._starting -= 1
            if worker.returning:
                worker.returning = False
                self._returning -= 1
            if worker in self._parked:
                self._parked.remove(worker)
            expected = worker.stopped
            worker.stopped = True
            invocation = worker.current
            worker.current = None
            stranded: list[Invocation] = []
            if not self._workers and (worker.init_error or not expected):
                stranded = list(self._queue)
                self._queue.clear()
            for waiting in stranded:
                waiting.finished = True
            if invocation is not None:
                if invocation.finished:
                    invocation = None
                else:
                    invocation.finished = True
            handed = self._dispatch(reserve=self._returning)  # it may have been on its way back for them
            replacement = self._new_worker_if_needed()  # e.g. after a timeout, for what waits behind it
        self._deliver(handed)
        if replacement is not None:
            self.runtime.launch(replacement)
        reason = (
            f"signal: {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
        )
        if invocation is not None:
            message = f"RequestId: {invocation.request_id} Error: Runtime exited with error: {reason}"
            worker.emit(message, invocation)
            self._report(worker, invocation, (time.monotonic() - invocation.started_at) * 1000, "error")
            invocation.response = error_payload("Runtime.ExitError", message)
            invocation.function_error = "Unhandled"
            invocation.done.set()
        for waiting in stranded:
            # As on AWS, the invocations that needed this environment get its init error.
            waiting.response = worker.init_error or error_payload(
                "Runtime.ExitError",
                f"RequestId: {waiting.request_id} Error: Runtime exited with error: {reason}",
            )
            waiting.function_error = "Unhandled"
            waiting.done.set()

    def _report(self, worker: Worker, invocation: Invocation, duration_ms: float, status: str | None) -> None:
        fields = [
            f"REPORT RequestId: {invocation.request_id}",
            f"Duration: {duration_ms:.2f} ms",
            f"Billed Duration: {max(1, math.ceil(duration_ms))} ms",
            f"Memory Size: {self.spec.memory_mb} MB",
            f"Max Memory Used: {worker.memory_used_mb()} MB",
        ]
        if worker.init_duration_ms is not None:
            fields.append(f"Init Duration: {worker.init_duration_ms:.2f} ms")
            worker.init_duration_ms = None
        if status is not None:
            fields.append(f"Status: {status}")
        worker.emit(f"END RequestId: {invocation.request_id}", invocation)
        worker.emit("\t".join(fields) + "\t", invocation)

    # --- lifecycle ---------------------------------------------------------------------------------

    def retire(self) -> None:
        """Take no new invocations; workers finish what is queued, then stop (a version replaced)."""
        with self._lock:
            self._closed = True
            handed = self._dispatch(reserve=self._returning)
            idle, self._parked = self._parked, []
            for worker in idle:
                worker.stopped = True
                self._workers.discard(worker)
        self._deliver(handed)
        for worker in idle:
            worker.kill()

    def shut_down(self) -> list[Worker]:
        """Stop now: kill every worker, fail what is queued or running. Returns the workers to join."""
        with self._lock:
            self._closed = True
            workers = list(self._alive)
            pending = list(self._queue)
            self._queue.clear()
            running = [w.current for w in workers if w.current is not None and not w.current.finished]
            for invocation in pending + running:
                invocation.finished = True
            self._workers.clear()
            self._parked.clear()
        for worker in workers:
            worker.kill()
        for invocation in pending + running:
            invocation.failure = ServiceError("ServiceException", "localcloud is shutting down", 500)
            invocation.done.set()
        return workers

    @property
    def has_processes(self) -> bool:
        with self._lock:
            return bool(self._alive)

    @property
    def worker_count(self) -> int:
        with self._lock:
            return len(self._workers)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w.process is not None]

    # --- environment -------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        spec = self.spec
        python_bin = str(Path(sys.executable).parent)
        return {
            **dict(spec.environment),
            "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "_HANDLER": spec.handler,
            "AWS_REGION": spec.region,
            "AWS_DEFAULT_REGION": spec.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": spec.log_group,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "LAMBDA_TASK_ROOT": str(spec.code_dir),
            "LAMBDA_RUNTIME_DIR": str(Path(sys.executable).parent.parent),
            # The function's AWS calls reach this localcloud, with the dummy credentials it accepts.
            "AWS_ENDPOINT_URL": self.runtime.endpoint_url,
            "AWS_ACCESS_KEY_ID": "localcloud",
            "AWS_SECRET_ACCESS_KEY": "localcloud",
            "AWS_SESSION_TOKEN": "localcloud",
            # Bytecode goes to localcloud's cache, not into the code directory (read-only on AWS).
            "PYTHONPYCACHEPREFIX": str(self.runtime.bytecode_dir),
        }

    def worker_environment(self, worker: Worker, api_address: str) -> dict[str, str]:
        return {
            **self._base_environment,
            "AWS_LAMBDA_LOG_STREAM_NAME": worker.log_stream,
            "AWS_LAMBDA_RUNTIME_API": api_address,
        }


class LogShipper:
    """Moves worker output into CloudWatch Logs in batches, off the invocation path."""

    def __init__(self, logs: LogsBackend) -> None:
        self._logs = logs
        self._pending: collections.deque[tuple[str, str, int, str]] = collections.deque()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, group: str, stream: str, timestamp_ms: int, message: str) -> None:
        self._pending.append((group, stream, timestamp_ms, message))  # deque appends are thread-safe

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lambda-log-shipper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(LOG_FLUSH_INTERVAL_S)
            try:
                self.flush()
            except Exception:
                logger.exception("shipping Lambda logs to CloudWatch Logs failed")

    def flush(self) -> None:
        with self._flush_lock:
            streams: dict[tuple[str, str], list[tuple[int, str]]] = {}
            while self._pending:
                group, stream, timestamp, message = self._pending.popleft()
                if len(message) > MAX_LOG_EVENT_BYTES // 4:
                    message = message.encode()[:MAX_LOG_EVENT_BYTES].decode("utf-8", "ignore")
                streams.setdefault((group, stream), []).append((timestamp, message))
            for (group, stream), events in streams.items():
                events.sort(key=lambda event: event[0])  # stable: same-millisecond lines keep their order
                for batch in _batches(events):
                    self._put(group, stream, batch)

    def _put(self, group: str, stream: str, events: list[tuple[int, str]]) -> None:
        try:
            self._logs.put_log_events(group, stream, events)
        except ServiceError as error:
            if error.code != "ResourceNotFoundException":
                raise
            for create, args in (
                (self._logs.create_log_group, (group,)),
                (self._logs.create_log_stream, (group, stream)),
            ):
                try:
                    create(*args)
                except ServiceError as exists:
                    if exists.code != "ResourceAlreadyExistsException":
                        raise
            self._logs.put_log_events(group, stream, events)


def _batches(events: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    batches: list[list[tuple[int, str]]] = [[]]
    size = 0
    for event in events:
        event_size = len(event[1].encode()) + 26
        if len(batches[-1]) >= LOG_BATCH_EVENTS or size + event_size > LOG_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(event)
        size += event_size
    return [batch for batch in batches if batch]


class LambdaRuntime:
    """All function pools of one localcloud, the launcher thread that starts workers, and the log shipper."""

    def __init__(
        self,
        logs: LogsBackend,
        bytecode_dir: Path,
        processes: ProcessGroups,
        *,
        workers_per_version: int,
        queue_per_version: int,
    ) -> None:
        self.shipper = LogShipper(logs)
        self.processes = processes
        self.bytecode_dir = bytecode_dir
        self.workers_per_version = workers_per_version
        self.queue_per_version = queue_per_version
        self.endpoint_url = ""
        self._pools: dict[tuple[str, str], FunctionPool] = {}
        self._retired: list[FunctionPool] = []
        self._lock = threading.Lock()
        self._launches: collections.deque[Worker | None] = collections.deque()
        self._launch_ready = threading.Semaphore(0)
        self._launcher: threading.Thread | None = None
        self._stopping = False

    def start(self, cloud: LocalCloud) -> None:
        self.endpoint_url = cloud.endpoint_url
        self.shipper.start()
        self._launcher = threading.Thread(target=self._launch_workers, name="lambda-launcher", daemon=True)
        self._launcher.start()

    def pool(self, spec: FunctionSpec) -> FunctionPool:
        """The pool running `spec`; a pool of the same version with another spec is retired."""
        with self._lock:
            if self._stopping:
                raise ServiceError("ServiceException", "localcloud is shutting down", 500)
            pool = self._pools.get(spec.key)
            if pool is not None and pool.spec == spec:
                return pool
            if pool is not None:
                self._retire(pool)
            pool = FunctionPool(spec, self, self.workers_per_version, self.queue_per_version)
            self._pools[spec.key] = pool
            return pool

    def retire(self, function_name: str, version: str | None = None) -> None:
        """Stop the workers of a deleted version (or of every version of a deleted function)."""
        with self._lock:
            keys = [k for k in self._pools if k[0] == function_name and version in (None, k[1])]
            for key in keys:
                self._retire(self._pools.pop(key))

    def _retire(self, pool: FunctionPool) -> None:
        """Retire `pool`, keeping it (to stop at shutdown) while it has processes. Call with _lock held."""
        pool.retire()
        self._retired = [old for old in self._retired if old.has_processes] + [pool]

    def launch(self, worker: Worker) -> None:
        self._launches.append(worker)
        self._launch_ready.release()

    def _launch_workers(self) -> None:
        while True:
            self._launch_ready.acquire()
            worker = self._launches.popleft()
            if worker is None:
                return
            if worker.stopped:
                continue
            try:
                worker.launch()
            except Exception as error:
                logger.exception("starting a Lambda worker for %s failed", worker.pool.spec.function_name)
                worker.init_error = error_payload(
                    "Runtime.StartError", f"could not start the runtime: {error}"
                )
                if worker.server is not None:
                    worker.server.close()
                worker.pool.worker_exited(worker, 1)
                continue
            if worker.stopped:  # shut down while it was starting
                worker.kill()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            pools = list(self._pools.values()) + self._retired
            self._pools.clear()
            self._retired.clear()
        workers = [worker for pool in pools for worker in pool.shut_down()]
        # The launcher skips stopped workers and kills one it was starting; then every worker has a pump.
        self._launches.append(None)
        self._launch_ready.release()
        if self._launcher is not None:
            self._launcher.join(timeout=10)
        for worker in workers:
            worker.join(timeout=5)
        self.shipper.stop()

    def pools(self) -> list[FunctionPool]:
        with self._lock:
            return list(self._pools.values())

    def worker_count(self) -> int:
        return sum(pool.worker_count for pool in self.pools())
