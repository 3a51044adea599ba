"""The demo's closed loop on an in-process localcloud: the data-events queue, its DLQ and the
bucket's new-batch notification; the alerts topic and its local inbox."""

from __future__ import annotations

import json

from devtools.bootstrap import (
    ALERTS_INBOX,
    EVENTS_DLQ,
    ensure_alerts,
    ensure_batch_notification,
    ensure_bucket,
    ensure_events_queue,
)
from mnist_pipeline.config import PipelineConfig


def test_new_batches_notify_the_events_queue_and_bootstrapping_twice_changes_nothing(localcloud):
    s3, sqs, sns = localcloud.client("s3"), localcloud.client("sqs"), localcloud.client("sns")
    config = PipelineConfig(
        bucket="mnist-events-test", region="us-east-1", sagemaker_role_arn="arn:aws:iam::000000000000:role/x"
    )
    ensure_bucket(s3, config)
    queue_url, queue_arn = ensure_events_queue(sqs)
    assert ensure_batch_notification(s3, config, queue_arn) is True
    assert ensure_events_queue(sqs) == (queue_url, queue_arn)
    assert ensure_batch_notification(s3, config, queue_arn) is False
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert redrive["deadLetterTargetArn"].endswith(EVENTS_DLQ) and int(redrive["maxReceiveCount"]) == 5
    sqs.purge_queue(QueueUrl=queue_url)  # the s3:TestEvent

    s3.put_object(Bucket=config.bucket, Key="data/incoming/batch-0009.npz", Body=b"x")
    s3.put_object(Bucket=config.bucket, Key="data/holdout/batch-0010.npz", Body=b"x")
    s3.put_object(Bucket=config.bucket, Key="data/incoming/notes.txt", Body=b"x")
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    keys = [record["s3"]["object"]["key"] for m in messages for record in json.loads(m["Body"])["Records"]]
    assert keys == ["data/incoming/batch-0009.npz"]

    topic_arn, inbox_url = ensure_alerts(sns, sqs)
    assert ensure_alerts(sns, sqs) == (topic_arn, inbox_url)
    assert len(sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]) == 1
    assert inbox_url.endswith(ALERTS_INBOX)


def test_the_demo_tools_import_no_airflow():
    """The test suite's Airflow fixture must set AIRFLOW_HOME before Airflow is first imported, and the
    demo's CLI runs before Airflow exists: devtools imports none of it (mnist_pipeline.events does)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = "import sys, devtools.cli, devtools.bootstrap; print('airflow.configuration' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'plugins'}"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert result.stdout.strip() == "False", result.stderr


def test_the_demo_spells_the_watchers_names_as_it_does():
    from devtools.airflow_env import EVENTS_QUEUE_URL_ENV
    from mnist_pipeline.events import BATCH_SUFFIX, QUEUE_URL_ENV
    from model_code.shards import SHARD_SUFFIX

    assert SHARD_SUFFIX == BATCH_SUFFIX
    assert EVENTS_QUEUE_URL_ENV == QUEUE_URL_ENV
