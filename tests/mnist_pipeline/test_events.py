"""The data-events watcher: S3 notifications through localcloud's SQS, read as the triggerer does.

The trigger runs here as it runs in the triggerer (its ``run()`` async generator, the amazon
provider's async SQS hook over aiobotocore, the ``aws_default`` connection) against a real
localcloud whose bucket sends its ``ObjectCreated`` notifications to the queue.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

from mnist_pipeline import events
from model_code.shards import shard_bytes

BUCKET = "mnist-events-test"
PREFIX = "data/incoming/"


def s3_event(*keys: str, name: str = "ObjectCreated:Put") -> str:
    records = [
        {"eventSource": "aws:s3", "eventName": name, "s3": {"object": {"key": key, "size": 1}}}
        for key in keys
    ]
    return json.dumps({"Records": records})


# --- what a message is -------------------------------------------------------------------------


def test_new_batch_notifications_name_their_decoded_keys():
    body = s3_event("data/incoming/batch-0001.npz", "data/incoming/batch+0002.npz")
    assert events.parse_notification(body) == (
        "batches",
        ["data/incoming/batch-0001.npz", "data/incoming/batch 0002.npz"],
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("not json at all", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"hello": "world"}), "no S3 event Records"),
        (s3_event("data/incoming/notes.txt"), "no ObjectCreated record"),
        (s3_event("data/other/batch-0001.npz"), "no ObjectCreated record"),
        (s3_event("data/incoming/batch-0001.npz", name="ObjectRemoved:Delete"), "no ObjectCreated record"),
        (json.dumps({"Records": [{"eventSource": "aws:sns"}]}), "not an S3 event"),
    ],
)
def test_foreign_and_malformed_messages_are_named_foreign_with_the_reason(body, why):
    kind, detail = events.parse_notification(body)
    assert kind == "foreign" and why in detail[0]


def test_s3s_test_event_is_recognised():
    assert events.parse_notification(json.dumps({"Event": "s3:TestEvent", "Bucket": BUCKET})) == ("test", [])


def test_the_schedule_is_the_cron_alone_without_a_queue_and_cron_or_asset_with_one():
    from airflow.sdk import AssetOrTimeSchedule

    assert events.schedule("0 2 * * *", aws_conn_id="aws_default", environ={}) == "0 2 * * *"
    both = events.schedule(
        "0 2 * * *", aws_conn_id="aws_default", environ={events.QUEUE_URL_ENV: "https://q.example/1/q"}
    )
    assert isinstance(both, AssetOrTimeSchedule)
    asset = both.asset_condition
    assert asset.name == events.INCOMING_ASSET_NAME
    (watcher,) = asset.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "mnist_pipeline.events.DataEventsTrigger"
    assert kwargs["sqs_queue"] == "https://q.example/1/q"
    assert type(watcher.trigger)(**kwargs).serialize() == (classpath, kwargs)  # as the triggerer rebuilds it


def test_a_run_started_by_data_events_gets_their_payloads_and_other_runs_none():
    payload = {"object_keys": ["data/incoming/batch-0001.npz"], "messages": [], "queue_url": "q"}
    triggering = {"asset": [SimpleNamespace(extra={"from_trigger": True, "payload": payload})]}
    assert events.triggering_events(triggering) == [payload]
    assert events.triggering_events({}) == [] and events.triggering_events(None) == []
    # An asset event from somewhere else (a person, another DAG) carries no data-event payload.
    assert events.triggering_events({"asset": [SimpleNamespace(extra={})]}) == []


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
    connection = {
        "conn_type": "aws",
        "login": "localcloud",
        "password": "localcloud",
        "extra": {"endpoint_url": localcloud.endpoint_url, "region_name": localcloud.config.region},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
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
    import numpy as np

    s3.put_object(
        Bucket=BUCKET, Key=key, Body=shard_bytes(np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.int64))
    )
    return key


async def first_event(trigger: events.DataEventsTrigger, timeout_s: float = 30) -> dict:
    generator = trigger.run()
    try:
        event = await asyncio.wait_for(anext(generator), timeout_s)
    finally:
        await generator.aclose()
    return event.payload


def trigger(url: str, **kwargs) -> events.DataEventsTrigger:
    return events.DataEventsTrigger(sqs_queue=url, wait_time_seconds=2, collect_s=2, **kwargs)


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
    first = asyncio.run(first_event(trigger(queues.url, visibility_timeout=1)))
    time.sleep(1.5)
    again = asyncio.run(first_event(trigger(queues.url, visibility_timeout=60)))
    assert first["object_keys"] == again["object_keys"] == [key]
    assert events.acknowledge(queues.sqs, [again])["messages_deleted"] == 1
    assert counts(queues.sqs, queues.url) == (0, 0)
