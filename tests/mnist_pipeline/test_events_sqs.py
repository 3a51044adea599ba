"""The data-events watcher against a real queue: S3 notifications through localcloud's SQS, read as the triggerer does.

The trigger runs here as it runs in the triggerer (its ``run()`` async generator, the amazon
provider's async SQS hook over aiobotocore, the ``aws_default`` connection) against a real
localcloud whose bucket sends its ``ObjectCreated`` notifications to the queue.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from mnist_pipeline import events
from model_code.shards import shard_bytes
from tests.fixtures.localcloud import first_event, use_as_aws_default

BUCKET = "mnist-events-test"
PREFIX = "data/incoming/"


# --- through localcloud's SQS and S3 notifications ---------------------------------------------


@pytest.fixture
def queues(localcloud, monkeypatch):
    """The data-events queue with a DLQ (after 2 receives), the bucket notifying it, and the
    aws_default connection pointing at localcloud."""
    sqs, s3 = localcloud.client("sqs"), localcloud.client("s3")
    dlq = sqs.create_queue(QueueName="events-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName="events",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": localcloud.config.region}
    )
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": PREFIX}]}},
                }
            ]
        },
    )
    use_as_aws_default(monkeypatch, localcloud.endpoint_url, localcloud.config.region)
    return SimpleNamespace(sqs=sqs, s3=s3, url=queue, dlq=dlq)


def counts(sqs, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def put_batch(s3, number: int) -> str:
    key = f"{PREFIX}batch-{number:04d}.npz"
    s3.put_object(
        Bucket=BUCKET, Key=key, Body=shard_bytes(np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8))
    )
    return key


def trigger(url: str, **kwargs) -> events.DataEventsTrigger:
    return events.DataEventsTrigger(sqs_queue=url, **{"wait_time_seconds": 2, "collect_s": 2, **kwargs})


@pytest.mark.slow
def test_ten_batches_landing_together_are_one_event_and_stay_queued_until_acknowledged(queues):
    keys = [put_batch(queues.s3, number) for number in range(1, 11)]
    payload = asyncio.run(first_event(trigger(queues.url)))

    assert payload["object_keys"] == sorted(keys)
    assert payload["queue_url"] == queues.url
    # Received, not deleted: the messages wait, invisible, for the run to acknowledge them
    # (the S3 test event sent when the notification was configured was deleted).
    assert counts(queues.sqs, queues.url) == (0, len(payload["messages"]))

    acknowledged = events.acknowledge(queues.sqs, [payload])
    assert acknowledged == {
        "object_keys": sorted(keys),
        "messages_deleted": len(payload["messages"]),
        "delete_failures": [],
    }
    assert counts(queues.sqs, queues.url) == (0, 0)


@pytest.mark.slow
def test_a_malformed_message_goes_to_the_dlq_and_the_watcher_keeps_watching(queues):
    queues.sqs.send_message(QueueUrl=queues.url, MessageBody="this is not an S3 event {")
    queues.sqs.send_message(QueueUrl=queues.url, MessageBody=json.dumps({"Records": "nope"}))

    async def watch() -> dict:
        generator = trigger(queues.url).run()
        try:
            pending = asyncio.ensure_future(anext(generator))
            await asyncio.sleep(4)  # the watcher meets the foreign messages first
            assert not pending.done(), "a foreign message must not become an asset event"
            await asyncio.to_thread(put_batch, queues.s3, 42)
            return (await asyncio.wait_for(pending, 30)).payload
        finally:
            await generator.aclose()

    payload = asyncio.run(watch())
    assert payload["object_keys"] == [f"{PREFIX}batch-0042.npz"]
    # Both foreign messages were redriven to the DLQ after their receives (maxReceiveCount 2).
    deadline = time.monotonic() + 10
    while counts(queues.sqs, queues.dlq)[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    bodies = sorted(
        message["Body"]
        for message in queues.sqs.receive_message(QueueUrl=queues.dlq, MaxNumberOfMessages=10)["Messages"]
    )
    assert bodies == sorted(["this is not an S3 event {", json.dumps({"Records": "nope"})])


@pytest.mark.slow
def test_the_stock_jsonpath_trigger_dies_on_a_malformed_message(queues):
    """Why the watcher is not the stock trigger: one non-JSON body ends it (the upstream pitfall)."""
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

    queues.sqs.send_message(QueueUrl=queues.url, MessageBody="this is not an S3 event {")
    stock = SqsSensorTrigger(
        sqs_queue=queues.url,
        wait_time_seconds=1,
        waiter_delay=1,
        message_filtering="jsonpath",
        message_filtering_config="Records[*].s3.object.key",
    )
    with pytest.raises(json.JSONDecodeError):
        asyncio.run(first_event(stock))


@pytest.mark.slow
def test_an_unacknowledged_event_wakes_the_dag_again_once_its_visibility_ends(queues):
    """A triggerer that died before the run started loses nothing: the message comes back."""
    key = put_batch(queues.s3, 7)
    # A visibility longer than the burst's collection (at most collect_s), as in production (600 s):
    # a shorter one lets the message come back within the burst and spends its receives.
    first = asyncio.run(first_event(trigger(queues.url, visibility_timeout=3)))
    deadline = time.monotonic() + 10
    while counts(queues.sqs, queues.url) != (1, 0):  # nobody acknowledged it: visible again
        assert time.monotonic() < deadline, counts(queues.sqs, queues.url)
        time.sleep(0.1)
    again = asyncio.run(first_event(trigger(queues.url, visibility_timeout=60)))
    assert first["object_keys"] == again["object_keys"] == [key]
    assert events.acknowledge(queues.sqs, [again])["messages_deleted"] == 1
    assert counts(queues.sqs, queues.url) == (0, 0)


@pytest.mark.slow
def test_a_message_received_again_within_its_burst_is_one_entry_with_the_newest_receipt(queues):
    key = put_batch(queues.s3, 8)
    # Its visibility (1 s) ends within the burst's collection (up to 3 s): received twice.
    payload = asyncio.run(first_event(trigger(queues.url, visibility_timeout=1, collect_s=3)))
    assert payload["object_keys"] == [key]
    assert len(payload["messages"]) == 1, payload["messages"]
    assert events.acknowledge(queues.sqs, [payload]) == {
        "object_keys": [key],
        "messages_deleted": 1,
        "delete_failures": [],
    }
    assert counts(queues.sqs, queues.url) == (0, 0)


@pytest.mark.slow
def test_one_watcher_keeps_producing_events_across_bursts_and_a_restart_of_the_queue(queues, localcloud):
    """The watcher is long-lived (apache/airflow#51213: SQS watchers that stopped triggering after a
    while): it never returns after an event, and an unreachable queue is retried, not the end."""

    async def watch() -> list[dict]:
        generator = trigger(queues.url).run()
        try:
            await asyncio.to_thread(put_batch, queues.s3, 1)
            first = (await asyncio.wait_for(anext(generator), 30)).payload
            events.acknowledge(queues.sqs, [first])
            await asyncio.to_thread(localcloud.cloud.stop)  # the queue goes away under the watcher
            pending = asyncio.ensure_future(anext(generator))
            await asyncio.sleep(1)
            assert not pending.done()
            await asyncio.to_thread(localcloud.restart)
            await asyncio.to_thread(put_batch, localcloud.client("s3"), 2)
            second = (await asyncio.wait_for(pending, 30)).payload
            return [first, second]
        finally:
            await generator.aclose()

    first, second = asyncio.run(watch())
    assert first["object_keys"] == [f"{PREFIX}batch-0001.npz"]
    assert second["object_keys"] == [f"{PREFIX}batch-0002.npz"]
