"""S3 event notifications to SQS: a bucket's notification configuration and the events S3 sends.

PutBucketNotificationConfiguration is checked as S3 checks it (event names, prefix/suffix filter
rules, overlapping configurations, the queue's ARN, region and existence), stored durably (document
``s3/notification``, key: the bucket) and announced with an ``s3:TestEvent`` message to each queue.
Every object written or deleted afterwards is matched against it, and each matching configuration
gets one ``{"Records": [...]}`` message shaped as S3's (event version 2.1), sent to its queue through
the in-process SQS API (``SqsBackend.deliver``) once the write is committed: a rolled-back write
sends nothing. Delivery is S3's, at most once and asynchronous in spirit: a queue deleted since the
configuration was put is logged and the event dropped; the write that caused it never fails.

Topic and Lambda destinations (and EventBridge) are refused with 501 NotImplemented, naming them:
a configuration localcloud would store but never deliver would look like a working one.

Which request caused an event (its id, the client's address) comes from ``REQUEST``, a context
variable S3Service sets for the duration of each request; in-process writes (SageMaker uploading a
model) have none and are reported as from 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from localcloud.config import Config
from localcloud.shapes import format_timestamp
from localcloud.store import Store
from localcloud.wire import Request, ServiceError

if TYPE_CHECKING:
    from localcloud.sqs import SqsBackend

logger = logging.getLogger("localcloud")

NOTIFICATION_KIND = "s3/notification"  # key: bucket name; the boto3-shaped configuration

# Every event type S3 accepts in a configuration. localcloud produces ObjectCreated:Put, :Copy,
# :CompleteMultipartUpload and ObjectRemoved:Delete; the others name features it does not have
# (POST uploads, versioning, lifecycle, restore, replication, tagging, ACLs), so they never fire.
EVENT_TYPES = frozenset(
    [
        "s3:ObjectCreated:*",
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:Post",
        "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectRemoved:*",
        "s3:ObjectRemoved:Delete",
        "s3:ObjectRemoved:DeleteMarkerCreated",
        "s3:ObjectRestore:*",
        "s3:ObjectRestore:Post",
        "s3:ObjectRestore:Completed",
        "s3:ObjectRestore:Delete",
        "s3:ReducedRedundancyLostObject",
        "s3:Replication:*",
        "s3:Replication:OperationFailedReplication",
        "s3:Replication:OperationMissedThreshold",
        "s3:Replication:OperationReplicatedAfterThreshold",
        "s3:Replication:OperationNotTracked",
        "s3:LifecycleExpiration:*",
        "s3:LifecycleExpiration:Delete",
        "s3:LifecycleExpiration:DeleteMarkerCreated",
        "s3:LifecycleTransition",
        "s3:IntelligentTiering",
        "s3:ObjectTagging:*",
        "s3:ObjectTagging:Put",
        "s3:ObjectTagging:Delete",
        "s3:ObjectAcl:Put",
    ]
)
UNSUPPORTED_DESTINATIONS = ("TopicConfigurations", "LambdaFunctionConfigurations", "EventBridgeConfiguration")
MAX_ID_CHARS = 255
MAX_FILTER_VALUE_BYTES = 1024


@dataclass(frozen=True)
class Origin:
    """The request an event reports: S3's x-amz-request-id and x-amz-id-2, the client's address."""

    request_id: str
    host_id: str
    source_ip: str


REQUEST: ContextVar[Origin | None] = ContextVar("s3_request", default=None)


def origin_of(request: Request) -> Origin:
    host_id = base64.b64encode(hashlib.sha384(request.request_id.encode()).digest()).decode()
    return Origin(request.request_id, host_id, request.client_address or "127.0.0.1")


def _current_origin() -> Origin:
    origin = REQUEST.get()
    if origin is None:
        request_id = uuid.uuid4().hex[:16].upper()
        origin = Origin(request_id, base64.b64encode(os.urandom(48)).decode(), "127.0.0.1")
    return origin


def invalid_argument(message: str, name: str, value: str, status: int = 400) -> ServiceError:
    return ServiceError("InvalidArgument", message, status, ArgumentName1=name, ArgumentValue1=value)


class BucketNotifications:
    """The notification configurations of all buckets, and the delivery of their events."""

    def __init__(self, store: Store, config: Config, sqs: SqsBackend | None) -> None:
        self.store = store
        self.config = config
        self.sqs = sqs
        # S3's principalId: the "Amazon customer ID" of the account's root user, who is everyone here.
        self.principal_id = "A" + hashlib.sha256(config.account_id.encode()).hexdigest()[:13].upper()
        self._sequence_lock = threading.Lock()
        self._last_sequence = 0

    # --- configuration ---------------------------------------------------------------------------

    def configuration(self, bucket: str) -> dict[str, Any]:
        return self.store.get(NOTIFICATION_KIND, bucket) or {}

    def put(
        self, bucket: str, region: str, configuration: dict[str, Any], skip_validation: bool = False
    ) -> None:
        """Check and store `configuration` (boto3's shape); call inside the transaction that checked
        the bucket exists. Each queue gets an s3:TestEvent once that transaction has committed."""
        for name in UNSUPPORTED_DESTINATIONS:
            if configuration.get(name):
                raise ServiceError(
                    "NotImplemented",
                    f"localcloud delivers S3 notifications to SQS queues only (QueueConfigurations); "
                    f"it does not implement {name}",
                    501,
                )
        queues = [self._checked(entry, region) for entry in configuration.get("QueueConfigurations", [])]
        _check_unique_ids(queues)
        _check_no_overlap(queues)
        arns = list(dict.fromkeys(entry["QueueArn"] for entry in queues))
        if not skip_validation:
            for arn in arns:
                if self.sqs is None or not self.sqs.queue_exists(arn):
                    raise invalid_argument(
                        "Unable to validate the following destination configurations",
                        arn,
                        "The destination queue does not exist",
                    )
        if queues:
            self.store.put(NOTIFICATION_KIND, bucket, {"QueueConfigurations": queues})
        else:
            self.store.delete(NOTIFICATION_KIND, bucket)
        if not skip_validation and arns:
            test_event = self._test_event(bucket)
            self.store.after_commit(lambda: self._send_all([(arn, test_event) for arn in arns]))

    def forget(self, bucket: str) -> None:
        """The bucket is being deleted: a bucket created later under its name starts without any."""
        self.store.delete(NOTIFICATION_KIND, bucket)

    def _checked(self, entry: dict[str, Any], region: str) -> dict[str, Any]:
        arn = entry.get("QueueArn", "")
        parts = arn.split(":")
        if len(parts) != 6 or parts[:3] != ["arn", "aws", "sqs"] or not parts[5]:
            raise invalid_argument("The ARN is not well formed", "Queue", arn)
        if parts[3] != region:
            raise invalid_argument(
                "The notification destination service region is not valid for the bucket location constraint",
                "Queue",
                arn,
            )
        events = entry.get("Events") or []
        if not events:
            raise ServiceError("MalformedXML", f"QueueConfiguration for {arn} names no Event")
        for event in events:
            if event not in EVENT_TYPES:
                raise invalid_argument("The event is not supported for notifications", "Event", event)
        config_id = entry.get("Id") or base64.b64encode(str(uuid.uuid4()).encode()).decode().rstrip("=")
        if len(config_id) > MAX_ID_CHARS:
            raise invalid_argument(f"Id must be at most {MAX_ID_CHARS} characters", "Id", config_id)
        checked: dict[str, Any] = {
            "Id": config_id,
            "QueueArn": arn,
            "Events": list(dict.fromkeys(events)),
        }
        rules = ((entry.get("Filter") or {}).get("Key") or {}).get("FilterRules") or []
        if rules:
            checked["Filter"] = {"Key": {"FilterRules": _checked_rules(rules)}}
        return checked

    # --- events ----------------------------------------------------------------------------------

    def object_created(self, bucket: str, region: str, key: str, doc: dict[str, Any], how: str) -> None:
        """An object was written (`how`: Put, Copy, CompleteMultipartUpload) in the current
        transaction: its events go out once that commits."""
        self._object_event(bucket, region, key, f"ObjectCreated:{how}", doc)

    def object_removed(self, bucket: str, region: str, key: str) -> None:
        self._object_event(bucket, region, key, "ObjectRemoved:Delete", None)

    def _object_event(
        self, bucket: str, region: str, key: str, event_name: str, doc: dict[str, Any] | None
    ) -> None:
        configuration = self.store.get(NOTIFICATION_KIND, bucket)
        if configuration is None:
            return
        matching = [
            entry for entry in configuration["QueueConfigurations"] if _matches(entry, event_name, key)
        ]
        if not matching:
            return
        origin = _current_origin()
        moment = time.time()

        def send() -> None:
            sequencer = self._next_sequencer()  # taken after COMMIT: later commits sort later
            self._send_all(
                [
                    (
                        entry["QueueArn"],
                        {
                            "Records": [
                                self._record(
                                    entry["Id"],
                                    event_name,
                                    bucket,
                                    region,
                                    key,
                                    doc,
                                    origin,
                                    moment,
                                    sequencer,
                                )
                            ]
                        },
                    )
                    for entry in matching
                ]
            )

        self.store.after_commit(send)

    def _record(
        self,
        config_id: str,
        event_name: str,
        bucket: str,
        region: str,
        key: str,
        doc: dict[str, Any] | None,
        origin: Origin,
        moment: float,
        sequencer: str,
    ) -> dict[str, Any]:
        s3_object: dict[str, Any] = {"key": quote_plus(key, safe="/")}
        if doc is not None:  # S3's ObjectRemoved records carry neither size nor eTag
            s3_object.update(size=doc["size"], eTag=doc["etag"].strip('"'))
        s3_object["sequencer"] = sequencer
        return {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": region,
            "eventTime": format_timestamp(moment, "iso8601"),
            "eventName": event_name,
            "userIdentity": {"principalId": self.principal_id},  # everyone is the root user
            "requestParameters": {"sourceIPAddress": origin.source_ip},
            "responseElements": {"x-amz-request-id": origin.request_id, "x-amz-id-2": origin.host_id},
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": config_id,
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": self.principal_id},
                    "arn": f"arn:aws:s3:::{bucket}",
                },
                "object": s3_object,
            },
        }

    def _test_event(self, bucket: str) -> dict[str, Any]:
        origin = _current_origin()
        return {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": format_timestamp(time.time(), "iso8601"),
            "Bucket": bucket,
            "RequestId": origin.request_id,
            "HostId": origin.host_id,
        }

    def _send_all(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        for arn, message in messages:
            try:
                if self.sqs is None:
                    raise ServiceError("AWS.SimpleQueueService.NonExistentQueue", "localcloud has no SQS")
                self.sqs.deliver(arn, json.dumps(message, separators=(",", ":")))
            except ServiceError as error:
                # S3 drops an event it cannot deliver (the queue was deleted, or refuses it).
                logger.warning("S3 notification to %s dropped: %s: %s", arn, error.code, error.message)

    def _next_sequencer(self) -> str:
        """S3's per-key ordering token: hex that sorts later for later events (here, for all keys)."""
        with self._sequence_lock:
            self._last_sequence = max(self._last_sequence + 1, time.time_ns())
            return f"{self._last_sequence:018X}"


def _checked_rules(rules: list[dict[str, Any]]) -> list[dict[str, str]]:
    checked: dict[str, str] = {}
    for rule in rules:
        name, value = str(rule.get("Name", "")), str(rule.get("Value", ""))
        if name.lower() not in ("prefix", "suffix"):
            raise invalid_argument(
                "filter rule name must be either prefix or suffix", "FilterRule.Name", name
            )
        canonical = name.capitalize()  # S3 answers "Prefix" / "Suffix" whatever was sent
        if canonical in checked:
            raise invalid_argument(
                f"Cannot specify more than one {name.lower()} rule in a filter.", "FilterRule.Name", name
            )
        if len(value.encode()) > MAX_FILTER_VALUE_BYTES:
            raise invalid_argument(
                f"filter rule value must be at most {MAX_FILTER_VALUE_BYTES} bytes", "FilterRule.Value", value
            )
        checked[canonical] = value
    return [{"Name": name, "Value": value} for name, value in checked.items()]


def _filter(entry: dict[str, Any]) -> tuple[str, str]:
    rules = {
        rule["Name"]: rule["Value"] for rule in entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    }
    return rules.get("Prefix", ""), rules.get("Suffix", "")


def _matches(entry: dict[str, Any], event_name: str, key: str) -> bool:
    family = event_name.split(":")[0]
    events = entry["Events"]
    if f"s3:{event_name}" not in events and f"s3:{family}:*" not in events:
        return False
    prefix, suffix = _filter(entry)
    return key.startswith(prefix) and key.endswith(suffix)


def _event_types_overlap(first: str, second: str) -> bool:
    if first == second:
        return True
    family_one, _, kind_one = first.rpartition(":")
    family_two, _, kind_two = second.rpartition(":")
    return family_one == family_two and "*" in (kind_one, kind_two)


def _check_no_overlap(entries: list[dict[str, Any]]) -> None:
    """S3 refuses two configurations one event could match: a shared event type with prefixes of
    which one starts the other and suffixes of which one ends the other."""
    for index, first in enumerate(entries):
        for second in entries[index + 1 :]:
            shared = [
                event
                for event in first["Events"]
                if any(_event_types_overlap(event, other) for other in second["Events"])
            ]
            (prefix_one, suffix_one), (prefix_two, suffix_two) = _filter(first), _filter(second)
            if (
                shared
                and (prefix_one.startswith(prefix_two) or prefix_two.startswith(prefix_one))
                and (suffix_one.endswith(suffix_two) or suffix_two.endswith(suffix_one))
            ):
                raise invalid_argument(
                    "Configurations overlap. Configurations on the same bucket cannot share a common "
                    "event type.",
                    "Event",
                    shared[0],
                )


def _check_unique_ids(entries: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry["Id"] in seen:
            raise invalid_argument(
                "Configuration Ids must be unique within a bucket's notification configuration",
                "Id",
                entry["Id"],
            )
        seen.add(entry["Id"])
