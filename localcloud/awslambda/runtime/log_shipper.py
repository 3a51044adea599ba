"""Worker output into CloudWatch Logs: collected off the invocation path, shipped in batches."""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING

from localcloud.wire import ServiceError

if TYPE_CHECKING:
    from localcloud.logs import LogsBackend

logger = logging.getLogger("localcloud")

LOG_FLUSH_INTERVAL_S = 0.2
MAX_LOG_EVENT_BYTES = 256 * 1024 - 26  # CloudWatch's limit on one event, less its per-event overhead
LOG_BATCH_EVENTS = 10_000
LOG_BATCH_BYTES = 1_000_000


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
