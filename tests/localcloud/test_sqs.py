"""localcloud SQS driven by real boto3, aiobotocore (the triggerer's client) and the amazon provider's
SqsHook: every operation the pipeline uses, errors as boto3 raises them, long polls, visibility,
dead-letter redrive, and messages and in-flight state surviving a restart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from localcloud.sqs import validation
from localcloud.wire import ServiceError
from tests.fixtures.localcloud import use_as_aws_default
from tests.fixtures.raw_http import exchange, request_bytes, signed

# The MD5OfMessageAttributes AWS (and moto) give for exactly these two attributes.
ATTRIBUTES = {
    "a": {"DataType": "String", "StringValue": "v"},
    "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
}
ATTRIBUTES_MD5 = "f3eef722b9e535eb41b93a467449512d"


def code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture
def sqs(localcloud):
    return localcloud.client("sqs")


def counts(sqs, url: str) -> tuple[int, int, int]:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return tuple(int(found[name]) for name in names)


def arn_of(sqs, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


# --- without a server -----------------------------------------------------------------------------


def test_md5_of_attributes_is_aws_digest():
    assert validation.md5_of_attributes(ATTRIBUTES) == ATTRIBUTES_MD5
    assert validation.md5_of_attributes({}) is None
    assert validation.md5_of_body("hi") == hashlib.md5(b"hi").hexdigest()  # noqa: S324


def test_receipt_handles_round_trip_and_refuse_forgeries():
    handle = validation.make_receipt_handle("q", "m-1", "n0nce")
    assert validation.parse_receipt_handle(handle) == ("q", "m-1", "n0nce")
    three_parts = base64.b64encode(b"localcloud\nq\nm-1").decode()
    for bad in ("garbage", "", "bG9jYWxjbG91ZA==", three_parts, handle + "!"):
        with pytest.raises(ServiceError) as excinfo:
            validation.parse_receipt_handle(bad)
        assert excinfo.value.code == "ReceiptHandleIsInvalid"


# --- queues -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_queue_lifecycle_urls_listing_and_errors(localcloud, sqs):
    url = sqs.create_queue(QueueName="events")["QueueUrl"]
    assert url == f"{localcloud.endpoint_url}/000000000000/events"
    # Same name, same (or default) attribute values: the same queue; a different value: an error.
    assert sqs.create_queue(QueueName="events", Attributes={"VisibilityTimeout": "30"})["QueueUrl"] == url
    with pytest.raises(sqs.exceptions.QueueNameExists) as excinfo:
        sqs.create_queue(QueueName="events", Attributes={"VisibilityTimeout": "60"})
    assert code(excinfo) == "QueueAlreadyExists" and "VisibilityTimeout" in str(excinfo.value)
    with pytest.raises(sqs.exceptions.UnsupportedOperation) as excinfo:
        sqs.create_queue(QueueName="events.fifo", Attributes={"FifoQueue": "true"})
    assert "does not implement FIFO" in str(excinfo.value)
    with pytest.raises(ClientError) as excinfo:
        sqs.create_queue(QueueName="has space")
    assert code(excinfo) == "InvalidParameterValue"

    assert sqs.get_queue_url(QueueName="events")["QueueUrl"] == url
    for name in ("events-dlq", "alerts", "events-2"):
        sqs.create_queue(QueueName=name)
    assert [u.rsplit("/", 1)[1] for u in sqs.list_queues(QueueNamePrefix="events")["QueueUrls"]] == [
        "events",
        "events-2",
        "events-dlq",
    ]
    first = sqs.list_queues(MaxResults=2)
    second = sqs.list_queues(MaxResults=2, NextToken=first["NextToken"])
    names = [u.rsplit("/", 1)[1] for u in first["QueueUrls"] + second["QueueUrls"]]
    assert names == ["alerts", "events", "events-2", "events-dlq"] and "NextToken" not in second
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix="nothing")

    sqs.delete_queue(QueueUrl=url)
    for call in (
        lambda: sqs.get_queue_url(QueueName="events"),
        lambda: sqs.send_message(QueueUrl=url, MessageBody="x"),
        lambda: sqs.delete_queue(QueueUrl=url),
    ):
        with pytest.raises(sqs.exceptions.QueueDoesNotExist) as excinfo:
            call()
        assert code(excinfo) == "AWS.SimpleQueueService.NonExistentQueue"


@pytest.mark.slow
def test_queue_attributes_get_set_and_validate(sqs):
    url = sqs.create_queue(QueueName="q", Attributes={"DelaySeconds": "2", "MaximumMessageSize": "2048"})[
        "QueueUrl"
    ]
    found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert found["QueueArn"] == "arn:aws:sqs:us-east-1:000000000000:q"
    assert {key: found[key] for key in ("DelaySeconds", "MaximumMessageSize", "VisibilityTimeout")} == {
        "DelaySeconds": "2",
        "MaximumMessageSize": "2048",
        "VisibilityTimeout": "30",
    }
    assert found["MessageRetentionPeriod"] == "345600" and found["ReceiveMessageWaitTimeSeconds"] == "0"
    assert found["ApproximateNumberOfMessages"] == "0" and int(found["CreatedTimestamp"]) > 1_600_000_000
    assert "RedrivePolicy" not in found and "Policy" not in found
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"] == {
        "VisibilityTimeout": "30"
    }
    assert "Attributes" not in sqs.get_queue_attributes(QueueUrl=url)

    policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:*"}]})
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "5", "Policy": policy})
    found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout", "Policy"])
    assert found["Attributes"] == {"VisibilityTimeout": "5", "Policy": policy}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": ""})
    assert "Policy" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    for bad in ({"VisibilityTimeout": "43201"}, {"DelaySeconds": "-1"}, {"MaximumMessageSize": "x"}):
        with pytest.raises(sqs.exceptions.InvalidAttributeValue) as excinfo:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=bad)
        assert next(iter(bad)) in str(excinfo.value)
    for bad in ({"Bogus": "1"}, {"QueueArn": "x"}):
        with pytest.raises(sqs.exceptions.InvalidAttributeName):
            sqs.set_queue_attributes(QueueUrl=url, Attributes=bad)
    with pytest.raises(sqs.exceptions.InvalidAttributeName):
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Bogus"])
    with pytest.raises(sqs.exceptions.UnsupportedOperation):
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"FifoQueue": "true"})
    # Nothing of a refused change was applied.
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"] == {
        "VisibilityTimeout": "5"
    }


@pytest.mark.slow
def test_tags(sqs):
    url = sqs.create_queue(QueueName="tagged", tags={"team": "ml"})["QueueUrl"]
    sqs.tag_queue(QueueUrl=url, Tags={"env": "dev"})
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "ml", "env": "dev"}
    sqs.untag_queue(QueueUrl=url, TagKeys=["team", "env"])
    assert "Tags" not in sqs.list_queue_tags(QueueUrl=url)


# --- messages ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_send_receive_delete_with_attributes_and_md5s(sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody="hi ✓", MessageAttributes=ATTRIBUTES)
    assert sent["MD5OfMessageBody"] == hashlib.md5("hi ✓".encode()).hexdigest()  # noqa: S324
    assert sent["MD5OfMessageAttributes"] == ATTRIBUTES_MD5
    assert "MD5OfMessageAttributes" not in sqs.send_message(QueueUrl=url, MessageBody="plain")

    before = int(time.time() * 1000)
    got = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )["Messages"]
    assert [m["Body"] for m in got] == ["hi ✓", "plain"]
    first = got[0]
    assert first["MessageId"] == sent["MessageId"] and first["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert first["MessageAttributes"] == ATTRIBUTES and first["MD5OfMessageAttributes"] == ATTRIBUTES_MD5
    system = first["Attributes"]
    assert system["ApproximateReceiveCount"] == "1" and system["SenderId"] == "000000000000"
    assert int(system["SentTimestamp"]) <= int(system["ApproximateFirstReceiveTimestamp"])
    assert abs(int(system["ApproximateFirstReceiveTimestamp"]) - before) < 5000
    assert "MessageAttributes" not in got[1] and "MD5OfMessageAttributes" not in got[1]
    assert counts(sqs, url) == (0, 2, 0)
    for message in got:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert counts(sqs, url) == (0, 0, 0)
    assert "Messages" not in sqs.receive_message(QueueUrl=url)


@pytest.mark.slow
def test_receive_selects_attributes_by_name_prefix_or_none(sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    attributes = {
        "trace.id": {"DataType": "String", "StringValue": "t"},
        "trace.span": {"DataType": "Number", "StringValue": "12.5"},
        "kind": {"DataType": "String.custom", "StringValue": "batch"},
    }
    sqs.send_message(QueueUrl=url, MessageBody="m", MessageAttributes=attributes)

    def received(**kwargs):
        message = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, **kwargs)["Messages"][0]
        return message.get("MessageAttributes", {}), message.get("MD5OfMessageAttributes"), message

    assert received()[0] == {} and received()[1] is None and "Attributes" not in received()[2]
    only, md5, _ = received(MessageAttributeNames=["kind"])
    assert only == {"kind": attributes["kind"]} and md5 == validation.md5_of_attributes(only)
    assert set(received(MessageAttributeNames=["trace.*"])[0]) == {"trace.id", "trace.span"}
    assert received(MessageAttributeNames=["All"])[0] == attributes
    system = received(
        AttributeNames=["ApproximateReceiveCount"], MessageSystemAttributeNames=["SentTimestamp"]
    )
    assert set(system[2]["Attributes"]) == {"ApproximateReceiveCount", "SentTimestamp"}
    assert system[2]["Attributes"]["ApproximateReceiveCount"] == "7"  # the seventh receive


@pytest.mark.slow
def test_bad_messages_and_parameters_get_aws_errors_and_change_nothing(sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    small = sqs.create_queue(QueueName="small", Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]

    def error(call) -> tuple[str, str]:
        with pytest.raises(ClientError) as excinfo:
            call()
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        return code(excinfo), str(excinfo.value)

    assert (
        error(lambda: sqs.send_message(QueueUrl=url, MessageBody="x" * 262_145))[0] == "InvalidParameterValue"
    )
    sqs.send_message(QueueUrl=url, MessageBody="x" * 262_144)  # the limit itself is fine
    found = error(lambda: sqs.send_message(QueueUrl=small, MessageBody="x" * 1025))
    assert found[0] == "InvalidParameterValue" and "1024 bytes" in found[1]
    # Attributes count towards the size: name + type + value.
    big_attribute = {"n": {"DataType": "String", "StringValue": "x" * 1000}}
    assert error(
        lambda: sqs.send_message(QueueUrl=small, MessageBody="y" * 20, MessageAttributes=big_attribute)
    )
    assert error(lambda: sqs.send_message(QueueUrl=url, MessageBody=""))[0] == "MissingParameter"
    assert error(lambda: sqs.send_message(QueueUrl=url, MessageBody="a\x00b"))[0] == "InvalidMessageContents"
    assert error(lambda: sqs.send_message(QueueUrl=url, MessageBody="m", DelaySeconds=901))[0] == (
        "InvalidParameterValue"
    )
    eleven = {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)}
    bad_attributes = [
        eleven,
        {"a b": {"DataType": "String", "StringValue": "v"}},
        {"AWS.x": {"DataType": "String", "StringValue": "v"}},
        {"a": {"DataType": "Integer", "StringValue": "1"}},
        {"a": {"DataType": "Number", "StringValue": "one"}},
        {"a": {"DataType": "String", "StringValue": ""}},
        {"a": {"DataType": "Binary", "StringValue": "v"}},
    ]
    for attributes in bad_attributes:
        found = error(
            lambda a=attributes: sqs.send_message(QueueUrl=url, MessageBody="m", MessageAttributes=a)
        )
        assert found[0] == "InvalidParameterValue", attributes
    for kwargs in ({"MaxNumberOfMessages": 11}, {"MaxNumberOfMessages": 0}, {"WaitTimeSeconds": 21}):
        found = error(lambda k=kwargs: sqs.receive_message(QueueUrl=url, **k))
        assert found[0] == "InvalidParameterValue" and next(iter(kwargs)) in found[1]
    assert error(lambda: sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["Nope"]))[0] == (
        "InvalidAttributeName"
    )
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
    assert error(lambda: sqs.get_queue_attributes(QueueUrl="no-such-address"))[0] == "InvalidAddress"
    assert counts(sqs, url) == (1, 0, 0)  # only the 262,144-byte message


@pytest.mark.slow
def test_malformed_requests_are_400_not_5xx(localcloud):
    def post(target: str, body: bytes):
        headers = {
            "Host": "127.0.0.1",
            "Authorization": signed("sqs"),
            "X-Amz-Target": target,
            "Content-Type": "application/x-amz-json-1.0",
        }
        return exchange(localcloud.endpoint_url, request_bytes("POST", "/", headers, body))

    for target, body in (
        ("AmazonSQS.SendMessage", b"{not json"),
        ("AmazonSQS.SendMessage", b'{"QueueUrl": "http://x/000000000000/q"}'),
        (
            "AmazonSQS.ReceiveMessage",
            b'{"QueueUrl": "http://x/000000000000/q", "MaxNumberOfMessages": "ten"}',
        ),
        ("AmazonSQS.Nope", b"{}"),
    ):
        answer = post(target, body)
        assert answer.status == 400, (target, body, answer.body)
        assert answer.headers["x-amzn-query-error"].endswith(";Sender")
    answer = post("AmazonSQS.SendMessage", b'{"QueueUrl": "http://x/000000000000/q"}')
    assert json.loads(answer.body)["__type"] == "MissingParameter" and b"MessageBody" in answer.body


@pytest.mark.slow
def test_batches_fail_per_entry_or_whole_as_aws(sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    result = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "ok-1", "MessageBody": "one", "MessageAttributes": ATTRIBUTES},
            {"Id": "late", "MessageBody": "two", "DelaySeconds": 1000},
            {"Id": "ok_2", "MessageBody": "three"},
        ],
    )
    assert [entry["Id"] for entry in result["Successful"]] == ["ok-1", "ok_2"]
    assert result["Successful"][0]["MD5OfMessageAttributes"] == ATTRIBUTES_MD5
    assert result["Successful"][1]["MD5OfMessageBody"] == hashlib.md5(b"three").hexdigest()  # noqa: S324
    [failed] = result["Failed"]
    assert failed["Id"] == "late" and failed["Code"] == "InvalidParameterValue" and failed["SenderFault"]

    whole_batch_errors = {
        "EmptyBatchRequest": [],
        "TooManyEntriesInBatchRequest": [{"Id": str(i), "MessageBody": "m"} for i in range(11)],
        "BatchEntryIdsNotDistinct": [{"Id": "a", "MessageBody": "m"}, {"Id": "a", "MessageBody": "n"}],
        "InvalidBatchEntryId": [{"Id": "a b", "MessageBody": "m"}],
        "BatchRequestTooLong": [{"Id": str(i), "MessageBody": "x" * 100_000} for i in range(3)],
    }
    for exception, entries in whole_batch_errors.items():
        with pytest.raises(getattr(sqs.exceptions, exception)) as excinfo:
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert code(excinfo).startswith("AWS.SimpleQueueService.")
    assert counts(sqs, url) == (2, 0, 0)

    handles = [
        m["ReceiptHandle"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    ]
    changed = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "ReceiptHandle": handles[0], "VisibilityTimeout": 0},
            {"Id": "b", "ReceiptHandle": "junk", "VisibilityTimeout": 0},
        ],
    )
    assert [e["Id"] for e in changed["Successful"]] == ["a"] and changed["Failed"][0]["Id"] == "b"
    assert counts(sqs, url) == (1, 1, 0)
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "x", "ReceiptHandle": handles[1]}, {"Id": "y", "ReceiptHandle": "junk"}],
    )
    assert [e["Id"] for e in deleted["Successful"]] == ["x"]
    assert deleted["Failed"][0]["Code"] == "ReceiptHandleIsInvalid"
    assert counts(sqs, url) == (1, 0, 0)
    with pytest.raises(sqs.exceptions.EmptyBatchRequest):
        sqs.delete_message_batch(QueueUrl=url, Entries=[])


@pytest.mark.slow
def test_visibility_timeout_stale_handles_and_changes(sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    first = sqs.receive_message(QueueUrl=url, VisibilityTimeout=2)["Messages"][0]
    assert "Messages" not in sqs.receive_message(QueueUrl=url) and counts(sqs, url) == (0, 1, 0)
    time.sleep(2.1)
    assert counts(sqs, url) == (1, 0, 0)
    second = sqs.receive_message(QueueUrl=url, VisibilityTimeout=30, AttributeNames=["All"])["Messages"][0]
    assert second["MessageId"] == first["MessageId"] and second["ReceiptHandle"] != first["ReceiptHandle"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"

    # The first handle is stale: deleting by it succeeds and deletes nothing (AWS's documented rule),
    # changing visibility by it is refused.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    assert counts(sqs, url) == (0, 1, 0)
    with pytest.raises(ClientError) as excinfo:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0)
    assert code(excinfo) == "InvalidParameterValue" and "ReceiptHandle" in str(excinfo.value)
    with pytest.raises(ClientError) as excinfo:
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=43_201
        )
    assert code(excinfo) == "InvalidParameterValue"

    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=0)
    third = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0)["Messages"][0]
    assert third["MessageId"] == first["MessageId"]
    with pytest.raises(sqs.exceptions.MessageNotInflight):  # visibility 0: it was never hidden
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=third["ReceiptHandle"], VisibilityTimeout=5)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=third["ReceiptHandle"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=third["ReceiptHandle"])  # gone already: still fine
    assert counts(sqs, url) == (0, 0, 0)


@pytest.mark.slow
def test_delay_seconds_per_message_and_per_queue(sqs):
    url = sqs.create_queue(QueueName="q", Attributes={"DelaySeconds": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="queue default")
    sqs.send_message(QueueUrl=url, MessageBody="now", DelaySeconds=0)
    assert counts(sqs, url) == (1, 0, 1)
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == [
        "now"
    ]
    time.sleep(1.1)
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url)["Messages"]] == ["queue default"]


@pytest.mark.slow
def test_purge_and_retention(localcloud, sqs):
    url = sqs.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(3)])
    sqs.receive_message(QueueUrl=url)
    sqs.purge_queue(QueueUrl=url)
    assert counts(sqs, url) == (0, 0, 0)

    sqs.send_message(QueueUrl=url, MessageBody="old")
    sqs.send_message(QueueUrl=url, MessageBody="new")
    # 61 s pass for the first message only.
    localcloud.cloud.store.execute("UPDATE sqs_messages SET sent_ms = sent_ms - 61000 WHERE body = 'old'")
    assert counts(sqs, url) == (1, 0, 0)
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == [
        "new"
    ]


@pytest.mark.slow
def test_dead_letter_redrive_after_max_receive_count(sqs):
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    policy = {"deadLetterTargetArn": arn_of(sqs, dlq), "maxReceiveCount": "2"}
    url = sqs.create_queue(QueueName="events", Attributes={"RedrivePolicy": json.dumps(policy)})["QueueUrl"]
    stored = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert stored == {"deadLetterTargetArn": policy["deadLetterTargetArn"], "maxReceiveCount": 2}
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == [url]

    sent = sqs.send_message(QueueUrl=url, MessageBody="poison")["MessageId"]
    for receive in (1, 2):
        message = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, AttributeNames=["All"])["Messages"][
            0
        ]
        assert message["Attributes"]["ApproximateReceiveCount"] == str(receive)
    # Received maxReceiveCount times and not deleted: the next receive moves it instead of returning it.
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    assert counts(sqs, url) == (0, 0, 0) and counts(sqs, dlq) == (1, 0, 0)
    moved = sqs.receive_message(QueueUrl=dlq, MessageSystemAttributeNames=["All"])["Messages"][0]
    assert moved["MessageId"] == sent and moved["Body"] == "poison"
    assert moved["Attributes"]["DeadLetterQueueSourceArn"] == arn_of(sqs, url)

    for bad in (
        {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:missing", "maxReceiveCount": 1},
        {"deadLetterTargetArn": arn_of(sqs, dlq), "maxReceiveCount": 0},
        {"deadLetterTargetArn": arn_of(sqs, dlq)},
    ):
        with pytest.raises(ClientError) as excinfo:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": json.dumps(bad)})
        assert code(excinfo) == "InvalidParameterValue" and "RedrivePolicy" in str(excinfo.value)
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    assert "queueUrls" in sqs.list_dead_letter_source_queues(QueueUrl=dlq)
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq)["queueUrls"] == []


@pytest.mark.slow
def test_queue_url_from_another_host_names_the_same_queue(sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    elsewhere = "https://sqs.us-east-1.amazonaws.com/000000000000/q"
    sqs.send_message(QueueUrl=elsewhere, MessageBody="m")
    assert counts(sqs, url) == (1, 0, 0)
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):  # another account's queue
        sqs.send_message(QueueUrl="https://sqs.us-east-1.amazonaws.com/123456789012/q", MessageBody="m")


# --- long polls -------------------------------------------------------------------------------------


def _in_thread(call):
    result: dict = {}

    def run():
        started = time.monotonic()
        try:
            result["value"] = call()
        except Exception as error:  # reported by the test that reads it
            result["error"] = error
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.slow
def test_long_poll_returns_as_soon_as_a_message_is_sent(localcloud, sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    waiter = localcloud.client("sqs")
    thread, result = _in_thread(lambda: waiter.receive_message(QueueUrl=url, WaitTimeSeconds=20))
    time.sleep(0.5)
    assert thread.is_alive()  # it waits rather than answering empty
    sent_at = time.monotonic()
    sqs.send_message(QueueUrl=url, MessageBody="wake up")
    thread.join(5)
    assert result["value"]["Messages"][0]["Body"] == "wake up"
    assert time.monotonic() - sent_at < 2.0

    # The queue's own ReceiveMessageWaitTimeSeconds makes a plain receive a long poll; it ends empty.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"ReceiveMessageWaitTimeSeconds": "1"})
    started = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    assert 0.9 < time.monotonic() - started < 5


@pytest.mark.slow
def test_long_poll_wakes_when_an_in_flight_message_becomes_visible(localcloud, sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    sqs.receive_message(QueueUrl=url, VisibilityTimeout=1)
    started = time.monotonic()
    again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20, AttributeNames=["ApproximateReceiveCount"])
    assert again["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == "2"
    assert 0.8 < time.monotonic() - started < 5


@pytest.mark.slow
def test_many_long_polls_neither_spin_nor_block_other_clients(localcloud, sqs):
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    waiters = localcloud.client("sqs", config=BotoConfig(max_pool_connections=25))
    polls = [
        _in_thread(lambda: waiters.receive_message(QueueUrl=url, WaitTimeSeconds=20, VisibilityTimeout=60))
        for _ in range(20)
    ]
    time.sleep(0.5)
    cpu, started = time.process_time(), time.monotonic()
    time.sleep(1.0)
    assert time.process_time() - cpu < 0.5  # 20 waiters, one idle second: no busy loop
    assert all(thread.is_alive() for thread, _ in polls)
    quick = time.monotonic()
    sqs.list_queues()
    sqs.create_queue(QueueName="other")
    assert time.monotonic() - quick < 1.0  # other requests are served meanwhile

    for start in range(0, 20, 10):
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(start, start + 10)]
        )
    for thread, _ in polls:
        thread.join(5)
    bodies = sorted(m["Body"] for _, result in polls for m in result["value"].get("Messages", []))
    assert bodies == sorted(str(i) for i in range(20))
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_stop_wakes_long_polls_promptly(localcloud):
    sqs = localcloud.client("sqs", config=BotoConfig(max_pool_connections=10))
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    polls = [_in_thread(lambda: sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20)) for _ in range(5)]
    time.sleep(0.5)
    started = time.monotonic()
    localcloud.stop()
    assert time.monotonic() - started < 3
    for thread, _ in polls:
        thread.join(3)
        assert not thread.is_alive()
    localcloud.restart()  # the fixture stops it again


# --- durability -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_queues_messages_and_in_flight_state_survive_a_restart(localcloud):
    sqs = localcloud.client("sqs")
    url = sqs.create_queue(QueueName="q", Attributes={"VisibilityTimeout": "45"}, tags={"k": "v"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="kept", MessageAttributes=ATTRIBUTES)
    sqs.send_message(QueueUrl=url, MessageBody="in flight long")
    sqs.send_message(QueueUrl=url, MessageBody="in flight short")
    held = {}
    for body, timeout in (("kept", 0), ("in flight long", 60), ("in flight short", 2)):
        while body not in held:  # receive until this body comes up (order is best effort)
            message = sqs.receive_message(QueueUrl=url, VisibilityTimeout=timeout)["Messages"][0]
            held[message["Body"]] = message
            if message["Body"] != body:
                sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
                del held[message["Body"]]
    assert counts(sqs, url) == (1, 2, 0)

    localcloud.restart()
    sqs = localcloud.client("sqs")
    assert sqs.get_queue_url(QueueName="q")["QueueUrl"] == url
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"] == {
        "VisibilityTimeout": "45"
    }
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"k": "v"}
    assert counts(sqs, url)[1] >= 1  # the 60 s one at least is still in flight
    time.sleep(2.1)
    assert counts(sqs, url) == (2, 1, 0)  # the 2 s one came back, across the restart
    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
    )["Messages"]
    by_body = {m["Body"]: m for m in got}
    assert set(by_body) == {"kept", "in flight short"}
    assert by_body["kept"]["MessageAttributes"] == ATTRIBUTES
    assert by_body["in flight short"]["Attributes"]["ApproximateReceiveCount"] == "2"
    # A receipt handle from before the restart still deletes its message.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=held["in flight long"]["ReceiptHandle"])
    assert counts(sqs, url) == (0, 2, 0)


# --- in-process API and other clients ---------------------------------------------------------------


@pytest.mark.slow
def test_in_process_deliver_and_queue_exists(localcloud, sqs):
    url = sqs.create_queue(QueueName="notifications")["QueueUrl"]
    arn = arn_of(sqs, url)
    backend = localcloud.cloud.sqs
    assert backend.queue_exists(arn) and not backend.queue_exists(arn + "-missing")
    assert not backend.queue_exists("not an arn")
    message_id = backend.deliver(
        arn, '{"Records": []}', {"source": {"DataType": "String", "StringValue": "s3"}}
    )
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, MessageAttributeNames=["All"])["Messages"][0]
    assert got["MessageId"] == message_id and got["Body"] == '{"Records": []}'
    assert got["MessageAttributes"]["source"]["StringValue"] == "s3"
    with pytest.raises(ServiceError) as excinfo:
        backend.deliver(arn + "-missing", "x")
    assert excinfo.value.code == "AWS.SimpleQueueService.NonExistentQueue"


@pytest.mark.slow
def test_aiobotocore_sends_long_polls_and_deletes_in_batch(localcloud, sqs):
    import aiobotocore.session

    url = sqs.create_queue(QueueName="q")["QueueUrl"]

    async def scenario():
        session = aiobotocore.session.get_session()
        async with session.create_client(
            "sqs",
            endpoint_url=localcloud.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        ) as client:
            poll = asyncio.create_task(
                client.receive_message(QueueUrl=url, WaitTimeSeconds=20, MaxNumberOfMessages=10)
            )
            await asyncio.sleep(0.3)
            assert not poll.done()
            sent = await client.send_message(QueueUrl=url, MessageBody="async", MessageAttributes=ATTRIBUTES)
            assert sent["MD5OfMessageAttributes"] == ATTRIBUTES_MD5
            received = await asyncio.wait_for(poll, 5)
            deleted = await client.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": "0", "ReceiptHandle": m["ReceiptHandle"]} for m in received["Messages"]],
            )
            with pytest.raises(ClientError) as excinfo:
                await client.get_queue_url(QueueName="missing")
            return received, deleted, excinfo.value.response["Error"]["Code"]

    received, deleted, missing = asyncio.run(scenario())
    assert [m["Body"] for m in received["Messages"]] == ["async"]
    assert [e["Id"] for e in deleted["Successful"]] == ["0"] and deleted["Failed"] == []
    assert missing == "AWS.SimpleQueueService.NonExistentQueue"
    assert counts(sqs, url) == (0, 0, 0)


@pytest.mark.slow
def test_airflow_sqs_hook_through_a_connection(localcloud, monkeypatch):
    from airflow.providers.amazon.aws.hooks.sqs import SqsHook

    use_as_aws_default(monkeypatch, localcloud.endpoint_url, "us-east-1")
    hook = SqsHook(aws_conn_id="aws_default")
    url = hook.create_queue("hooked")["QueueUrl"]
    hook.send_message(
        url, "from the hook", message_attributes={"k": {"DataType": "String", "StringValue": "v"}}
    )
    got = hook.conn.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"][0]
    assert got["Body"] == "from the hook" and got["MessageAttributes"]["k"]["StringValue"] == "v"
