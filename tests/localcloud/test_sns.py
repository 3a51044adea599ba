"""localcloud SNS through boto3: each operation and its errors as boto3 raises them (never a 5xx for bad
input), Publish delivering SNS's envelope (or the raw message) to SQS subscribers, email subscriptions
that stay pending, topics and subscriptions surviving a restart, the injected "SNS is down" fault, the
envelope compared with moto's, and the query parsing checked against botocore's own serialiser."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.request
import uuid

import boto3
import botocore.serialize
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from moto import mock_aws

from localcloud.protocols import load_service_model
from localcloud.sns.service import _from_form
from tests.fixtures.raw_http import exchange, request_bytes

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ENVELOPE_KEYS = {
    "Type",
    "MessageId",
    "TopicArn",
    "Subject",
    "Message",
    "Timestamp",
    "SignatureVersion",
    "Signature",
    "SigningCertURL",
    "UnsubscribeURL",
    "MessageAttributes",
}
ATTRIBUTES = {
    "severity": {"DataType": "String", "StringValue": "high"},
    "count": {"DataType": "Number", "StringValue": "3"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
}


def error(excinfo: pytest.ExceptionInfo) -> tuple[int, str, str]:
    response = excinfo.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


def raises(call, *args, **kwargs) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as excinfo:
        call(*args, **kwargs)
    return error(excinfo)


def drain(sqs, url: str, **receive) -> list[dict]:
    found = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, **receive).get("Messages"):
        found += batch
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def queue(sqs, name: str) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


@pytest.fixture
def clients(localcloud):
    return localcloud.client("sns"), localcloud.client("sqs")


def add_fault(localcloud, rules) -> tuple[int, list | dict]:
    request = urllib.request.Request(
        f"{localcloud.endpoint_url}/_localcloud/chaos/faults", data=json.dumps(rules).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


# --- without a server -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "params"),
    [
        (
            "Publish",
            {
                "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
                "Message": "m",
                "Subject": "s",
                "MessageAttributes": ATTRIBUTES,
            },
        ),
        (
            "CreateTopic",
            {
                "Name": "t",
                "Attributes": {"DisplayName": "T", "Policy": "{}"},
                "Tags": [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}],
            },
        ),
        ("Subscribe", {"TopicArn": "arn", "Protocol": "sqs", "Endpoint": "q", "ReturnSubscriptionArn": True}),
    ],
)
def test_form_parsing_inverts_botocores_query_serialiser(operation, params):
    model = load_service_model("sns").operation_model(operation)
    form = botocore.serialize.create_serializer("query").serialize_to_request(params, model)["body"]
    assert _from_form(model.input_shape, {k: str(v) for k, v in form.items()}, "") == params


# --- topics ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_topic_lifecycle_attributes_listing_and_errors(clients):
    sns, _ = clients
    arn = sns.create_topic(Name="alerts", Attributes={"DisplayName": "Alerts"})["TopicArn"]
    assert arn == "arn:aws:sns:us-east-1:000000000000:alerts"
    assert sns.create_topic(Name="alerts")["TopicArn"] == arn  # idempotent
    assert raises(sns.create_topic, Name="alerts", Attributes={"DisplayName": "Other"}) == (
        400,
        "InvalidParameter",
        "Invalid parameter: Attributes Reason: Topic already exists with different attributes",
    )
    attributes = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert attributes["TopicArn"] == arn and attributes["DisplayName"] == "Alerts"
    assert attributes["Owner"] == "000000000000" and attributes["SubscriptionsConfirmed"] == "0"
    assert json.loads(attributes["Policy"])["Statement"][0]["Resource"] == arn

    sns.set_topic_attributes(TopicArn=arn, AttributeName="DisplayName", AttributeValue="Renamed")
    assert sns.get_topic_attributes(TopicArn=arn)["Attributes"]["DisplayName"] == "Renamed"
    assert raises(sns.set_topic_attributes, TopicArn=arn, AttributeName="Colour", AttributeValue="x")[:2] == (
        400,
        "InvalidParameter",
    )
    assert raises(sns.set_topic_attributes, TopicArn=arn, AttributeName="Policy", AttributeValue="{")[:2] == (
        400,
        "InvalidParameter",
    )

    for bad in ("has space", "x" * 257, ""):
        assert raises(sns.create_topic, Name=bad)[:2] == (400, "InvalidParameter"), bad
    assert raises(sns.create_topic, Name="events.fifo")[:2] == (501, "NotImplemented")

    for number in range(101):
        sns.create_topic(Name=f"t{number:03d}")
    first = sns.list_topics()
    assert len(first["Topics"]) == 100 and "NextToken" in first
    second = sns.list_topics(NextToken=first["NextToken"])
    assert "NextToken" not in second
    listed = [t["TopicArn"] for t in first["Topics"] + second["Topics"]]
    assert len(listed) == len(set(listed)) == 102 and arn in listed

    sns.delete_topic(TopicArn=arn)
    sns.delete_topic(TopicArn=arn)  # deleting a topic that is gone succeeds, as on AWS
    assert raises(sns.get_topic_attributes, TopicArn=arn) == (404, "NotFound", "Topic does not exist")
    with pytest.raises(sns.exceptions.NotFoundException):
        sns.publish(TopicArn=arn, Message="m")
    assert raises(sns.get_topic_attributes, TopicArn="not-an-arn") == (
        400,
        "InvalidParameter",
        "Invalid parameter: TopicArn",
    )


# --- subscriptions ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_subscriptions_sqs_confirmed_email_pending_and_their_errors(clients):
    sns, sqs = clients
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    _, queue_arn = queue(sqs, "inbox")
    sub = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)["SubscriptionArn"]
    assert sub.startswith(topic + ":") and uuid.UUID(sub.rsplit(":", 1)[1])
    assert sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)["SubscriptionArn"] == sub
    assert sns.subscribe(TopicArn=topic, Protocol="email", Endpoint="ops@example.com")["SubscriptionArn"] == (
        "pending confirmation"
    )
    pending = sns.subscribe(
        TopicArn=topic, Protocol="email-json", Endpoint="bot@example.com", ReturnSubscriptionArn=True
    )["SubscriptionArn"]

    listed = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert sorted((s["Protocol"], s["SubscriptionArn"] == sub) for s in listed) == [
        ("email", False),
        ("email-json", False),
        ("sqs", True),
    ]
    assert {s["SubscriptionArn"] for s in listed if s["Protocol"] != "sqs"} == {"PendingConfirmation"}
    assert sns.list_subscriptions()["Subscriptions"] == listed
    counts = sns.get_topic_attributes(TopicArn=topic)["Attributes"]
    assert (counts["SubscriptionsConfirmed"], counts["SubscriptionsPending"]) == ("1", "2")

    attributes = sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]
    assert {k: attributes[k] for k in ("TopicArn", "Protocol", "Endpoint", "PendingConfirmation")} == {
        "TopicArn": topic,
        "Protocol": "sqs",
        "Endpoint": queue_arn,
        "PendingConfirmation": "false",
    }
    assert attributes["RawMessageDelivery"] == "false"
    assert (
        sns.get_subscription_attributes(SubscriptionArn=pending)["Attributes"]["PendingConfirmation"]
        == "true"
    )
    sns.set_subscription_attributes(
        SubscriptionArn=sub, AttributeName="RawMessageDelivery", AttributeValue="True"
    )
    assert sns.get_subscription_attributes(SubscriptionArn=sub)["Attributes"]["RawMessageDelivery"] == "true"

    assert raises(sns.subscribe, TopicArn=topic, Protocol="pigeon", Endpoint="x")[:2] == (
        400,
        "InvalidParameter",
    )
    assert raises(sns.subscribe, TopicArn=topic, Protocol="sqs", Endpoint="inbox")[2] == (
        "Invalid parameter: SQS endpoint ARN"
    )
    assert raises(sns.subscribe, TopicArn=topic, Protocol="email", Endpoint="nobody")[2] == (
        "Invalid parameter: Email address"
    )
    assert raises(
        sns.subscribe,
        TopicArn=topic,
        Protocol="email",
        Endpoint="a@b.co",
        Attributes={"RawMessageDelivery": "true"},
    )[:2] == (400, "InvalidParameter")
    assert raises(sns.subscribe, TopicArn=topic, Protocol="https", Endpoint="https://x")[:2] == (
        501,
        "NotImplemented",
    )
    assert raises(
        sns.subscribe, TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"FilterPolicy": "{}"}
    )[:2] == (501, "NotImplemented")
    assert raises(sns.subscribe, TopicArn=topic + "-gone", Protocol="sqs", Endpoint=queue_arn)[:2] == (
        404,
        "NotFound",
    )

    sns.unsubscribe(SubscriptionArn=sub)
    assert raises(sns.get_subscription_attributes, SubscriptionArn=sub) == (
        404,
        "NotFound",
        "Subscription does not exist",
    )
    assert raises(sns.unsubscribe, SubscriptionArn=sub)[:2] == (404, "NotFound")
    assert raises(sns.unsubscribe, SubscriptionArn="pending confirmation")[:2] == (400, "InvalidParameter")
    sns.delete_topic(TopicArn=topic)  # takes its subscriptions with it
    assert sns.list_subscriptions()["Subscriptions"] == []


# --- publishing -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_publish_delivers_snss_envelope_to_each_sqs_subscriber(clients):
    sns, sqs = clients
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    urls = {}
    for name in ("first", "second"):
        urls[name], queue_arn = queue(sqs, name)
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    sns.subscribe(TopicArn=topic, Protocol="email", Endpoint="ops@example.com")  # never delivered

    message_id = sns.publish(
        TopicArn=topic, Subject="Run failed", Message="run 7: gate", MessageAttributes=ATTRIBUTES
    )["MessageId"]
    for name, url in urls.items():
        (received,) = drain(sqs, url, MessageAttributeNames=["All"])
        assert "MessageAttributes" not in received  # they travel inside the envelope
        envelope = json.loads(received["Body"])
        assert set(envelope) == ENVELOPE_KEYS, name
        subscription = envelope["UnsubscribeURL"].rsplit("SubscriptionArn=", 1)[1]
        assert subscription.startswith(topic + ":")
        assert ISO_MS.fullmatch(envelope["Timestamp"])
        signed = f"Message\nrun 7: gate\nMessageId\n{message_id}\nSubject\nRun failed\n"
        signed += f"Timestamp\n{envelope['Timestamp']}\nTopicArn\n{topic}\nType\nNotification\n"
        assert envelope["Signature"] == base64.b64encode(hashlib.sha1(signed.encode()).digest()).decode()
        assert envelope["SigningCertURL"].startswith(
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-"
        )
        assert {
            k: envelope[k]
            for k in ("Type", "MessageId", "TopicArn", "Subject", "Message", "SignatureVersion")
        } == {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": topic,
            "Subject": "Run failed",
            "Message": "run 7: gate",
            "SignatureVersion": "1",
        }
        assert envelope["MessageAttributes"] == {
            "severity": {"Type": "String", "Value": "high"},
            "count": {"Type": "Number", "Value": "3"},
            "blob": {"Type": "Binary", "Value": "AAE="},
        }

    sns.publish(
        TopicArn=topic, Message=json.dumps({"default": "plain", "sqs": "for queues"}), MessageStructure="json"
    )
    for url in urls.values():
        (received,) = drain(sqs, url)
        envelope = json.loads(received["Body"])
        assert envelope["Message"] == "for queues"
        assert "Subject" not in envelope and "MessageAttributes" not in envelope


@pytest.mark.slow
def test_raw_message_delivery_sends_the_message_and_its_attributes(clients):
    sns, sqs = clients
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    url, queue_arn = queue(sqs, "raw")
    sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
    )
    sns.publish(
        TopicArn=topic, Subject="ignored when raw", Message='{"run": 7}', MessageAttributes=ATTRIBUTES
    )
    (received,) = drain(sqs, url, MessageAttributeNames=["All"])
    assert received["Body"] == '{"run": 7}'
    assert received["MessageAttributes"] == {
        "severity": {"DataType": "String", "StringValue": "high"},
        "count": {"DataType": "Number", "StringValue": "3"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    }


@pytest.mark.slow
def test_publish_refuses_bad_input_as_sns_does_and_a_gone_queue_fails_nothing(clients):
    sns, sqs = clients
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    url, queue_arn = queue(sqs, "inbox")
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    cases = [
        ({"Message": ""}, "InvalidParameter", "Invalid parameter: Empty message"),
        ({"Message": "x" * 262_145}, "InvalidParameter", "Invalid parameter: Message too long"),
        ({"Message": "m", "Subject": "two\nlines"}, "InvalidParameter", "Invalid parameter: Subject"),
        ({"Message": "m", "Subject": "s" * 101}, "InvalidParameter", "Invalid parameter: Subject"),
        (
            {"Message": "m", "MessageStructure": "json"},
            "InvalidParameter",
            "JSON message body failed to parse",
        ),
        ({"Message": '{"sqs": "x"}', "MessageStructure": "json"}, "InvalidParameter", "No default entry"),
        ({"Message": "m", "MessageGroupId": "g"}, "InvalidParameter", "not valid for this topic type"),
        (
            {"Message": "m", "MessageAttributes": {"a": {"DataType": "String", "StringValue": ""}}},
            "ParameterValueInvalid",
            "must contain non-empty message attribute value",
        ),
        (
            {"Message": "m", "MessageAttributes": {"a": {"DataType": "Number", "StringValue": "many"}}},
            "ParameterValueInvalid",
            "Could not cast message attribute 'a' value to number.",
        ),
    ]
    for params, code, message in cases:
        status, got_code, got_message = raises(sns.publish, TopicArn=topic, **params)
        assert (status, got_code) == (400, code) and message in got_message, params
    assert drain(sqs, url) == []

    sqs.delete_queue(QueueUrl=url)
    assert sns.publish(TopicArn=topic, Message="into the void")["MessageId"]  # logged and dropped


# --- durability, faults, routing ------------------------------------------------------------------------


@pytest.mark.slow
def test_topics_and_subscriptions_survive_a_restart(localcloud, clients):
    sns, sqs = clients
    topic = sns.create_topic(Name="alerts", Attributes={"DisplayName": "Alerts"})["TopicArn"]
    url, queue_arn = queue(sqs, "inbox")
    sub = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)["SubscriptionArn"]
    localcloud.restart()
    sns, sqs = localcloud.client("sns"), localcloud.client("sqs")
    assert sns.get_topic_attributes(TopicArn=topic)["Attributes"]["DisplayName"] == "Alerts"
    assert [s["SubscriptionArn"] for s in sns.list_subscriptions()["Subscriptions"]] == [sub]
    sns.publish(TopicArn=topic, Message="after the restart")
    (received,) = drain(sqs, url)
    assert json.loads(received["Body"])["Message"] == "after the restart"


@pytest.mark.slow
def test_an_injected_publish_fault_is_snss_internal_error_retried_then_raised(localcloud, clients):
    sns, sqs = clients
    down = sns.create_topic(Name="alerts")["TopicArn"]
    other = sns.create_topic(Name="other")["TopicArn"]
    url, queue_arn = queue(sqs, "inbox")
    for topic in (down, other):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    assert add_fault(localcloud, [{"service": "sns", "operation": "Publish", "error_type": "X"}])[0] == 400
    status, rules = add_fault(localcloud, [{"service": "sns", "operation": "Publish", "topic_arn": down}])
    assert status == 200 and rules[0]["error_message"] == "fault injected by localcloud"

    retrying = localcloud.cloud.client(
        "sns", config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 3})
    )
    with pytest.raises(retrying.exceptions.InternalErrorException) as excinfo:
        retrying.publish(TopicArn=down, Message="alert")
    assert error(excinfo) == (500, "InternalError", "fault injected by localcloud")
    assert excinfo.value.response["ResponseMetadata"]["RetryAttempts"] == 2  # the SDK retried, then gave up
    sns.publish(TopicArn=other, Message="unaffected")
    assert [json.loads(m["Body"])["TopicArn"] for m in drain(sqs, url)] == [other]

    with urllib.request.urlopen(
        urllib.request.Request(f"{localcloud.endpoint_url}/_localcloud/chaos/faults", method="DELETE")
    ):
        pass
    sns.publish(TopicArn=down, Message="back")
    assert [json.loads(m["Body"])["Message"] for m in drain(sqs, url)] == ["back"]


@pytest.mark.slow
def test_two_query_services_route_by_signature(localcloud, clients):
    sns, _ = clients
    assert localcloud.client("sts").get_caller_identity()["Account"] == "000000000000"
    assert sns.list_topics()["Topics"] == []
    body = b"Action=ListTopics&Version=2010-03-31"
    headers = {"Host": "127.0.0.1", "Content-Type": "application/x-www-form-urlencoded"}
    answer = exchange(localcloud.endpoint_url, request_bytes("POST", "/", headers, body))
    assert answer.status == 403 and b"<Code>MissingAuthenticationToken</Code>" in answer.body


# --- against moto -----------------------------------------------------------------------------------


def envelope_scenario(sns, sqs) -> tuple[dict, str, dict]:
    """The envelope, the raw body and the raw attributes one Publish gives two subscribers."""
    topic = sns.create_topic(Name="alerts")["TopicArn"]
    wrapped_url, wrapped_arn = queue(sqs, "wrapped")
    raw_url, raw_arn = queue(sqs, "raw")
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=wrapped_arn)
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=raw_arn, Attributes={"RawMessageDelivery": "true"})
    attributes = {k: v for k, v in ATTRIBUTES.items() if k != "blob"}
    sns.publish(TopicArn=topic, Subject="Run failed", Message="run 7", MessageAttributes=attributes)
    (wrapped,) = drain(sqs, wrapped_url)
    (raw,) = drain(sqs, raw_url, MessageAttributeNames=["All"])
    return json.loads(wrapped["Body"]), raw["Body"], raw["MessageAttributes"]


@pytest.mark.slow
def test_envelope_and_raw_delivery_match_motos(clients):
    ours = envelope_scenario(*clients)
    with mock_aws():
        theirs = envelope_scenario(
            boto3.client("sns", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        )
    (our_envelope, our_raw, our_attributes), (their_envelope, their_raw, their_attributes) = ours, theirs
    assert set(our_envelope) == set(their_envelope) == ENVELOPE_KEYS
    assert (our_raw, our_attributes) == (their_raw, their_attributes)

    def normalised(envelope: dict) -> dict:
        assert ISO_MS.fullmatch(envelope["Timestamp"]) and uuid.UUID(envelope["MessageId"])
        assert base64.b64decode(envelope["Signature"])
        assert envelope["SigningCertURL"].startswith(
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-"
        )
        assert envelope["UnsubscribeURL"].startswith(
            "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
        )
        kept = {k: envelope[k] for k in ("Type", "Subject", "Message", "MessageAttributes")}
        return {**kept, "TopicArn": re.sub(r":\d{12}:", ":ACCOUNT:", envelope["TopicArn"])}

    assert normalised(our_envelope) == normalised(their_envelope)
    # moto always signs with SHA256 (version 2); SNS's default, and localcloud's, is version 1.
    assert (our_envelope["SignatureVersion"], their_envelope["SignatureVersion"]) == ("1", "2")
