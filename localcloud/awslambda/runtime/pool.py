"""Function pools: the workers of each function version, the invocations waiting for them, and the launcher.

A FunctionPool holds the workers of one function version: an invocation goes to the worker that was idle
last (or waits in the queue for one that has just answered); a new worker is started (a cold start,
reported as "Init Duration") when none is idle and the pool is below its size limit; past the queue limit,
callers get TooManyRequests. The hot path creates no threads or processes, wakes no thread but the
worker's Runtime API reader, and writes nothing to SQLite: worker output goes to CloudWatch Logs through
the LogShipper, in batches, off the request path.

LambdaRuntime holds every pool of one localcloud, the launcher thread that starts workers, and the shipper.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from localcloud.awslambda.runtime.api_server import accepted
from localcloud.awslambda.runtime.log_shipper import LogShipper
from localcloud.awslambda.runtime.worker import (
    FunctionSpec,
    Invocation,
    Worker,
    base_environment,
    error_payload,
    now_ms,
)
from localcloud.processes import ProcessGroups
from localcloud.wire import Response, ServiceError, json_response

if TYPE_CHECKING:
    from localcloud.app import LocalCloud
    from localcloud.logs import LogsBackend

logger = logging.getLogger("localcloud")

INIT_TIMEOUT_S = 10  # Lambda's limit on the init phase
MAX_RESPONSE_BYTES = 6 * 1024 * 1024  # a synchronous invocation's response, as on AWS
TAIL_BYTES = 4096  # LogType Tail returns the last 4 KB of the invocation's log
IDLE_RECHECK_S = 1.0  # how often a queued invocation's caller rechecks whether it can still be run
# How long a queued invocation waits for a worker that has just answered (and is about to ask for more) before
# a parked worker is given it instead; the runtime client asks again within a fraction of a millisecond.
RETURN_GRACE_S = 0.05


@dataclass
class InvocationResult:
    payload: bytes
    function_error: str | None  # "Unhandled" when the function failed, as in X-Amz-Function-Error
    log_tail: str | None  # base64 of the last 4 KB of the invocation's log, when asked for
    executed_version: str


class PoolRetired(Exception):
    """The pool stopped taking invocations (its version was replaced or deleted); resolve it again."""


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
        self._base_environment = base_environment(spec, runtime.endpoint_url, runtime.bytecode_dir)

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
                return accepted()
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
            worker.server.send(accepted())
        worker.drain_output()  # what it printed before answering: the runtime client flushes first
        self._report(worker, invocation, duration_ms, status=None)
        invocation.done.set()  # a no-op unless the caller waits for its log tail
        return None

    def init_failed(self, worker: Worker, body: bytes) -> Response:
        worker.drain_output()
        worker.init_error = body
        elapsed = (time.monotonic() - worker.launched_at) * 1000
        worker.emit(f"INIT_REPORT Init Duration: {elapsed:.2f} ms\tPhase: init\tStatus: error")
        return accepted()

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

    def worker_environment(self, worker: Worker, api_address: str) -> dict[str, str]:
        return {
            **self._base_environment,
            "AWS_LAMBDA_LOG_STREAM_NAME": worker.log_stream,
            "AWS_LAMBDA_RUNTIME_API": api_address,
        }


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
        # A worker dies with localcloud, even a SIGKILLed one, and takes its process group with it
        # (localcloud.processes): the kernel signals it when the thread that started it ends, so all workers
        # are started from this one long-lived launcher thread.
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
