"""The data-events watcher: what a message is, the schedule it makes, and what a run gets from it.

The trigger against a real queue needs localcloud's SQS (issue 12, in progress).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mnist_pipeline import events

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
