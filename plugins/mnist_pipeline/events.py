"""Event-driven retraining: S3 `ObjectCreated` notifications → SQS → an Airflow asset watcher → a run.

    new batch in data/incoming/ ──S3 notification──▶ SQS queue ──DataEventsTrigger (triggerer)──▶
        asset event on INCOMING_DATA ──▶ mnist_retraining (schedule: the nightly cron OR that asset)

The watcher's trigger is the amazon provider's ``SqsSensorTrigger`` (what ``MessageQueueTrigger``'s
``sqs`` scheme dispatches to), subclassed for three things a nightly pipeline relies on and the stock
trigger does not give:

- **A message is deleted only after its asset event is recorded.** The stock trigger deletes what it
  received before it yields the event, so a triggerer killed in between loses the wake-up. Here the
  trigger only receives (with a visibility timeout longer than any run); the run that the
  event started deletes the messages (``acknowledge``), and a run exists only once its asset event
  is recorded. A message whose run never started becomes visible again and wakes the DAG again.
- **A malformed or foreign message never stops the watcher.** The stock JSONPath filter calls
  ``json.loads`` on every body, so one non-JSON message raises in the trigger and ends the watcher.
  Here such a message is logged and left undeleted, with its visibility stretched per receive, so
  the queue's redrive policy moves it to the dead-letter queue after ``maxReceiveCount`` receives.
  S3's own ``s3:TestEvent`` (sent when a notification is configured) is deleted: it is expected.
- **Ten objects landing together give one run.** After the first message the trigger keeps
  receiving for up to ``collect_s`` seconds (until a receive brings nothing new), so one upload of
  many files is one asset event. Objects arriving while a run is in progress are not lost and do not
  start runs of their own: with ``max_active_runs=1`` Airflow keeps their asset events queued and
  starts one run for all of them when the current one ends; that run's data step takes every batch
  no run consumed, whichever message announced it.

The batches themselves are found by listing ``data/incoming/`` (the data step), never from
messages: a message is a wake-up, so a lost or duplicated one can delay a run, never lose or repeat
data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger
from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable
from airflow.triggers.base import TriggerEvent

logger = logging.getLogger(__name__)

INCOMING_ASSET_NAME = "mnist_incoming_batches"
WATCHER_NAME = "mnist_data_events"
QUEUE_URL_ENV = "MNIST_EVENTS_QUEUE_URL"
DEFAULT_INCOMING_PREFIX = "data/incoming/"
BATCH_SUFFIX = ".npz"
# Longer than any run (training alone may take up to 6 h): an event that arrives while a run is in
# progress waits, received once, for the run it queues, instead of coming back every few minutes as
# another asset event and, after maxReceiveCount receives, landing in the DLQ. SQS's maximum. A
# wake-up that is lost anyway (the triggerer died before its event was recorded) comes back after
# that, and the nightly cron finds its batch before then: batches are found by listing.
DEFAULT_VISIBILITY_S = 12 * 3600
DEFAULT_COLLECT_S = 3.0
LONG_POLL_S = 10  # each empty receive waits this long on the queue itself: no busy polling
MAX_FOREIGN_BACKOFF_S = 60


def parse_notification(body: str, prefix: str = DEFAULT_INCOMING_PREFIX) -> tuple[str, list[str]]:
    """What an SQS message body is: ("batches", [keys]), ("test", []) or ("foreign", [why]).

    Batches are S3 ``ObjectCreated:*`` records (S3's notification format, version 2.x) whose key is
    under ``prefix`` and ends in ``.npz``; keys arrive URL-encoded (spaces as ``+``) and are decoded.
    """
    try:
        document = json.loads(body)
    except (TypeError, ValueError) as error:
        return "foreign", [f"not JSON ({error})"]
    if not isinstance(document, dict):
        return "foreign", ["not a JSON object"]
    if document.get("Event") == "s3:TestEvent":
        return "test", []
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        return "foreign", ["no S3 event Records"]
    keys = []
    for record in records:
        if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
            return "foreign", ["a record that is not an S3 event"]
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        try:
            key = unquote_plus(record["s3"]["object"]["key"])
        except (KeyError, TypeError):
            return "foreign", ["an S3 record without s3.object.key"]
        if key.startswith(prefix) and key.endswith(BATCH_SUFFIX):
            keys.append(key)
    if not keys:
        return "foreign", [f"no ObjectCreated record for a {BATCH_SUFFIX} key under {prefix}"]
    return "batches", keys


class DataEventsTrigger(SqsSensorTrigger):
    """Long-polls the data-events queue; one TriggerEvent per burst of new-batch notifications.

    The event's payload: ``{"status": "success", "queue_url", "object_keys": [...], "messages":
    [{"message_id", "receipt_handle", "keys"}]}``. Messages are not deleted here (see the module
    docstring): ``acknowledge`` does it from the run.
    """

    def __init__(
        self,
        sqs_queue: str,
        aws_conn_id: str | None = "aws_default",
        incoming_prefix: str = DEFAULT_INCOMING_PREFIX,
        visibility_timeout: int | None = DEFAULT_VISIBILITY_S,
        collect_s: float = DEFAULT_COLLECT_S,
        wait_time_seconds: int = LONG_POLL_S,
        region_name: str | None = None,
        botocore_config: dict | None = None,
    ) -> None:
        super().__init__(
            sqs_queue=sqs_queue,
            aws_conn_id=aws_conn_id,
            max_messages=10,
            wait_time_seconds=wait_time_seconds,
            visibility_timeout=visibility_timeout,
            delete_message_on_reception=False,
            waiter_delay=0,
            region_name=region_name,
            botocore_config=botocore_config,
        )
        self.incoming_prefix = incoming_prefix
        self.collect_s = collect_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "sqs_queue": self.sqs_queue,
                "aws_conn_id": self.aws_conn_id,
                "incoming_prefix": self.incoming_prefix,
                "visibility_timeout": self.visibility_timeout,
                "collect_s": self.collect_s,
                "wait_time_seconds": self.wait_time_seconds,
                "region_name": self.region_name,
                "botocore_config": self.botocore_config,
            },
        )

    async def _receive(self, client: Any, wait_s: int) -> list[dict]:
        response = await client.receive_message(
            QueueUrl=self.sqs_queue,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return response.get("Messages", [])

    async def _sort(self, client: Any, messages: Iterable[dict], found: list[dict]) -> None:
        """Keep new-batch messages in ``found``; delete test events; park foreign ones for the DLQ."""
        for message in messages:
            kind, detail = parse_notification(message.get("Body", ""), self.incoming_prefix)
            if kind == "batches":
                # Received again within the burst (its visibility ended): one entry, with the newest
                # receipt handle, the only one that can still delete it.
                again = next((seen for seen in found if seen["message_id"] == message["MessageId"]), None)
                if again is not None:
                    again["receipt_handle"] = message["ReceiptHandle"]
                    continue
                found.append(
                    {
                        "message_id": message["MessageId"],
                        "receipt_handle": message["ReceiptHandle"],
                        "keys": detail,
                    }
                )
            elif kind == "test":
                await client.delete_message(QueueUrl=self.sqs_queue, ReceiptHandle=message["ReceiptHandle"])
            else:
                receives = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
                self.log.warning(
                    "ignoring message %s on %s: %s (receive %d; the queue's redrive policy moves it "
                    "to the dead-letter queue)",
                    message.get("MessageId"),
                    self.sqs_queue,
                    detail[0],
                    receives,
                )
                # Back off per receive, so that without a redrive policy it cannot spin the watcher.
                await client.change_message_visibility(
                    QueueUrl=self.sqs_queue,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=min(2 ** (receives - 1), MAX_FOREIGN_BACKOFF_S),
                )

    async def poke(self, client: Any) -> list[dict]:
        found: list[dict] = []
        await self._sort(client, await self._receive(client, self.wait_time_seconds), found)
        if not found:
            return found
        # A burst: keep collecting until a receive brings nothing more, for at most collect_s.
        deadline = asyncio.get_running_loop().time() + self.collect_s
        while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
            before = len(found)
            await self._sort(client, await self._receive(client, max(1, min(int(remaining), 2))), found)
            if len(found) == before:
                break
        return found

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self.log.info("watching %s for new batches under %s", self.sqs_queue, self.incoming_prefix)
        while True:
            try:
                async with await self.hook.get_async_conn() as client:
                    while True:
                        found = await self.poke(client)
                        if found:
                            keys = sorted({key for message in found for key in message["keys"]})
                            self.log.info("new batches: %s", ", ".join(keys))
                            yield TriggerEvent(
                                {
                                    "status": "success",
                                    "queue_url": self.sqs_queue,
                                    "object_keys": keys,
                                    "messages": found,
                                }
                            )
            except asyncio.CancelledError:
                raise
            except Exception:
                # An unreachable queue (SQS or localcloud restarting) must not end the watcher.
                self.log.exception("receiving from %s failed; retrying in 5 s", self.sqs_queue)
                await asyncio.sleep(5)


# --- the DAG's side -------------------------------------------------------------------------------


def events_queue_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The data-events queue (``MNIST_EVENTS_QUEUE_URL``), read at parse time; None: no watcher."""
    environ = os.environ if environ is None else environ
    return (environ.get(QUEUE_URL_ENV) or "").strip() or None


def incoming_asset(
    queue_url: str, *, aws_conn_id: str, incoming_prefix: str = DEFAULT_INCOMING_PREFIX
) -> Asset:
    return Asset(
        name=INCOMING_ASSET_NAME,
        watchers=[
            AssetWatcher(
                name=WATCHER_NAME,
                trigger=DataEventsTrigger(
                    sqs_queue=queue_url, aws_conn_id=aws_conn_id, incoming_prefix=incoming_prefix
                ),
            )
        ],
    )


def schedule(cron: str, *, aws_conn_id: str, environ: Mapping[str, str] | None = None) -> Any:
    """The nightly cron OR new data (when a data-events queue is configured): Airflow's
    asset-or-time schedule, so one DAG serves both and ``max_active_runs`` covers both."""
    queue_url = events_queue_url(environ)
    if queue_url is None:
        return cron
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(cron, timezone="UTC"),
        assets=incoming_asset(queue_url, aws_conn_id=aws_conn_id),
    )


def triggering_events(triggering_asset_events: Mapping | None) -> list[dict]:
    """The payloads of the data events that started this run (none for a cron or manual run)."""
    payloads = []
    for events in (triggering_asset_events or {}).values():
        for event in events:
            extra = getattr(event, "extra", None) or {}
            payload = extra.get("payload")
            if isinstance(payload, dict) and "object_keys" in payload:
                payloads.append(payload)
    return payloads


def acknowledge(sqs, payloads: Iterable[Mapping]) -> dict:
    """Delete the messages behind this run's asset events (the run exists, so they are recorded).

    A message received again since (a stale receipt handle) stays, and wakes the DAG once more at
    worst: that run finds nothing new. Returns what the audit records: keys and deletions.
    """
    payloads = list(payloads)
    deleted, failed = 0, []
    for payload in payloads:
        messages = list(payload.get("messages") or [])
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            response = sqs.delete_message_batch(
                QueueUrl=payload["queue_url"],
                Entries=[
                    {"Id": str(index), "ReceiptHandle": message["receipt_handle"]}
                    for index, message in enumerate(chunk)
                ],
            )
            deleted += len(response.get("Successful", []))
            failed += [entry.get("Message") or entry.get("Code") for entry in response.get("Failed", [])]
    keys = sorted({key for payload in payloads for key in payload.get("object_keys", [])})
    return {"object_keys": keys, "messages_deleted": deleted, "delete_failures": failed}
