"""SQS's parameter rules, as AWS applies them: queue names and attributes, message bodies and attributes,
batch entries, receipt handles, and the MD5 digests SendMessage and ReceiveMessage return.

Everything here is pure (no store, no clock), so the backend calls it before it changes anything and a
bad request never leaves half a change behind.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from localcloud.sqs.exceptions import (
    fifo_not_implemented,
    invalid_attribute_value,
    invalid_parameter,
    invalid_value,
    missing_parameter,
    queue_does_not_exist,
    receipt_handle_invalid,
    unknown_attribute,
)
from localcloud.wire import ServiceError

# The limit the pipeline's brief fixes (AWS's long-standing 256 KiB); MaximumMessageSize may lower it.
MAX_MESSAGE_BYTES = 262_144
MAX_BATCH_ENTRIES = 10
MAX_MESSAGE_ATTRIBUTES = 10
MAX_VISIBILITY_TIMEOUT = 43_200  # 12 hours, also the most a message may stay in flight in all
MAX_DELAY_SECONDS = 900
MAX_WAIT_SECONDS = 20
MAX_RECEIVE_COUNT = 1000

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_DATA_TYPE = re.compile(r"(String|Number|Binary)(\.[^\s]{1,249})?")
# The characters SQS accepts in bodies and string values (XML 1.0's): anything else is refused.
_INVALID_CHARACTER = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# name: (minimum, maximum, default) of the integer queue attributes.
INTEGER_ATTRIBUTES = {
    "DelaySeconds": (0, MAX_DELAY_SECONDS, "0"),
    "MaximumMessageSize": (1024, MAX_MESSAGE_BYTES, str(MAX_MESSAGE_BYTES)),
    "MessageRetentionPeriod": (60, 1_209_600, "345600"),
    "ReceiveMessageWaitTimeSeconds": (0, MAX_WAIT_SECONDS, "0"),
    "VisibilityTimeout": (0, MAX_VISIBILITY_TIMEOUT, "30"),
    "KmsDataKeyReusePeriodSeconds": (60, 86_400, None),
}
BOOLEAN_ATTRIBUTES = {"SqsManagedSseEnabled": "true"}
JSON_ATTRIBUTES = ("Policy", "RedrivePolicy", "RedriveAllowPolicy")
TEXT_ATTRIBUTES = ("KmsMasterKeyId",)  # recorded and returned, not enforced
COMPUTED_ATTRIBUTES = (
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
)
FIFO_ATTRIBUTES = ("ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit")
SETTABLE_ATTRIBUTES = (*INTEGER_ATTRIBUTES, *BOOLEAN_ATTRIBUTES, *JSON_ATTRIBUTES, *TEXT_ATTRIBUTES)
QUEUE_ATTRIBUTES = ("All", *COMPUTED_ATTRIBUTES, *SETTABLE_ATTRIBUTES, "FifoQueue", *FIFO_ATTRIBUTES)

MESSAGE_SYSTEM_ATTRIBUTES = (
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
    "MessageGroupId",
)
_FIFO_MESSAGE_ATTRIBUTES = ("SequenceNumber", "MessageDeduplicationId")


def default_attributes() -> dict[str, str]:
    found = {name: default for name, (_, _, default) in INTEGER_ATTRIBUTES.items() if default is not None}
    return {**found, **BOOLEAN_ATTRIBUTES}


# --- queues ------------------------------------------------------------------------------------


def check_queue_name(name: str) -> None:
    if name.endswith(".fifo"):
        raise fifo_not_implemented(f"queue name {name!r} ends in .fifo")
    if not _QUEUE_NAME.fullmatch(name):
        raise invalid_parameter(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
        )


def queue_arn(region: str, account_id: str, name: str) -> str:
    return f"arn:aws:sqs:{region}:{account_id}:{name}"


def name_from_arn(arn: str, region: str, account_id: str) -> str:
    """The queue name an ARN of this region and account names; NonExistentQueue for any other."""
    parts = arn.split(":") if isinstance(arn, str) else []
    if len(parts) != 6 or parts[:3] != ["arn", "aws", "sqs"] or parts[3:5] != [region, account_id]:
        raise queue_does_not_exist()
    return parts[5]


def normalise_attributes(attributes: Mapping[str, Any], redrive_target_exists: Any) -> dict[str, str | None]:
    """CreateQueue/SetQueueAttributes' Attributes as stored: each checked, integers canonical, JSON
    parsed; None for a JSON attribute set to "" (removed). `redrive_target_exists(arn)` says whether a
    RedrivePolicy's dead-letter queue exists."""
    result: dict[str, str | None] = {}
    for name, raw in attributes.items():
        value = raw if isinstance(raw, str) else str(raw)
        if name == "FifoQueue":
            if value.lower() == "true":
                raise fifo_not_implemented("FifoQueue is true")
            if value.lower() != "false":
                raise invalid_attribute_value(name)
            continue
        if name in INTEGER_ATTRIBUTES:
            low, high, _ = INTEGER_ATTRIBUTES[name]
            if not re.fullmatch(r"-?[0-9]{1,12}", value.strip()) or not low <= int(value) <= high:
                raise invalid_attribute_value(name, f"must be an integer from {low} to {high}")
            result[name] = str(int(value))
        elif name in BOOLEAN_ATTRIBUTES:
            if value.lower() not in ("true", "false"):
                raise invalid_attribute_value(name, "must be true or false")
            result[name] = value.lower()
        elif name == "RedrivePolicy":
            result[name] = _redrive_policy(value, redrive_target_exists) if value else None
        elif name in JSON_ATTRIBUTES:
            if value:
                try:
                    document = json.loads(value)
                except ValueError:
                    raise invalid_attribute_value(name, "not valid JSON") from None
                if not isinstance(document, dict):
                    raise invalid_attribute_value(name, "must be a JSON object")
            result[name] = value or None
        elif name in TEXT_ATTRIBUTES:
            result[name] = value or None
        else:
            raise unknown_attribute(name)
    return result


def _redrive_policy(value: str, target_exists: Any) -> str:
    def bad(reason: str) -> ServiceError:
        return invalid_value(value, "RedrivePolicy", reason)

    try:
        policy = json.loads(value)
    except ValueError:
        raise bad("Redrive policy is not a valid JSON map.") from None
    if not isinstance(policy, dict):
        raise bad("Redrive policy is not a valid JSON map.")
    for key in ("deadLetterTargetArn", "maxReceiveCount"):
        if key not in policy:
            raise bad(f"Redrive policy does not contain mandatory attribute: {key}.")
    unknown = sorted(set(policy) - {"deadLetterTargetArn", "maxReceiveCount"})
    if unknown:
        raise bad(f"Redrive policy contains unknown attributes: {', '.join(unknown)}.")
    count = policy["maxReceiveCount"]
    try:
        count = int(str(count))
    except ValueError:
        count = None
    if count is None or not 1 <= count <= MAX_RECEIVE_COUNT:
        raise bad(
            f"Invalid value for maxReceiveCount: {policy['maxReceiveCount']}, valid values are from 1 "
            f"to {MAX_RECEIVE_COUNT} both inclusive."
        )
    target = policy["deadLetterTargetArn"]
    if not isinstance(target, str) or not target_exists(target):
        raise bad("Dead letter target does not exist.")
    return json.dumps({"deadLetterTargetArn": target, "maxReceiveCount": count}, separators=(",", ":"))


def check_attribute_names(names: Iterable[str], known: Iterable[str]) -> list[str]:
    names, allowed = list(names), set(known)
    for name in names:
        if name not in allowed:
            raise unknown_attribute(name)
    return names


# --- messages ----------------------------------------------------------------------------------


def check_body(body: str) -> int:
    """The body's size in bytes, after refusing what SQS refuses."""
    if not body:
        raise missing_parameter("MessageBody")
    bad = _INVALID_CHARACTER.search(body)
    if bad:
        raise ServiceError(
            "InvalidMessageContents",
            f"Invalid binary character '#x{ord(bad.group()):X}' was found in the message body, the set of "
            "allowed characters is #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
        )
    return len(body.encode())


def check_message_attributes(attributes: Mapping[str, Any] | None, system: bool = False) -> int:
    """Refuse malformed MessageAttributes (or MessageSystemAttributes); their size in bytes as SQS
    counts it towards the message's (name + type + value)."""
    if not attributes:
        return 0
    if system:
        unknown = sorted(set(attributes) - {"AWSTraceHeader"})
        if unknown:
            raise invalid_parameter(
                f"Message system attribute name '{unknown[0]}' is invalid; only AWSTraceHeader is supported."
            )
    elif len(attributes) > MAX_MESSAGE_ATTRIBUTES:
        raise invalid_parameter(
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum "
            f"[{MAX_MESSAGE_ATTRIBUTES}]."
        )
    size = 0
    for name, value in attributes.items():
        _check_attribute_name(name)
        if not isinstance(value, Mapping):
            raise invalid_parameter(f"The message attribute '{name}' must be a structure.")
        data_type = value.get("DataType")
        if not data_type:
            raise invalid_parameter(
                f"The message attribute '{name}' must contain non-empty message attribute type."
            )
        if not _DATA_TYPE.fullmatch(data_type) or len(data_type) > 256:
            raise invalid_parameter(
                f"The message attribute '{name}' has an invalid message attribute type, the set of supported "
                "type prefixes is Binary, Number, and String."
            )
        if value.get("StringListValues") or value.get("BinaryListValues"):
            raise invalid_parameter(f"The message attribute '{name}': list values are not supported.")
        binary = data_type.startswith("Binary")
        field, other = ("BinaryValue", "StringValue") if binary else ("StringValue", "BinaryValue")
        if other in value or field not in value:
            kind = data_type.split(".")[0]
            raise invalid_parameter(
                f"The message attribute '{name}' with type '{kind}' must use field '{field[: -len('Value')]}'."
            )
        item = value[field]
        if item is None or len(item) == 0:
            raise invalid_parameter(
                f"The message attribute '{name}' must contain non-empty message attribute value for message "
                f"attribute type '{data_type.split('.')[0]}'."
            )
        if not binary:
            if _INVALID_CHARACTER.search(item):
                raise ServiceError(
                    "InvalidMessageContents", f"The message attribute '{name}' contains invalid characters."
                )
            if data_type.startswith("Number"):
                _check_number(name, item)
            item = item.encode()
        size += len(name.encode()) + len(data_type.encode()) + len(item)
    return size


def _check_attribute_name(name: str) -> None:
    if not _ATTRIBUTE_NAME.fullmatch(name) or name.startswith(".") or name.endswith(".") or ".." in name:
        raise invalid_parameter(
            f"The message attribute name '{name}' is invalid. Attribute name can contain A-Z, a-z, 0-9, "
            "underscore (_), hyphen (-), and period (.) characters."
        )
    if name.lower().startswith(("aws.", "amazon.")):
        raise invalid_parameter(
            f"The message attribute name '{name}' is reserved: names beginning with 'AWS.' or 'Amazon.' "
            "are for internal use."
        )


def _check_number(name: str, text: str) -> None:
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        number = None
    if number is None or not number.is_finite() or len(number.as_tuple().digits) > 38:
        raise invalid_parameter(f"Can't cast the value of message (user) attribute '{name}' to a number.")
    if number != 0 and not -128 <= number.adjusted() <= 126:
        raise invalid_parameter(f"The value of message attribute '{name}' is out of range.")


def check_message_size(size: int, limit: int) -> None:
    if size > limit:
        raise invalid_parameter(
            f"One or more parameters are invalid. Reason: Message must be shorter than {limit} bytes."
        )


def check_delay(delay: Any) -> int:
    if not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_SECONDS:
        raise invalid_value(delay, "DelaySeconds", f"DelaySeconds must be >= 0 and <= {MAX_DELAY_SECONDS}.")
    return delay


def check_range(value: Any, parameter: str, low: int, high: int) -> int:
    if not isinstance(value, int) or not low <= value <= high:
        raise invalid_value(value, parameter, f"Must be between {low} and {high}, if provided.")
    return value


def md5_of_body(body: str) -> str:
    return hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()


def md5_of_attributes(attributes: Mapping[str, Any]) -> str | None:
    """AWS's MD5OfMessageAttributes: for each name in order, length-prefixed name, data type, then a
    transport byte (1 string, 2 binary) and the length-prefixed value. None when there are none."""
    if not attributes:
        return None
    digest = hashlib.md5(usedforsecurity=False)

    def put(data: bytes) -> None:
        digest.update(struct.pack("!I", len(data)))
        digest.update(data)

    for name in sorted(attributes):
        value = attributes[name]
        put(name.encode())
        put(value["DataType"].encode())
        if "BinaryValue" in value:
            digest.update(b"\x02")
            put(value["BinaryValue"])
        else:
            digest.update(b"\x01")
            put(value["StringValue"].encode())
    return digest.hexdigest()


def attributes_to_json(attributes: Mapping[str, Any] | None) -> str | None:
    """Message attributes as stored: only DataType and the one value, binary ones in base64."""
    if not attributes:
        return None
    stored = {}
    for name, value in attributes.items():
        entry = {"DataType": value["DataType"]}
        if "BinaryValue" in value:
            entry["BinaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        else:
            entry["StringValue"] = value["StringValue"]
        stored[name] = entry
    return json.dumps(stored, separators=(",", ":"))


def attributes_from_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    attributes = json.loads(text)
    for value in attributes.values():
        if "BinaryValue" in value:
            value["BinaryValue"] = base64.b64decode(value["BinaryValue"])
    return attributes


def select_message_attributes(attributes: Mapping[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
    """ReceiveMessage's MessageAttributeNames: names, "All" or ".*", and "prefix.*"."""
    wanted = list(wanted)
    if not wanted or not attributes:
        return {}
    if "All" in wanted or ".*" in wanted:
        return dict(attributes)
    prefixes = tuple(name[:-1] for name in wanted if name.endswith(".*"))
    exact = set(wanted)
    return {
        name: value
        for name, value in attributes.items()
        if name in exact or (prefixes and name.startswith(prefixes))
    }


def check_system_attribute_names(names: Iterable[str]) -> set[str]:
    """ReceiveMessage's AttributeNames / MessageSystemAttributeNames, "All" expanded."""
    found: set[str] = set()
    for name in names:
        if name == "All":
            found.update(MESSAGE_SYSTEM_ATTRIBUTES)
        elif name in MESSAGE_SYSTEM_ATTRIBUTES or name in _FIFO_MESSAGE_ATTRIBUTES:
            found.add(name)
        else:
            raise unknown_attribute(name)
    return found


# --- batches and receipt handles -----------------------------------------------------------------


def check_batch(entries: list[dict[str, Any]], entry_name: str) -> None:
    """The checks every *Batch operation makes on its whole list before acting on any entry."""
    if not entries:
        raise ServiceError(
            "AWS.SimpleQueueService.EmptyBatchRequest",
            f"There should be at least one {entry_name} in the request.",
        )
    if len(entries) > MAX_BATCH_ENTRIES:
        raise ServiceError(
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {len(entries)}.",
        )
    seen: set[str] = set()
    for entry in entries:
        entry_id = entry.get("Id", "")
        if not _BATCH_ID.fullmatch(entry_id):
            raise ServiceError(
                "AWS.SimpleQueueService.InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. "
                "It can be at most 80 letters long.",
            )
        if entry_id in seen:
            raise ServiceError("AWS.SimpleQueueService.BatchEntryIdsNotDistinct", f"Id {entry_id} repeated.")
        seen.add(entry_id)


def batch_too_long(size: int) -> ServiceError:
    return ServiceError(
        "AWS.SimpleQueueService.BatchRequestTooLong",
        f"Batch requests cannot be longer than {MAX_MESSAGE_BYTES} bytes. You have sent {size} bytes.",
    )


def make_receipt_handle(queue: str, message_id: str, nonce: str) -> str:
    return base64.b64encode(f"localcloud\n{queue}\n{message_id}\n{nonce}".encode()).decode()


def parse_receipt_handle(handle: str) -> tuple[str, str, str]:
    """(queue, message id, nonce) of a receipt handle; ReceiptHandleIsInvalid for anything else."""
    try:
        parts = base64.b64decode(handle, validate=True).decode().split("\n")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        parts = []
    if len(parts) != 4 or parts[0] != "localcloud" or not all(parts[1:]):
        raise receipt_handle_invalid(handle)
    return parts[1], parts[2], parts[3]
