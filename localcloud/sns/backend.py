"""SnsBackend: topics and subscriptions on the durable store, and Publish's delivery to SQS subscribers.

Topics are documents ``sns/topic`` (key: name), subscriptions ``sns/subscription`` (key: ``<topic
name>/<id>``, so a topic's are one prefix scan). Delivery is synchronous, through the in-process SQS
API, so a message is in its queues when Publish answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from localcloud.config import Config
from localcloud.service import Backend
from localcloud.shapes import format_timestamp
from localcloud.sns.validation import (
    DELIVERED_PROTOCOLS,
    EMAIL,
    MAX_MESSAGE_BYTES,
    MAX_SUBJECT_CHARS,
    PENDING_PROTOCOLS,
    TOPIC_NAME,
    UNSUPPORTED_PROTOCOLS,
    attribute_bytes,
    checked_message_attributes,
    checked_subscription_attribute,
    checked_topic_attribute,
    invalid_parameter,
    is_queue_arn,
    not_found,
    not_implemented,
    structured,
)
from localcloud.store import Store
from localcloud.wire import ServiceError

if TYPE_CHECKING:
    from localcloud.chaos import FaultRules
    from localcloud.sqs import SqsBackend

logger = logging.getLogger("localcloud")

TOPIC_KIND = "sns/topic"  # key: topic name
SUBSCRIPTION_KIND = "sns/subscription"  # key: "<topic name>/<subscription id>"
PAGE_SIZE = 100  # ListTopics and ListSubscriptions(ByTopic) pages, as on AWS
PENDING = "PendingConfirmation"  # what ListSubscriptions shows for an unconfirmed subscription's ARN


class SnsBackend(Backend):
    """Topics and subscriptions in the store; Publish delivers to SQS through `sqs.deliver`."""

    def __init__(
        self, store: Store, config: Config, sqs: SqsBackend | None = None, faults: FaultRules | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.sqs = sqs
        self.faults = faults
        self._arn_prefix = f"arn:aws:sns:{config.region}:{config.account_id}:"

    def counts(self) -> dict[str, int]:
        return {"topics": self.store.count(TOPIC_KIND), "subscriptions": self.store.count(SUBSCRIPTION_KIND)}

    # --- topics ------------------------------------------------------------------------------------

    def topic_name(self, arn: str, parameter: str = "TopicArn") -> str:
        """The name in a topic ARN; InvalidParameter if it is not one, NotFound if it is another
        region's or account's."""
        parts = arn.split(":") if isinstance(arn, str) else []
        if len(parts) != 6 or parts[:3] != ["arn", "aws", "sns"] or not TOPIC_NAME.fullmatch(parts[5]):
            raise invalid_parameter(parameter)
        if not arn.startswith(self._arn_prefix):
            raise not_found("Topic")
        return parts[5]

    def topic(self, arn: str) -> tuple[str, dict[str, Any]]:
        name = self.topic_name(arn)
        doc = self.store.get(TOPIC_KIND, name)
        if doc is None:
            raise not_found("Topic")
        return name, doc

    def create_topic(self, name: str, attributes: dict[str, str], tags: list[dict[str, str]]) -> str:
        """The topic's ARN; the same topic again when it exists with the same attributes and tags."""
        if name.endswith(".fifo") or str(attributes.get("FifoTopic", "false")).lower() == "true":
            raise not_implemented("SNS FIFO topics")
        if not TOPIC_NAME.fullmatch(name):
            raise invalid_parameter("Topic Name")
        attributes = {k: checked_topic_attribute(k, v) for k, v in attributes.items() if k != "FifoTopic"}
        tag_map = {tag["Key"]: tag.get("Value", "") for tag in tags}
        doc = {"created": time.time(), "attributes": attributes, "tags": tag_map}
        with self.store.transaction():
            existing = self.store.get(TOPIC_KIND, name)
            if existing is None:
                self.store.put(TOPIC_KIND, name, doc)
            elif attributes and any(existing["attributes"].get(k) != v for k, v in attributes.items()):
                raise invalid_parameter("Attributes", "Topic already exists with different attributes")
            elif tags and existing["tags"] != tag_map:
                raise invalid_parameter("Tags", "Topic already exists with different tags")
        return self._arn_prefix + name

    def delete_topic(self, arn: str) -> None:
        """Delete the topic and its subscriptions; deleting a topic that does not exist succeeds."""
        try:
            name = self.topic_name(arn)
        except ServiceError as error:
            if error.code == "NotFound":
                return
            raise
        with self.store.transaction():
            for key, _ in self.store.scan(SUBSCRIPTION_KIND, prefix=f"{name}/"):
                self.store.delete(SUBSCRIPTION_KIND, key)
            self.store.delete(TOPIC_KIND, name)

    def list_topics(self, after: str | None) -> tuple[list[str], str | None]:
        found = self.store.scan(TOPIC_KIND, after=after, limit=PAGE_SIZE + 1)
        names = [name for name, _ in found[:PAGE_SIZE]]
        return [self._arn_prefix + name for name in names], names[-1] if len(found) > PAGE_SIZE else None

    def topic_attributes(self, arn: str) -> dict[str, str]:
        name, doc = self.topic(arn)
        subscriptions = [sub for _, sub in self.store.scan(SUBSCRIPTION_KIND, prefix=f"{name}/")]
        pending = sum(1 for sub in subscriptions if sub["pending"])
        return {
            "TopicArn": self._arn_prefix + name,
            "Owner": self.config.account_id,
            "Policy": json.dumps(self._default_policy(name), separators=(",", ":")),
            "DisplayName": "",
            "SubscriptionsConfirmed": str(len(subscriptions) - pending),
            "SubscriptionsPending": str(pending),
            "SubscriptionsDeleted": "0",
            "EffectiveDeliveryPolicy": json.dumps(DEFAULT_DELIVERY_POLICY, separators=(",", ":")),
            **doc["attributes"],
        }

    def set_topic_attribute(self, arn: str, name: str, value: str) -> None:
        checked = checked_topic_attribute(name, value)
        with self.store.transaction():
            topic, doc = self.topic(arn)
            doc["attributes"][name] = checked
            self.store.put(TOPIC_KIND, topic, doc)

    def _default_policy(self, name: str) -> dict[str, Any]:
        actions = ["GetTopicAttributes", "SetTopicAttributes", "AddPermission", "RemovePermission"]
        actions += ["DeleteTopic", "Subscribe", "ListSubscriptionsByTopic", "Publish"]
        return {
            "Version": "2008-10-17",
            "Id": "__default_policy_ID",
            "Statement": [
                {
                    "Sid": "__default_statement_ID",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": [f"SNS:{action}" for action in actions],
                    "Resource": self._arn_prefix + name,
                    "Condition": {"StringEquals": {"AWS:SourceOwner": self.config.account_id}},
                }
            ],
        }

    # --- subscriptions -----------------------------------------------------------------------------

    def subscribe(
        self,
        topic_arn: str,
        protocol: str,
        endpoint: str | None,
        attributes: dict[str, str],
        return_arn: bool,
    ) -> str:
        """The subscription's ARN, or "pending confirmation" for an email one (unless `return_arn`)."""
        if protocol in UNSUPPORTED_PROTOCOLS:
            raise not_implemented(f"SNS subscriptions with protocol {protocol}")
        if protocol not in DELIVERED_PROTOCOLS + PENDING_PROTOCOLS:
            raise invalid_parameter(f"Amazon SNS does not support this protocol string: {protocol}")
        if not endpoint:
            raise invalid_parameter("Endpoint")
        if protocol == "sqs" and not is_queue_arn(endpoint):
            raise invalid_parameter("SQS endpoint ARN")
        if protocol in PENDING_PROTOCOLS and not EMAIL.fullmatch(endpoint):
            raise invalid_parameter("Email address")
        checked = {k: checked_subscription_attribute(protocol, k, v) for k, v in attributes.items()}
        with self.store.transaction():
            topic, _ = self.topic(topic_arn)
            for key, doc in self.store.scan(SUBSCRIPTION_KIND, prefix=f"{topic}/"):
                if (doc["protocol"], doc["endpoint"]) == (protocol, endpoint):
                    if any(doc["attributes"].get(k, "false") != v for k, v in checked.items()):
                        raise invalid_parameter(
                            "Attributes", "Subscription already exists with different attributes"
                        )
                    return self._subscription_answer(key, doc, return_arn)
            key = f"{topic}/{uuid.uuid4()}"
            doc = {
                "protocol": protocol,
                "endpoint": endpoint,
                "attributes": checked,
                "pending": protocol in PENDING_PROTOCOLS,
                "created": time.time(),
            }
            self.store.put(SUBSCRIPTION_KIND, key, doc)
        return self._subscription_answer(key, doc, return_arn)

    def _subscription_answer(self, key: str, doc: dict[str, Any], return_arn: bool) -> str:
        return "pending confirmation" if doc["pending"] and not return_arn else self._subscription_arn(key)

    def _subscription_arn(self, key: str) -> str:
        return self._arn_prefix + key.replace("/", ":")

    def _subscription_key(self, arn: str) -> str:
        topic_arn, _, subscription_id = arn.rpartition(":") if isinstance(arn, str) else ("", "", "")
        try:
            uuid.UUID(subscription_id)
            topic = self.topic_name(topic_arn, "SubscriptionArn")
        except ValueError:
            raise invalid_parameter("SubscriptionArn") from None
        except ServiceError as error:
            raise not_found("Subscription") if error.code == "NotFound" else error from None
        return f"{topic}/{subscription_id}"

    def subscription(self, arn: str) -> tuple[str, dict[str, Any]]:
        key = self._subscription_key(arn)
        doc = self.store.get(SUBSCRIPTION_KIND, key)
        if doc is None:
            raise not_found("Subscription")
        return key, doc

    def unsubscribe(self, arn: str) -> None:
        with self.store.transaction():
            key, _ = self.subscription(arn)
            self.store.delete(SUBSCRIPTION_KIND, key)

    def list_subscriptions(
        self, topic_arn: str | None, after: str | None
    ) -> tuple[list[dict[str, str]], str | None]:
        """One page of subscriptions (of one topic, or all), and the key to resume after."""
        prefix = ""
        if topic_arn is not None:
            prefix = f"{self.topic(topic_arn)[0]}/"
        found = self.store.scan(SUBSCRIPTION_KIND, prefix=prefix, after=after, limit=PAGE_SIZE + 1)
        page = [
            {
                "SubscriptionArn": PENDING if doc["pending"] else self._subscription_arn(key),
                "Owner": self.config.account_id,
                "Protocol": doc["protocol"],
                "Endpoint": doc["endpoint"],
                "TopicArn": self._arn_prefix + key.split("/")[0],
            }
            for key, doc in found[:PAGE_SIZE]
        ]
        return page, found[PAGE_SIZE - 1][0] if len(found) > PAGE_SIZE else None

    def subscription_attributes(self, arn: str) -> dict[str, str]:
        key, doc = self.subscription(arn)
        attributes = {
            "SubscriptionArn": self._subscription_arn(key),
            "TopicArn": self._arn_prefix + key.split("/")[0],
            "Owner": self.config.account_id,
            "Protocol": doc["protocol"],
            "Endpoint": doc["endpoint"],
            "ConfirmationWasAuthenticated": "false" if doc["pending"] else "true",
            "PendingConfirmation": "true" if doc["pending"] else "false",
            "SubscriptionPrincipal": f"arn:aws:iam::{self.config.account_id}:root",
        }
        if doc["protocol"] == "sqs":
            attributes["RawMessageDelivery"] = "false"
        return {**attributes, **doc["attributes"]}

    def set_subscription_attribute(self, arn: str, name: str, value: str) -> None:
        with self.store.transaction():
            key, doc = self.subscription(arn)
            doc["attributes"][name] = checked_subscription_attribute(doc["protocol"], name, value)
            self.store.put(SUBSCRIPTION_KIND, key, doc)

    # --- publishing --------------------------------------------------------------------------------

    def publish(
        self,
        topic_arn: str,
        message: str,
        subject: str | None = None,
        message_attributes: dict[str, dict[str, Any]] | None = None,
        message_structure: str | None = None,
    ) -> str:
        """Deliver `message` to the topic's subscribers now; returns the MessageId."""
        if self.faults is not None and self.faults.rules:
            rule = self.faults.match("sns", "Publish", topic_arn=topic_arn)
            if rule is not None:
                raise ServiceError("InternalError", rule["error_message"], 500)
        attributes = checked_message_attributes(message_attributes or {})
        if not message:
            raise invalid_parameter("Empty message")
        size = len(message.encode()) + sum(
            len(name.encode()) + len(value["DataType"].encode()) + len(attribute_bytes(value))
            for name, value in attributes.items()
        )
        if size > MAX_MESSAGE_BYTES:
            raise invalid_parameter("Message too long")
        if subject is not None and (
            not subject or len(subject) > MAX_SUBJECT_CHARS or not all(" " <= c <= "~" for c in subject)
        ):
            raise invalid_parameter("Subject")
        per_protocol = structured(message) if message_structure == "json" else None
        if message_structure not in (None, "json"):
            raise invalid_parameter("MessageStructure")
        name, doc = self.topic(topic_arn)
        message_id = str(uuid.uuid4())
        timestamp = format_timestamp(time.time(), "iso8601")
        signature_version = doc["attributes"].get("SignatureVersion", "1")
        for key, subscription in self.store.scan(SUBSCRIPTION_KIND, prefix=f"{name}/"):
            if subscription["pending"] or subscription["protocol"] != "sqs":
                continue
            text = per_protocol.get("sqs", per_protocol["default"]) if per_protocol else message
            if subscription["attributes"].get("RawMessageDelivery") == "true":
                body, sqs_attributes = text, as_sqs_attributes(attributes)
            else:
                envelope = self._envelope(
                    name, key, message_id, text, subject, timestamp, attributes, signature_version
                )
                body, sqs_attributes = (
                    json.dumps(envelope, indent=2, separators=(",", " : "), ensure_ascii=False),
                    None,
                )
            self._deliver(subscription["endpoint"], body, sqs_attributes, key)
        return message_id

    def _envelope(
        self,
        topic: str,
        subscription_key: str,
        message_id: str,
        message: str,
        subject: str | None,
        timestamp: str,
        attributes: dict[str, dict[str, Any]],
        signature_version: str,
    ) -> dict[str, Any]:
        region, topic_arn = self.config.region, self._arn_prefix + topic
        fields = {"Message": message, "MessageId": message_id, "Subject": subject, "Timestamp": timestamp}
        fields.update(TopicArn=topic_arn, Type="Notification")
        # SNS signs these fields, in this order, as "Name\nvalue\n" lines (Subject only when given).
        string_to_sign = "".join(f"{k}\n{v}\n" for k, v in fields.items() if v is not None)
        digest = (hashlib.sha256 if signature_version == "2" else hashlib.sha1)(string_to_sign.encode())
        envelope: dict[str, Any] = {"Type": "Notification", "MessageId": message_id, "TopicArn": topic_arn}
        if subject is not None:
            envelope["Subject"] = subject
        envelope.update(
            Message=message,
            Timestamp=timestamp,
            SignatureVersion=signature_version,
            Signature=base64.b64encode(digest.digest()).decode(),
            SigningCertURL=f"https://sns.{region}.amazonaws.com/SimpleNotificationService-"
            f"{hashlib.md5(region.encode(), usedforsecurity=False).hexdigest()}.pem",
            UnsubscribeURL=f"https://sns.{region}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
            + self._subscription_arn(subscription_key),
        )
        if attributes:
            envelope["MessageAttributes"] = {
                name: {"Type": value["DataType"], "Value": envelope_value(value)}
                for name, value in attributes.items()
            }
        return envelope

    def _deliver(self, queue_arn: str, body: str, attributes: dict[str, Any] | None, key: str) -> None:
        try:
            if self.sqs is None:
                raise ServiceError("AWS.SimpleQueueService.NonExistentQueue", "localcloud has no SQS")
            self.sqs.deliver(queue_arn, body, attributes)
        except ServiceError as error:
            # SNS drops what a subscriber cannot take (its queue is gone, or refuses the message).
            logger.warning(
                "SNS delivery to %s (subscription %s) dropped: %s: %s",
                queue_arn,
                self._subscription_arn(key),
                error.code,
                error.message,
            )


DEFAULT_DELIVERY_POLICY = {
    "http": {
        "defaultHealthyRetryPolicy": {
            "minDelayTarget": 20,
            "maxDelayTarget": 20,
            "numRetries": 3,
            "numMaxDelayRetries": 0,
            "numNoDelayRetries": 0,
            "numMinDelayRetries": 0,
            "backoffFunction": "linear",
        },
        "disableSubscriptionOverrides": False,
        "defaultRequestPolicy": {"headerContentType": "text/plain; charset=UTF-8"},
    }
}


def envelope_value(value: dict[str, Any]) -> str:
    return (
        base64.b64encode(value["BinaryValue"]).decode()
        if value["DataType"].startswith("Binary")
        else value["StringValue"]
    )


def as_sqs_attributes(attributes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """Raw delivery's SQS message attributes: String.Array arrives as a String, as SNS sends it."""
    converted = {}
    for name, value in attributes.items():
        if value["DataType"] == "String.Array":
            converted[name] = {"DataType": "String", "StringValue": value["StringValue"]}
        else:
            converted[name] = {k: value[k] for k in ("DataType", "StringValue", "BinaryValue") if k in value}
    return converted or None
