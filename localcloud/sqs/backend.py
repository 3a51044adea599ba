"""SqsBackend: standard queues and their messages, durable in the store, with long polling.

Queues are documents (`sqs/queue`, key: the queue name) holding their attributes and tags. Messages are
rows of `sqs_messages`, each write committed before the answer, so a restart loses nothing: a message
in flight stays in flight until its `visible_ms` passes, then is visible again, whether localcloud ran
meanwhile or not. `visible_ms` is the one clock a message has: when it is visible again after a
DelaySeconds or a receive's visibility timeout (a message never received whose `visible_ms` is in the
future is delayed; one received before is in flight). MessageRetentionPeriod is applied on every
receive and count, and expired rows are deleted at most once a second per queue.

Long polls (polling.py) wait without polling: a send, a ChangeMessageVisibility to 0, a dead-letter
move or a deleted queue wakes that queue's waiters once committed; a waiter also wakes when the next
in-flight or delayed message of its queue becomes visible, when its WaitTimeSeconds ends, and at stop().

The in-process API other services use (S3 notifications, SNS):
    cloud.sqs.deliver(queue_arn, body, message_attributes=None) -> message id
    cloud.sqs.queue_exists(queue_arn) -> bool
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from localcloud.config import Config
from localcloud.service import Backend
from localcloud.sqs import validation as v
from localcloud.sqs.exceptions import (
    batch_failure,
    invalid_value,
    queue_does_not_exist,
    receipt_handle_invalid,
)
from localcloud.sqs.polling import LongPolls
from localcloud.store import Store
from localcloud.wire import ServiceError

if TYPE_CHECKING:
    from localcloud.app import LocalCloud

QUEUE_KIND = "sqs/queue"  # key: queue name

SCHEMA = """
CREATE TABLE IF NOT EXISTS sqs_messages (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT,
    md5_body TEXT NOT NULL,
    md5_attributes TEXT,
    system TEXT,
    sent_ms INTEGER NOT NULL,
    visible_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    first_receive_ms INTEGER,
    received_ms INTEGER,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS sqs_messages_by_visibility ON sqs_messages (queue, visible_ms);
"""

# Visible messages of a queue, oldest visible first.
_SELECT_VISIBLE = (
    "SELECT rowid, id, body, attributes, md5_body, md5_attributes, system, sent_ms, receive_count, "
    "first_receive_ms FROM sqs_messages WHERE queue = ? AND visible_ms <= ? ORDER BY visible_ms LIMIT ?"
)
_STOP_GRACE_S = 2.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SqsBackend(Backend):
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.endpoint_url = ""
        store.create_tables(SCHEMA)
        self._polls = LongPolls()
        self._swept: dict[str, float] = {}

    def start(self, cloud: LocalCloud) -> None:
        self.endpoint_url = cloud.endpoint_url
        for name, doc in self.store.scan(QUEUE_KIND):
            self._sweep_expired(name, doc, force=True)

    def stop(self) -> None:
        """Wake every long poll (each answers with no messages) and wait briefly for them to leave."""
        self._polls.stop(_STOP_GRACE_S)

    def counts(self) -> dict[str, int]:
        messages = self.store.query("SELECT count(*) AS n FROM sqs_messages")[0]["n"]
        return {"queues": self.store.count(QUEUE_KIND), "messages": messages}

    # --- names, URLs, ARNs -------------------------------------------------------------------------

    def queue_url(self, name: str) -> str:
        return f"{self.endpoint_url}/{self.config.account_id}/{name}"

    def queue_arn(self, name: str) -> str:
        return v.queue_arn(self.config.region, self.config.account_id, name)

    def name_from_url(self, url: str) -> str:
        """The queue a QueueUrl names, whatever host it was built with (clients built elsewhere)."""
        parts = urlsplit(url).path.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise ServiceError("InvalidAddress", f"The address {url} is not valid for this endpoint.")
        if parts[0] != self.config.account_id:
            raise queue_does_not_exist()
        return parts[1]

    def queue_exists(self, queue_arn: str) -> bool:
        try:
            name = v.name_from_arn(queue_arn, self.config.region, self.config.account_id)
        except ServiceError:
            return False
        return self.store.get(QUEUE_KIND, name) is not None

    def queue(self, name: str) -> dict[str, Any]:
        doc = self.store.get(QUEUE_KIND, name)
        if doc is None:
            raise queue_does_not_exist()
        return doc

    # --- queues ------------------------------------------------------------------------------------

    def create_queue(
        self, name: str, attributes: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """The queue's URL. Creating an existing queue again is fine when every given attribute has the
        value it has; otherwise QueueAlreadyExists, naming the first that differs, as AWS does."""
        v.check_queue_name(name)
        given = v.normalise_attributes(attributes or {}, self.queue_exists)
        with self.store.transaction():
            existing = self.store.get(QUEUE_KIND, name)
            if existing is not None:
                for key, value in given.items():
                    if existing["attributes"].get(key) != value:
                        raise ServiceError(
                            "QueueAlreadyExists",
                            f"A queue already exists with the same name and a different value for attribute {key}",
                        )
                return self.queue_url(name)
            now = int(time.time())
            stored = {
                **v.default_attributes(),
                **{k: value for k, value in given.items() if value is not None},
            }
            self.store.put(
                QUEUE_KIND,
                name,
                {"attributes": stored, "created": now, "modified": now, "tags": dict(tags or {})},
            )
        return self.queue_url(name)

    def list_queues(
        self, prefix: str = "", limit: int | None = None, after: str | None = None
    ) -> tuple[list[str], str | None]:
        """Queue names starting with `prefix` in name order after `after`, and the last one returned
        when there are more (None otherwise)."""
        found = self.store.scan(QUEUE_KIND, prefix=prefix, after=after, limit=(limit or 1000) + 1)
        names = [name for name, _ in found]
        if limit is not None and len(names) > limit:
            return names[:limit], names[limit - 1]
        return names[:1000], None

    def delete_queue(self, name: str) -> None:
        with self.store.transaction():
            self.queue(name)
            self.store.delete(QUEUE_KIND, name)
            self.store.execute("DELETE FROM sqs_messages WHERE queue = ?", (name,))
            self.store.after_commit(lambda: self._polls.wake(name))

    def purge_queue(self, name: str) -> None:
        with self.store.transaction():
            self.queue(name)
            self.store.execute("DELETE FROM sqs_messages WHERE queue = ?", (name,))

    def set_queue_attributes(self, name: str, attributes: Mapping[str, str]) -> None:
        given = v.normalise_attributes(attributes, self.queue_exists)
        with self.store.transaction():
            doc = self.queue(name)
            for key, value in given.items():
                if value is None:
                    doc["attributes"].pop(key, None)
                else:
                    doc["attributes"][key] = value
            doc["modified"] = int(time.time())
            self.store.put(QUEUE_KIND, name, doc)

    def queue_attributes(self, name: str, names: list[str]) -> dict[str, str]:
        wanted = set(v.check_attribute_names(names, v.QUEUE_ATTRIBUTES))
        if not wanted:
            return {}
        doc = self.queue(name)
        result: dict[str, str] = {}
        if wanted & {
            "All",
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        }:
            result.update(self._message_counts(name, doc))
        result.update(doc["attributes"])
        result["QueueArn"] = self.queue_arn(name)
        result["CreatedTimestamp"] = str(doc["created"])
        result["LastModifiedTimestamp"] = str(doc["modified"])
        if "All" in wanted:
            return result
        return {key: value for key, value in result.items() if key in wanted}

    def _message_counts(self, name: str, doc: dict[str, Any]) -> dict[str, str]:
        self._sweep_expired(name, doc)
        now = now_ms()
        row = self.store.query(
            "SELECT count(*) AS total, "
            "coalesce(sum(visible_ms > :now AND receive_count > 0), 0) AS in_flight, "
            "coalesce(sum(visible_ms > :now AND receive_count = 0), 0) AS delayed "
            "FROM sqs_messages WHERE queue = :queue AND sent_ms >= :cutoff",
            {"now": now, "queue": name, "cutoff": self._retention_cutoff(doc, now)},
        )[0]
        return {
            "ApproximateNumberOfMessages": str(row["total"] - row["in_flight"] - row["delayed"]),
            "ApproximateNumberOfMessagesNotVisible": str(row["in_flight"]),
            "ApproximateNumberOfMessagesDelayed": str(row["delayed"]),
        }

    def dead_letter_source_queues(self, name: str) -> list[str]:
        self.queue(name)
        arn = self.queue_arn(name)
        sources = []
        for source, doc in self.store.scan(QUEUE_KIND):
            policy = doc["attributes"].get("RedrivePolicy")
            if policy and json.loads(policy)["deadLetterTargetArn"] == arn:
                sources.append(source)
        return sources

    def tag_queue(self, name: str, tags: Mapping[str, str]) -> None:
        with self.store.transaction():
            doc = self.queue(name)
            doc["tags"].update(tags)
            self.store.put(QUEUE_KIND, name, doc)

    def untag_queue(self, name: str, keys: list[str]) -> None:
        with self.store.transaction():
            doc = self.queue(name)
            for key in keys:
                doc["tags"].pop(key, None)
            self.store.put(QUEUE_KIND, name, doc)

    def queue_tags(self, name: str) -> dict[str, str]:
        return dict(self.queue(name)["tags"])

    # --- sending -----------------------------------------------------------------------------------

    def deliver(self, queue_arn: str, body: str, message_attributes: dict | None = None) -> str:
        """Send `body` to the queue an ARN names, from another service; returns the MessageId.

        `message_attributes` are boto3-shaped ({"name": {"DataType": "String", "StringValue": ...}},
        BinaryValue as bytes). A queue that does not exist raises ServiceError
        "AWS.SimpleQueueService.NonExistentQueue"; a bad body or attributes raise SQS's own errors.
        """
        name = v.name_from_arn(queue_arn, self.config.region, self.config.account_id)
        return self.send_message(name, body, message_attributes)["MessageId"]

    def send_message(
        self,
        name: str,
        body: str,
        message_attributes: Mapping[str, Any] | None = None,
        delay: int | None = None,
        system_attributes: Mapping[str, Any] | None = None,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> dict[str, Any]:
        """SendMessage's answer (MessageId and the MD5s) once the message is committed."""
        doc = self.queue(name)
        row, result, _ = self._prepare(
            name, doc, body, message_attributes, delay, system_attributes, group_id, deduplication_id
        )
        with self.store.transaction():
            self.queue(name)  # not deleted meanwhile
            self._insert([row])
            self.store.after_commit(lambda: self._polls.wake(name))
        return result

    def send_message_batch(
        self, name: str, entries: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(Successful, Failed) of SendMessageBatch: entries that fail their own checks fail alone."""
        v.check_batch(entries, "SendMessageBatchRequestEntry")
        doc = self.queue(name)
        rows, successful, failed, total = [], [], [], 0
        for entry in entries:
            try:
                row, result, size = self._prepare(
                    name,
                    doc,
                    entry.get("MessageBody", ""),
                    entry.get("MessageAttributes"),
                    entry.get("DelaySeconds"),
                    entry.get("MessageSystemAttributes"),
                    entry.get("MessageGroupId"),
                    entry.get("MessageDeduplicationId"),
                )
            except ServiceError as error:
                failed.append(batch_failure(entry["Id"], error))
                continue
            total += size
            rows.append(row)
            successful.append({"Id": entry["Id"], **result})
        if total > v.MAX_MESSAGE_BYTES:
            raise v.batch_too_long(total)
        if rows:
            with self.store.transaction():
                self.queue(name)
                self._insert(rows)
                self.store.after_commit(lambda: self._polls.wake(name))
        return successful, failed

    def _prepare(
        self,
        name: str,
        doc: dict[str, Any],
        body: str,
        attributes: Mapping[str, Any] | None,
        delay: int | None,
        system_attributes: Mapping[str, Any] | None,
        group_id: str | None,
        deduplication_id: str | None = None,
    ) -> tuple[tuple, dict[str, Any], int]:
        """The row to insert, the answer's MessageId and MD5s, and the message's size."""
        if deduplication_id is not None:
            raise v.invalid_parameter(
                "The request include parameter MessageDeduplicationId that is not valid for this queue type"
            )
        size = v.check_body(body) + v.check_message_attributes(attributes)
        v.check_message_attributes(system_attributes, system=True)
        v.check_message_size(size, int(doc["attributes"]["MaximumMessageSize"]))
        delay = int(doc["attributes"]["DelaySeconds"]) if delay is None else v.check_delay(delay)
        message_id = str(uuid.uuid4())
        system: dict[str, Any] = {}
        if system_attributes:
            system["AWSTraceHeader"] = system_attributes["AWSTraceHeader"]["StringValue"]
        if group_id is not None:
            system["MessageGroupId"] = group_id
        sent = now_ms()
        md5_attributes = v.md5_of_attributes(attributes or {})
        row = (
            message_id,
            name,
            body,
            v.attributes_to_json(attributes),
            v.md5_of_body(body),
            md5_attributes,
            json.dumps(system) if system else None,
            sent,
            sent + delay * 1000,
        )
        result = {
            "MessageId": message_id,
            "MD5OfMessageBody": row[4],
            "MD5OfMessageAttributes": md5_attributes,
        }
        if system_attributes:
            result["MD5OfMessageSystemAttributes"] = v.md5_of_attributes(system_attributes)
        return row, result, size

    def _insert(self, rows: list[tuple]) -> None:
        self.store.execute_many(
            "INSERT INTO sqs_messages (id, queue, body, attributes, md5_body, md5_attributes, system, "
            "sent_ms, visible_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    # --- receiving ---------------------------------------------------------------------------------

    def receive_message(
        self,
        name: str,
        max_messages: int = 1,
        wait_seconds: int | None = None,
        visibility_timeout: int | None = None,
        system_attribute_names: list[str] | tuple[str, ...] = (),
        message_attribute_names: list[str] | tuple[str, ...] = (),
    ) -> list[dict[str, Any]]:
        """Up to `max_messages` visible messages, each now in flight for the visibility timeout; with a
        wait (WaitTimeSeconds, else the queue's ReceiveMessageWaitTimeSeconds), as soon as there is one."""
        v.check_range(max_messages, "MaxNumberOfMessages", 1, v.MAX_BATCH_ENTRIES)
        if visibility_timeout is not None:
            v.check_range(visibility_timeout, "VisibilityTimeout", 0, v.MAX_VISIBILITY_TIMEOUT)
        if wait_seconds is not None and (not isinstance(wait_seconds, int) or not 0 <= wait_seconds <= 20):
            raise invalid_value(wait_seconds, "WaitTimeSeconds", "Must be >= 0 and <= 20, if provided.")
        system_names = v.check_system_attribute_names(system_attribute_names)
        doc = self.queue(name)
        if wait_seconds is None:
            wait_seconds = int(doc["attributes"]["ReceiveMessageWaitTimeSeconds"])
        deadline = time.monotonic() + wait_seconds
        while True:
            generation = self._polls.generation(name)
            messages = self._receive_now(name, max_messages, visibility_timeout)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                break
            next_visible = self.store.query(
                "SELECT min(visible_ms) AS at FROM sqs_messages WHERE queue = ? AND visible_ms > ?",
                (name, now_ms()),
            )[0]["at"]
            if next_visible is not None:  # an in-flight or delayed message becomes visible first
                remaining = min(remaining, (next_visible - now_ms()) / 1000 + 0.002)
            if not self._polls.wait(name, generation, remaining):
                break
        return [self._as_received(row, system_names, message_attribute_names) for row in messages]

    def _receive_now(
        self, name: str, max_messages: int, visibility_timeout: int | None
    ) -> list[dict[str, Any]]:
        """Take visible messages in one transaction: expired ones are dropped, ones received
        maxReceiveCount times already move to the dead-letter queue (as AWS does on the next receive)."""
        taken: list[dict[str, Any]] = []
        with self.store.transaction():
            doc = self.queue(name)
            attributes = doc["attributes"]
            timeout = (
                int(attributes["VisibilityTimeout"]) if visibility_timeout is None else visibility_timeout
            )
            redrive = json.loads(attributes["RedrivePolicy"]) if attributes.get("RedrivePolicy") else None
            dead_letter = None
            if redrive:
                try:
                    dead_letter = v.name_from_arn(
                        redrive["deadLetterTargetArn"], self.config.region, self.config.account_id
                    )
                except ServiceError:
                    dead_letter = None
                if dead_letter is not None and self.store.get(QUEUE_KIND, dead_letter) is None:
                    dead_letter = None  # the DLQ was deleted: messages stay, as nowhere can take them
            now = now_ms()
            cutoff = self._retention_cutoff(doc, now)
            moved, taken_rows, page = False, set(), 50
            while len(taken) < max_messages:
                # Taken rows stay selectable when the visibility timeout is 0: skip them, and ask for as
                # many more rows as were skipped.
                limit = page + len(taken_rows)
                rows = self.store.query(_SELECT_VISIBLE, (name, now, limit))
                for row in rows:
                    if row["rowid"] in taken_rows:
                        continue
                    if row["sent_ms"] < cutoff:
                        self.store.execute("DELETE FROM sqs_messages WHERE rowid = ?", (row["rowid"],))
                    elif dead_letter is not None and row["receive_count"] >= redrive["maxReceiveCount"]:
                        system = json.loads(row["system"]) if row["system"] else {}
                        system["DeadLetterQueueSourceArn"] = self.queue_arn(name)
                        self.store.execute(
                            "UPDATE sqs_messages SET queue = ?, visible_ms = ?, system = ? WHERE rowid = ?",
                            (dead_letter, now, json.dumps(system), row["rowid"]),
                        )
                        moved = True
                    else:
                        taken_rows.add(row["rowid"])
                        taken.append(self._take(name, row, now, timeout))
                        if len(taken) == max_messages:
                            break
                if len(rows) < limit:
                    break
            if moved:
                self.store.after_commit(lambda: self._polls.wake(dead_letter))
        return taken

    def _take(self, name: str, row: Any, now: int, timeout: int) -> dict[str, Any]:
        nonce = uuid.uuid4().hex
        first = row["first_receive_ms"] or now
        self.store.execute(
            "UPDATE sqs_messages SET receive_count = receive_count + 1, first_receive_ms = ?, received_ms = ?, "
            "receipt = ?, visible_ms = ? WHERE rowid = ?",
            (first, now, nonce, now + timeout * 1000, row["rowid"]),
        )
        message = dict(row)
        message.update(receive_count=row["receive_count"] + 1, first_receive_ms=first)
        message["receipt_handle"] = v.make_receipt_handle(name, row["id"], nonce)
        return message

    def _as_received(
        self, row: dict[str, Any], system_names: set[str], attribute_names: list[str] | tuple[str, ...]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "MessageId": row["id"],
            "ReceiptHandle": row["receipt_handle"],
            "MD5OfBody": row["md5_body"],
            "Body": row["body"],
        }
        if system_names:
            system = json.loads(row["system"]) if row["system"] else {}
            values = {
                "SenderId": self.config.account_id,
                "SentTimestamp": str(row["sent_ms"]),
                "ApproximateReceiveCount": str(row["receive_count"]),
                "ApproximateFirstReceiveTimestamp": str(row["first_receive_ms"]),
                **system,
            }
            message["Attributes"] = {key: value for key, value in values.items() if key in system_names}
        attributes = v.select_message_attributes(v.attributes_from_json(row["attributes"]), attribute_names)
        if attributes:
            message["MessageAttributes"] = attributes
            message["MD5OfMessageAttributes"] = v.md5_of_attributes(attributes)
        return message

    # --- receipt handles ---------------------------------------------------------------------------

    def _in_queue(self, name: str, handle: str) -> tuple[str, str]:
        queue, message_id, nonce = v.parse_receipt_handle(handle)
        if queue != name:
            raise receipt_handle_invalid(handle)
        return message_id, nonce

    def delete_message(self, name: str, handle: str) -> None:
        """Delete by the latest receipt handle. An older one (the message was received again since)
        succeeds and deletes nothing, as AWS documents; a message already gone succeeds too."""
        message_id, nonce = self._in_queue(name, handle)
        with self.store.transaction():
            self.queue(name)
            self.store.execute(
                "DELETE FROM sqs_messages WHERE id = ? AND queue = ? AND receipt = ?",
                (message_id, name, nonce),
            )

    def change_message_visibility(self, name: str, handle: str, timeout: int) -> None:
        v.check_range(timeout, "VisibilityTimeout", 0, v.MAX_VISIBILITY_TIMEOUT)
        message_id, nonce = self._in_queue(name, handle)
        with self.store.transaction():
            self.queue(name)
            rows = self.store.query(
                "SELECT visible_ms, received_ms FROM sqs_messages WHERE id = ? AND queue = ? AND receipt = ?",
                (message_id, name, nonce),
            )
            now = now_ms()
            if not rows:
                raise invalid_value(
                    handle,
                    "ReceiptHandle",
                    "Message does not exist or is not available for visibility timeout change.",
                )
            if rows[0]["visible_ms"] <= now:
                raise ServiceError(
                    "AWS.SimpleQueueService.MessageNotInflight",
                    f"Message {message_id} is not in flight: its visibility timeout has already ended.",
                )
            if now + timeout * 1000 - rows[0]["received_ms"] > v.MAX_VISIBILITY_TIMEOUT * 1000:
                raise invalid_value(
                    timeout,
                    "VisibilityTimeout",
                    f"Total VisibilityTimeout for the message is beyond the limit [{v.MAX_VISIBILITY_TIMEOUT} seconds]",
                )
            self.store.execute(
                "UPDATE sqs_messages SET visible_ms = ? WHERE id = ?", (now + timeout * 1000, message_id)
            )
            if timeout == 0:
                self.store.after_commit(lambda: self._polls.wake(name))

    # --- waiting and housekeeping -----------------------------------------------------------------

    @staticmethod
    def _retention_cutoff(doc: dict[str, Any], now: int) -> int:
        return now - int(doc["attributes"]["MessageRetentionPeriod"]) * 1000

    def _sweep_expired(self, name: str, doc: dict[str, Any], force: bool = False) -> None:
        moment = time.monotonic()
        if not force and moment - self._swept.get(name, 0.0) < 1.0:
            return
        self._swept[name] = moment
        self.store.execute(
            "DELETE FROM sqs_messages WHERE queue = ? AND sent_ms < ?",
            (name, self._retention_cutoff(doc, now_ms())),
        )
