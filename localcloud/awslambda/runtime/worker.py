"""One Lambda execution environment: an awslambdaric process, its output, and the environment it runs in.

Each worker runs awslambdaric, the Runtime Interface Client inside AWS's Python base images, as
`python -m awslambdaric <handler>` does (_RUNTIME_CLIENT says which one setting localcloud changes), in the
version's code directory. It polls the Lambda Runtime API on a loopback port of its own (api_server.py), as
an execution environment polls its sandbox's API on AWS; its pool (pool.py) decides what it runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from localcloud.awslambda.runtime.api_server import (
    INIT_ERROR_PATH,
    INVOCATION_PREFIX,
    NEXT_PATH,
    RuntimeApiServer,
)
from localcloud.processes import end_group, python_command, signal_group
from localcloud.wire import Response, ServiceError, json_response

if TYPE_CHECKING:
    from localcloud.awslambda.runtime.pool import FunctionPool

logger = logging.getLogger("localcloud")

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


def base_environment(spec: FunctionSpec, endpoint_url: str, bytecode_dir: Path) -> dict[str, str]:
    """What every worker of `spec` starts with: Lambda's own variables over the function's Environment."""
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
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "localcloud",
        "AWS_SECRET_ACCESS_KEY": "localcloud",
        "AWS_SESSION_TOKEN": "localcloud",
        # Bytecode goes to localcloud's cache, not into the code directory (read-only on AWS).
        "PYTHONPYCACHEPREFIX": str(bytecode_dir),
    }
