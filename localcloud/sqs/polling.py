"""Long polls: ReceiveMessage calls waiting for their queue to change, without polling the store.

A waiter notes its queue's generation, looks at the table, and waits only if the generation is still
the same: a send committed between its look and its wait bumps the generation, so it is never missed.
Each waiter holds only its own connection's thread (server.py runs one per connection, up to
max_connections), so 20 s polls never stall other clients; stop() wakes them all for a prompt shutdown.
"""

from __future__ import annotations

import threading


class _Queue:
    def __init__(self, lock: threading.Lock) -> None:
        self.condition = threading.Condition(lock)
        self.generation = 0


class LongPolls:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        self._all_left = threading.Condition(self._lock)
        self._waiting = 0
        self.stopping = False

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(self._lock)
        return queue

    def generation(self, name: str) -> int:
        with self._lock:
            return self._queue(name).generation

    def wait(self, name: str, generation: int, timeout: float) -> bool:
        """Wait up to `timeout` s for `name` to change after `generation`; False once stopping."""
        with self._lock:
            queue = self._queue(name)
            if not self.stopping and queue.generation == generation:
                self._waiting += 1
                try:
                    queue.condition.wait(timeout)
                finally:
                    self._waiting -= 1
                    if self.stopping:
                        self._all_left.notify_all()
            return not self.stopping

    def wake(self, name: str) -> None:
        """Something committed that a waiter of `name` may take: a message, or its queue is gone."""
        with self._lock:
            queue = self._queues.get(name)
            if queue is not None:
                queue.generation += 1
                queue.condition.notify_all()

    def stop(self, grace_s: float) -> None:
        """Wake every waiter (each answers with no messages) and wait up to `grace_s` for them to leave."""
        with self._lock:
            self.stopping = True
            for queue in self._queues.values():
                queue.condition.notify_all()
            self._all_left.wait_for(lambda: self._waiting == 0, timeout=grace_s)
