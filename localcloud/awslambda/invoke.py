"""Invocation routing: from (function, qualifier) to the FunctionPool that runs it, and the Event queue.

Invoke resolves the qualifier (version, alias with its routing weights, or $LATEST) to a pool of warm
workers (runtime/pool.py). The resolution is cached per function and dropped on any change (`changed`),
so the invoke path reads no SQLite.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from localcloud.awslambda.exceptions import not_found, state_conflict
from localcloud.awslambda.runtime.pool import FunctionPool, InvocationResult, PoolRetired
from localcloud.awslambda.runtime.worker import FunctionSpec, error_payload
from localcloud.awslambda.validation import (
    FUNCTION_NAME,
    LATEST,
    VERSION_NUMBER,
    check_payload_size,
    decoded_client_context,
    parse_function_ref,
)
from localcloud.wire import ServiceError

if TYPE_CHECKING:
    from localcloud.awslambda.backend import LambdaBackend

logger = logging.getLogger("localcloud")

EVENT_THREADS = 4


@dataclass
class Target:
    """A resolved (function, qualifier): the pools to run it on, or why it cannot run now."""

    generation: int
    version: str
    invoked_arn: str
    pool: FunctionPool | None
    extra_version: str | None = None
    extra_pool: FunctionPool | None = None
    extra_weight: float = 0.0
    refusal: ServiceError | None = None

    def pick(self) -> tuple[str, FunctionPool]:
        # Alias routing as on AWS: each invocation goes to the additional version with its weight.
        if self.extra_pool is not None and random.random() < self.extra_weight:  # noqa: S311
            return self.extra_version, self.extra_pool
        return self.version, self.pool


class Invoker:
    """Runs invocations of the functions `backend` holds, on the pools of its runtime."""

    def __init__(self, backend: LambdaBackend) -> None:
        self.backend = backend
        self._targets: dict[tuple[str, str | None], Target] = {}
        self._generations: dict[str, int] = {}
        self._generation_counter = itertools.count(1)
        self._async: concurrent.futures.ThreadPoolExecutor | None = None
        self._async_lock = threading.Lock()
        self._events_pending = 0  # Event invocations accepted and not finished

    def stop(self) -> None:
        if self._async is not None:
            self._async.shutdown(wait=False, cancel_futures=True)

    def invoke(
        self,
        function_name: str,
        qualifier: str | None,
        payload: bytes,
        *,
        invocation_type: str = "RequestResponse",
        tail: bool = False,
        client_context: str | None = None,
    ) -> InvocationResult | None:
        """Run the function (sync), queue it (Event) or only check it could run (DryRun: None)."""
        check_payload_size(payload, invocation_type)
        name, qualifier = (
            (function_name, qualifier)
            if FUNCTION_NAME.fullmatch(function_name)
            else parse_function_ref(function_name, qualifier)
        )
        context = decoded_client_context(client_context) if client_context else None
        target = self._target(name, qualifier)
        if invocation_type == "DryRun":
            return None
        if invocation_type == "Event":
            self._queue_event(name, qualifier, payload or b"{}")
            return None
        faults = self.backend.faults
        for _ in range(3):
            version, pool = target.pick()
            if faults.rules:
                fault = faults.match(
                    "lambda", "Invoke", function_name=name, qualifier=qualifier, version=version
                )
                if fault is not None:
                    return InvocationResult(
                        error_payload(fault["error_type"], fault["error_message"]), "Unhandled", None, version
                    )
            try:
                return pool.invoke(payload or b"{}", target.invoked_arn, client_context=context, tail=tail)
            except PoolRetired:  # replaced between lookup and enqueue: look it up again
                self.changed(name)
                target = self._target(name, qualifier)
        raise ServiceError("ServiceException", f"{name} kept changing while it was being invoked; retry", 500)

    def changed(self, name: str) -> None:
        """Drop cached invoke targets of `name`: the next invocation resolves it from the store again.

        Call it after the change is committed. Every call gets a value never used before, so a target
        resolved from state read before the change can never pass for a current one.
        """
        self._generations[name] = next(self._generation_counter)

    # --- Event invocations -------------------------------------------------------------------------

    def _queue_event(self, name: str, qualifier: str | None, payload: bytes) -> None:
        """Run an Event invocation later, unless `lambda_event_queue` of them are already waiting or running.

        AWS keeps an asynchronous queue per function; here each queued event holds its payload (up to
        1 MB) in memory, so the queue is bounded and a full one answers as a throttled Lambda does.
        """
        with self._async_lock:
            if self._events_pending >= self.backend.config.lambda_event_queue:
                raise ServiceError(
                    "TooManyRequestsException",
                    f"Rate Exceeded: {self._events_pending} Event invocations are already queued or running "
                    "(LOCALCLOUD_LAMBDA_EVENT_QUEUE)",
                    429,
                    Type="User",
                    Reason="ConcurrentInvocationLimitExceeded",
                )
            if self._async is None:
                self._async = concurrent.futures.ThreadPoolExecutor(
                    EVENT_THREADS, thread_name_prefix="lambda-event"
                )
            self._events_pending += 1
            pool = self._async
        try:
            pool.submit(self._run_event, name, qualifier, payload)
        except RuntimeError:  # shutting down
            self._event_done()
            raise

    def _run_event(self, name: str, qualifier: str | None, payload: bytes) -> None:
        try:
            self.invoke(name, qualifier, payload)
        except Exception:
            logger.debug("asynchronous invocation of %s failed", name, exc_info=True)
        finally:
            self._event_done()

    def _event_done(self) -> None:
        with self._async_lock:
            self._events_pending -= 1

    # --- resolving a qualifier -----------------------------------------------------------------------

    def _target(self, name: str, qualifier: str | None) -> Target:
        generation = self._generations.get(name, 0)
        target = self._targets.get((name, qualifier))
        if target is None or target.generation != generation:
            target = self._resolve(name, qualifier, generation)
            self._targets[(name, qualifier)] = target
        if target.refusal is not None:
            raise target.refusal
        return target

    def _resolve(self, name: str, qualifier: str | None, generation: int) -> Target:
        backend = self.backend
        doc = backend.function(name)
        invoked_arn = backend.arn(name, qualifier)
        if qualifier in (None, LATEST):
            return self._latest_target(name, doc, generation, invoked_arn)
        if VERSION_NUMBER.fullmatch(qualifier):
            version = backend.version(name, qualifier)
            return Target(generation, qualifier, invoked_arn, *self._version_pool(version))
        alias = backend.alias_or_none(name, qualifier)
        if alias is None:
            raise not_found(f"Function not found: {invoked_arn}")
        primary = alias["FunctionVersion"]
        if primary == LATEST:
            return self._latest_target(name, doc, generation, invoked_arn)
        pool, refusal = self._version_pool(backend.version(name, primary))
        target = Target(generation, primary, invoked_arn, pool, refusal=refusal)
        for extra, weight in (
            (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        ).items():
            extra_pool, extra_refusal = self._version_pool(backend.version(name, extra))
            target.extra_version, target.extra_pool, target.extra_weight = extra, extra_pool, weight
            target.refusal = target.refusal or extra_refusal
        return target

    def _latest_target(self, name: str, doc: dict[str, Any], generation: int, invoked_arn: str) -> Target:
        latest, active = doc["latest"], doc.get("active")
        if active is None:  # never became Active: Pending, or Failed at creation
            return Target(generation, LATEST, invoked_arn, None, refusal=state_conflict(latest["State"]))
        return Target(
            generation, LATEST, invoked_arn, self.backend.runtime.pool(self._spec(name, LATEST, active))
        )

    def _version_pool(self, version: dict[str, Any]) -> tuple[FunctionPool | None, ServiceError | None]:
        if version["State"] != "Active":
            return None, state_conflict(version["State"])
        spec = self._spec(version["FunctionName"], version["Version"], version)
        return self.backend.runtime.pool(spec), None

    def _spec(self, name: str, version: str, config: dict[str, Any]) -> FunctionSpec:
        variables = (config.get("Environment") or {}).get("Variables") or {}
        return FunctionSpec(
            function_name=name,
            version=version,
            function_arn=self.backend.arn(name),
            handler=config["Handler"],
            runtime=config["Runtime"],
            code_dir=self.backend.code.code_dir(config["_code"]),
            environment=tuple(sorted(variables.items())),
            timeout_s=config["Timeout"],
            memory_mb=config["MemorySize"],
            log_group=config["LoggingConfig"]["LogGroup"],
            region=self.backend.config.region,
        )
