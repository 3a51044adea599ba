"""Alerts through the provider's SnsNotifier to localcloud's SNS, read back from a subscribed queue.

What a person on call relies on: a run that needs them sends exactly one message, with the run, the
outcome, the reason and a link to the audit page; a run that does not sends none; SNS being down
never fails the run, and the audit section says the alert did not go out.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from mnist_pipeline import alerts
from mnist_pipeline.config import PipelineConfig
from tests.fixtures.localcloud import use_as_aws_default

pytestmark = pytest.mark.slow


@pytest.fixture
def inbox(localcloud, monkeypatch):
    """The alerts topic with a queue subscribed (as make demo does), aws_default → localcloud."""
    sns, sqs = localcloud.client("sns"), localcloud.client("sqs")
    topic = sns.create_topic(Name="mnist-pipeline-alerts")["TopicArn"]
    url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    use_as_aws_default(monkeypatch, localcloud.endpoint_url, localcloud.config.region)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://localhost:8080")
    config = PipelineConfig(
        bucket="b", region=localcloud.config.region, sagemaker_role_arn="r", alerts_topic_arn=topic
    )

    def received() -> list[dict]:
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        return [json.loads(message["Body"]) for message in answer.get("Messages", [])]

    return config, received


def record(outcome: str, error: str | None = None, **sections) -> dict:
    return {
        "run": {"run_id": f"manual__{outcome}"},
        "result": {"outcome": outcome, "error": error},
        **sections,
    }


ROLLED_BACK = record("rolled_back", "check_canary: 3 of 20 calls to version 7 failed")


def test_a_rolled_back_run_sends_exactly_one_alert_with_the_reason_and_the_audit_link(inbox):
    config, received = inbox
    section = alerts.send_alert(ROLLED_BACK, config, aws_conn_id="aws_default")

    assert section["sent"] and section["error"] is None, section
    (envelope,) = received()
    assert envelope["Subject"] == "mnist_retraining rolled_back: manual__rolled_back"
    assert envelope["Message"].splitlines() == [
        "Run: manual__rolled_back",
        "Outcome: rolled_back",
        "Reason: rolled back: check_canary: 3 of 20 calls to version 7 failed",
        "Audit: http://localhost:8080/mnist-audit/",
    ]
    assert received() == []


def test_a_deployed_run_sends_nothing(inbox):
    config, received = inbox
    section = alerts.send_alert(record("deployed"), config, aws_conn_id="aws_default")
    assert section == {**section, "wanted": False, "sent": False, "reason": None}
    assert received() == []


def test_drift_alone_is_worth_an_alert(inbox):
    config, received = inbox
    drifted = record(
        "deployed",
        monitoring={"drift": True, "drift_score": 17.7, "drifted_features": [{"feature": "pixel_mean"}]},
    )
    assert alerts.send_alert(drifted, config, aws_conn_id="aws_default")["sent"]
    (envelope,) = received()
    assert "Reason: live traffic drifted (pixel_mean 17.7)" in envelope["Message"]


def test_sns_down_does_not_raise_and_the_section_says_it_was_not_sent(inbox, localcloud):
    config, received = inbox
    rule = [{"service": "sns", "operation": "Publish", "topic_arn": config.alerts_topic_arn}]
    faults = f"{localcloud.endpoint_url}/_localcloud/chaos/faults"
    urllib.request.urlopen(urllib.request.Request(faults, data=json.dumps(rule).encode())).close()
    try:
        section = alerts.send_alert(ROLLED_BACK, config, aws_conn_id="aws_default")
    finally:
        urllib.request.urlopen(urllib.request.Request(faults, method="DELETE")).close()

    assert section["wanted"] and not section["sent"], section
    assert config.alerts_topic_arn in section["error"] and "fault injected by localcloud" in section["error"]
    assert received() == []


def test_a_retried_audit_step_does_not_send_the_same_alert_twice(inbox):
    config, received = inbox
    first = alerts.alert_once(ROLLED_BACK, None, config, aws_conn_id="aws_default")
    earlier = {**ROLLED_BACK, "alert": first}
    again = alerts.alert_once(ROLLED_BACK, earlier, config, aws_conn_id="aws_default")

    assert again == first and len(received()) == 1


def test_no_topic_configured_records_the_alert_without_sending(inbox):
    config, received = inbox
    quiet = PipelineConfig(bucket="b", region=config.region, sagemaker_role_arn="r")
    section = alerts.send_alert(ROLLED_BACK, quiet, aws_conn_id="aws_default")
    assert section["wanted"] and not section["sent"] and "mnist_alerts_topic_arn" in section["skipped"]
    assert received() == []
