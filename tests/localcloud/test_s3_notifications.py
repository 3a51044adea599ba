"""S3 bucket notifications to SQS, through boto3: the configuration round trip and S3's refusals, the
s3:TestEvent, one event shaped as S3's per matching write (Put, Copy, multipart, Delete) and none for
others, nothing for a write that failed, a deleted queue never failing a write, durability across a
restart, and the event compared key by key with moto's S3→SQS notification."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from localcloud.s3.notifications import _check_no_overlap, _matches

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
MiB = 1024 * 1024
# What S3's records carry (the notification-content-structure page) that moto 5.2.5's do not.
NOT_IN_MOTO = {
    "userIdentity",
    "userIdentity.principalId",
    "requestParameters",
    "requestParameters.sourceIPAddress",
    "responseElements",
    "responseElements.x-amz-request-id",
    "responseElements.x-amz-id-2",
    "s3.bucket.ownerIdentity",
    "s3.bucket.ownerIdentity.principalId",
    "s3.object.sequencer",
}


def error(excinfo: pytest.ExceptionInfo) -> tuple[int, str, str]:
    response = excinfo.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


def drain(sqs, url: str) -> list[dict]:
    """Every message now in the queue, parsed (delivery is done by the time the write answers)."""
    found = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        found += [json.loads(message["Body"]) for message in batch]
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
        )
    return found


def queue(sqs, name: str) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def config(arn: str, events: list[str], prefix: str | None = None, suffix: str | None = None, **extra):
    entry = {"QueueArn": arn, "Events": events, **extra}
    rules = [{"Name": n, "Value": v} for n, v in (("prefix", prefix), ("suffix", suffix)) if v is not None]
    if rules:
        entry["Filter"] = {"Key": {"FilterRules": rules}}
    return entry


@pytest.fixture
def lake(localcloud):
    """A bucket and a queue; the configuration is each test's."""
    s3, sqs = localcloud.client("s3"), localcloud.client("sqs")
    s3.create_bucket(Bucket="lake")
    url, arn = queue(sqs, "events")
    return s3, sqs, url, arn


def put_config(s3, *entries) -> None:
    s3.put_bucket_notification_configuration(
        Bucket="lake", NotificationConfiguration={"QueueConfigurations": list(entries)}
    )


def key_paths(document: dict, prefix: str = "") -> set[str]:
    paths = set()
    for name, value in document.items():
        path = f"{prefix}{name}"
        paths.add(path)
        if isinstance(value, dict):
            paths |= key_paths(value, path + ".")
    return paths


# --- without a server -----------------------------------------------------------------------------


def test_matching_is_event_family_wildcard_prefix_and_suffix():
    entry = {
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {
            "Key": {"FilterRules": [{"Name": "Prefix", "Value": "in/"}, {"Name": "Suffix", "Value": ".npz"}]}
        },
    }
    assert _matches(entry, "ObjectCreated:Put", "in/a.npz")
    assert _matches(entry, "ObjectCreated:CompleteMultipartUpload", "in/x/y.npz")
    assert not _matches(entry, "ObjectRemoved:Delete", "in/a.npz")
    assert not _matches(entry, "ObjectCreated:Put", "out/a.npz")
    assert not _matches(entry, "ObjectCreated:Put", "in/a.npz.tmp")
    assert _matches({"Events": ["s3:ObjectRemoved:Delete"]}, "ObjectRemoved:Delete", "anything")
    assert not _matches({"Events": ["s3:ObjectCreated:Copy"]}, "ObjectCreated:Put", "k")


def test_overlap_needs_a_shared_event_and_nested_prefixes_and_suffixes():
    def entry(events, prefix="", suffix=""):
        rules = [{"Name": "Prefix", "Value": prefix}, {"Name": "Suffix", "Value": suffix}]
        return {"Events": events, "Filter": {"Key": {"FilterRules": rules}}}

    _check_no_overlap([entry(["s3:ObjectCreated:*"], "a/"), entry(["s3:ObjectCreated:*"], "b/")])
    _check_no_overlap([entry(["s3:ObjectCreated:*"], "a/"), entry(["s3:ObjectRemoved:*"], "a/")])
    _check_no_overlap([entry(["s3:ObjectCreated:Put"]), entry(["s3:ObjectCreated:Copy"])])
    _check_no_overlap(
        [entry(["s3:ObjectCreated:*"], suffix=".a"), entry(["s3:ObjectCreated:*"], suffix=".b")]
    )
    for second in (
        entry(["s3:ObjectCreated:Put"], "a/b/"),
        entry(["s3:ObjectCreated:*"]),
        entry(["s3:ObjectCreated:*"], "a/", ".npz"),
    ):
        with pytest.raises(Exception, match="Configurations overlap"):
            _check_no_overlap([entry(["s3:ObjectCreated:*"], "a/"), second])


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.slow
def test_configuration_round_trip_and_replacement(lake):
    s3, sqs, url, arn = lake
    assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket="lake")
    put_config(
        s3,
        config(arn, ["s3:ObjectCreated:*"], prefix="in/", suffix=".npz", Id="new-batches"),
        config(arn, ["s3:ObjectRemoved:Delete"]),
    )
    got = s3.get_bucket_notification_configuration(Bucket="lake")["QueueConfigurations"]
    assert got[0] == {
        "Id": "new-batches",
        "QueueArn": arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {
            "Key": {"FilterRules": [{"Name": "Prefix", "Value": "in/"}, {"Name": "Suffix", "Value": ".npz"}]}
        },
    }
    assert got[1]["Events"] == ["s3:ObjectRemoved:Delete"] and got[1]["Id"]  # S3 names it when you do not
    assert "Filter" not in got[1]

    put_config(s3)  # an empty configuration turns notifications off
    assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket="lake")
    drain(sqs, url)
    s3.put_object(Bucket="lake", Key="in/a.npz", Body=b"x")
    assert drain(sqs, url) == []


@pytest.mark.slow
def test_s3_refusals_are_400_invalid_argument_naming_what_was_wrong(lake):
    s3, sqs, url, arn = lake
    missing = arn.rsplit(":", 1)[0] + ":no-such-queue"
    cases = [
        (
            [config(missing, ["s3:ObjectCreated:*"])],
            "Unable to validate the following destination configurations",
        ),
        ([config(arn, ["s3:ObjectCreated:Delete"])], "The event is not supported for notifications"),
        ([config("arn:aws:sqs:events", ["s3:ObjectCreated:*"])], "The ARN is not well formed"),
        ([config(arn.replace("us-east-1", "eu-west-1"), ["s3:ObjectCreated:*"])], "region is not valid"),
        (
            [
                {
                    **config(arn, ["s3:ObjectCreated:*"]),
                    "Filter": {"Key": {"FilterRules": [{"Name": "middle", "Value": "x"}]}},
                }
            ],
            "filter rule name must be either prefix or suffix",
        ),
        (
            [
                config(arn, ["s3:ObjectCreated:*"], prefix="in/"),
                config(arn, ["s3:ObjectCreated:Put"], prefix="in/x/"),
            ],
            "Configurations overlap",
        ),
        (
            [config(arn, ["s3:ObjectCreated:Put"], Id="a"), config(arn, ["s3:ObjectRemoved:*"], Id="a")],
            "unique",
        ),
    ]
    for entries, message in cases:
        with pytest.raises(ClientError) as excinfo:
            put_config(s3, *entries)
        status, code, text = error(excinfo)
        assert (status, code) == (400, "InvalidArgument") and message in text, (entries, text)
    with pytest.raises(ClientError) as excinfo:
        put_config(s3, config(missing, ["s3:ObjectCreated:*"]))
    assert excinfo.value.response["Error"]["ArgumentName1"] == missing

    assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket="lake")
    assert drain(sqs, url) == []  # a refused configuration sends no test event

    with pytest.raises(ClientError) as excinfo:
        s3.put_bucket_notification_configuration(
            Bucket="lake",
            NotificationConfiguration={
                "TopicConfigurations": [
                    {"TopicArn": "arn:aws:sns:us-east-1:000000000000:t", "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )
    status, code, text = error(excinfo)
    assert (status, code) == (501, "NotImplemented") and "TopicConfigurations" in text
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.get_bucket_notification_configuration(Bucket="nope")

    # SkipDestinationValidation stores a configuration naming a queue that does not exist yet.
    s3.put_bucket_notification_configuration(
        Bucket="lake",
        NotificationConfiguration={"QueueConfigurations": [config(missing, ["s3:ObjectCreated:*"])]},
        SkipDestinationValidation=True,
    )
    assert (
        s3.get_bucket_notification_configuration(Bucket="lake")["QueueConfigurations"][0]["QueueArn"]
        == missing
    )


@pytest.mark.slow
def test_putting_a_configuration_sends_one_test_event_per_queue(localcloud, lake):
    s3, sqs, url, arn = lake
    other_url, other_arn = queue(sqs, "other")
    put_config(
        s3,
        config(arn, ["s3:ObjectCreated:*"], prefix="a/"),
        config(arn, ["s3:ObjectCreated:*"], prefix="b/"),
        config(other_arn, ["s3:ObjectRemoved:*"]),
    )
    for target in (url, other_url):
        (event,) = drain(sqs, target)
        assert set(event) == {"Service", "Event", "Time", "Bucket", "RequestId", "HostId"}
        assert (event["Service"], event["Event"], event["Bucket"]) == ("Amazon S3", "s3:TestEvent", "lake")
        assert ISO_MS.fullmatch(event["Time"])


# --- events --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_matching_put_gives_exactly_one_event_shaped_as_s3s(localcloud, lake):
    s3, sqs, url, arn = lake
    put_config(
        s3, config(arn, ["s3:ObjectCreated:Put"], prefix="data/incoming/", suffix=".npz", Id="batches")
    )
    drain(sqs, url)

    put = s3.put_object(Bucket="lake", Key="data/incoming/batch 1+x.npz", Body=b"shard")
    for key in ("data/other/b.npz", "data/incoming/b.json", "data/incoming.npz"):
        s3.put_object(Bucket="lake", Key=key, Body=b"x")
    (message,) = drain(sqs, url)
    (record,) = message["Records"]
    assert set(message) == {"Records"}
    assert ISO_MS.fullmatch(record.pop("eventTime"))
    request_id = put["ResponseMetadata"]["RequestId"]
    principal = record["userIdentity"]["principalId"]
    host_id = record["responseElements"].pop("x-amz-id-2")
    sequencer = record["s3"]["object"].pop("sequencer")
    assert host_id and re.fullmatch(r"[0-9A-F]{16,}", sequencer)
    assert record == {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": principal},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": request_id},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "batches",
            "bucket": {
                "name": "lake",
                "ownerIdentity": {"principalId": principal},
                "arn": "arn:aws:s3:::lake",
            },
            # URL-encoded as S3 does: spaces as +, a + as %2B, slashes kept
            "object": {"key": "data/incoming/batch+1%2Bx.npz", "size": 5, "eTag": put["ETag"].strip('"')},
        },
    }
    assert unquote_plus(record["s3"]["object"]["key"]) == "data/incoming/batch 1+x.npz"


@pytest.mark.slow
def test_copy_multipart_and_delete_events_and_their_order(lake):
    s3, sqs, url, arn = lake
    put_config(
        s3,
        config(arn, ["s3:ObjectCreated:*"], prefix="in/"),
        config(arn, ["s3:ObjectRemoved:*"], prefix="gone/"),
    )
    drain(sqs, url)

    s3.put_object(Bucket="lake", Key="src", Body=b"abc")  # outside both prefixes
    s3.copy_object(Bucket="lake", Key="in/copied", CopySource="lake/src")
    upload = s3.create_multipart_upload(Bucket="lake", Key="in/big")["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(Bucket="lake", Key="in/big", UploadId=upload, PartNumber=n, Body=body)[
                "ETag"
            ],
        }
        for n, body in ((1, b"a" * (5 * MiB)), (2, b"b"))
    ]
    done = s3.complete_multipart_upload(
        Bucket="lake", Key="in/big", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    s3.put_object(Bucket="lake", Key="gone/1", Body=b"1")
    s3.put_object(Bucket="lake", Key="gone/2", Body=b"2")
    s3.delete_object(Bucket="lake", Key="gone/1")
    s3.delete_objects(Bucket="lake", Delete={"Objects": [{"Key": "gone/2"}, {"Key": "gone/never-there"}]})

    records = [message["Records"][0] for message in drain(sqs, url)]
    assert [(r["eventName"], r["s3"]["object"]["key"]) for r in records] == [
        ("ObjectCreated:Copy", "in/copied"),
        ("ObjectCreated:CompleteMultipartUpload", "in/big"),
        ("ObjectRemoved:Delete", "gone/1"),
        ("ObjectRemoved:Delete", "gone/2"),
    ]
    assert records[1]["s3"]["object"]["size"] == 5 * MiB + 1
    assert records[1]["s3"]["object"]["eTag"] == done["ETag"].strip('"')  # "<md5>-2"
    assert set(records[2]["s3"]["object"]) == {"key", "sequencer"}  # S3 sends no size or eTag for a delete
    sequencers = [r["s3"]["object"]["sequencer"] for r in records]
    assert sequencers == sorted(sequencers) and len(set(sequencers)) == 4


@pytest.mark.slow
def test_a_failed_write_sends_nothing_and_a_deleted_queue_never_fails_one(lake):
    s3, sqs, url, arn = lake
    put_config(s3, config(arn, ["s3:ObjectCreated:*"]))
    drain(sqs, url)
    s3.put_object(Bucket="lake", Key="k", Body=b"1")
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="lake", Key="k", Body=b"2", IfNoneMatch="*")
    assert error(excinfo)[1] == "PreconditionFailed"
    assert len(drain(sqs, url)) == 1  # the first put's event only

    sqs.delete_queue(QueueUrl=url)
    s3.put_object(Bucket="lake", Key="k2", Body=b"still written")  # the event is logged and dropped
    assert s3.get_object(Bucket="lake", Key="k2")["Body"].read() == b"still written"


@pytest.mark.slow
def test_configuration_survives_a_restart_and_dies_with_its_bucket(localcloud, lake):
    s3, sqs, url, arn = lake
    put_config(s3, config(arn, ["s3:ObjectCreated:*"], prefix="in/", Id="kept"))
    drain(sqs, url)
    localcloud.restart()
    s3, sqs = localcloud.client("s3"), localcloud.client("sqs")
    assert s3.get_bucket_notification_configuration(Bucket="lake")["QueueConfigurations"][0]["Id"] == "kept"
    s3.put_object(Bucket="lake", Key="in/after-restart", Body=b"x")
    (message,) = drain(sqs, url)
    assert message["Records"][0]["s3"]["configurationId"] == "kept"

    s3.delete_object(Bucket="lake", Key="in/after-restart")
    s3.delete_bucket(Bucket="lake")
    s3.create_bucket(Bucket="lake")
    assert "QueueConfigurations" not in s3.get_bucket_notification_configuration(Bucket="lake")


# --- against moto ----------------------------------------------------------------------------------


def scenario(s3, sqs) -> tuple[dict, dict]:
    """The test event and the record one PutObject gives, on either implementation."""
    url = sqs.create_queue(QueueName="events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket="lake")
    s3.put_bucket_notification_configuration(
        Bucket="lake",
        NotificationConfiguration={
            "QueueConfigurations": [config(arn, ["s3:ObjectCreated:*"], prefix="in/", Id="cfg")]
        },
    )
    s3.put_object(Bucket="lake", Key="in/a b.npz", Body=b"shard")
    test_event, event = drain(sqs, url)
    return test_event, event


@pytest.mark.slow
def test_event_and_test_event_have_motos_keys_and_values(localcloud):
    ours = scenario(localcloud.client("s3"), localcloud.client("sqs"))
    with mock_aws():
        theirs = scenario(
            boto3.client("s3", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        )

    (our_test, our_event), (their_test, their_event) = ours, theirs
    assert set(our_test) - set(their_test) == {"RequestId", "HostId"}  # S3 sends them; moto does not
    assert {k: v for k, v in our_test.items() if k in their_test and k != "Time"} == {
        k: v for k, v in their_test.items() if k != "Time"
    }
    assert set(our_event) == set(their_event) == {"Records"}
    (our_record,), (their_record,) = our_event["Records"], their_event["Records"]
    assert key_paths(their_record) <= key_paths(our_record)
    assert key_paths(our_record) - key_paths(their_record) == NOT_IN_MOTO

    def normalised(record: dict) -> dict:
        assert ISO_MS.fullmatch(record["eventTime"])
        s3 = record["s3"]
        return {
            **{k: record[k] for k in ("eventVersion", "eventSource", "awsRegion", "eventName")},
            "s3": {
                "s3SchemaVersion": s3["s3SchemaVersion"],
                "configurationId": s3["configurationId"],
                "bucket": {k: s3["bucket"][k] for k in ("name", "arn")},
                # moto also encodes "/" (as %2F); S3 and localcloud keep it
                "object": {
                    **{k: s3["object"][k] for k in ("size", "eTag")},
                    "key": unquote_plus(s3["object"]["key"]),
                },
            },
        }

    assert normalised(our_record) == normalised(their_record)
    assert our_record["s3"]["object"]["key"] == "in/a+b.npz"
