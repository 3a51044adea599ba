"""SNS's parameter rules, and its errors with SNS's codes and messages ("Invalid parameter: ...")."""

from __future__ import annotations

import json
import re
from typing import Any

from localcloud.wire import ServiceError

MAX_MESSAGE_BYTES = 262_144  # message and attributes together
MAX_SUBJECT_CHARS = 100

TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,256}")
ATTRIBUTE_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
TOPIC_SETTABLE = (
    "DisplayName",
    "Policy",
    "DeliveryPolicy",
    "KmsMasterKeyId",
    "SignatureVersion",
    "TracingConfig",
)
JSON_ATTRIBUTES = ("Policy", "DeliveryPolicy")
DELIVERED_PROTOCOLS = ("sqs",)
PENDING_PROTOCOLS = ("email", "email-json")
UNSUPPORTED_PROTOCOLS = ("http", "https", "lambda", "sms", "application", "firehose")
UNSUPPORTED_SUBSCRIPTION_ATTRIBUTES = ("FilterPolicy", "FilterPolicyScope", "RedrivePolicy", "ReplayPolicy")


def invalid_parameter(what: str, reason: str | None = None) -> ServiceError:
    return ServiceError(
        "InvalidParameter", f"Invalid parameter: {what}" + (f" Reason: {reason}" if reason else "")
    )


def not_found(what: str) -> ServiceError:
    return ServiceError("NotFound", f"{what} does not exist", 404)


def not_implemented(what: str) -> ServiceError:
    return ServiceError("NotImplemented", f"localcloud does not implement {what}", 501)


def invalid_value(message: str) -> ServiceError:
    return ServiceError("ParameterValueInvalid", message)


def is_queue_arn(arn: str) -> bool:
    parts = arn.split(":")
    return len(parts) == 6 and parts[:3] == ["arn", "aws", "sqs"] and all(parts[3:])


def checked_topic_attribute(name: str, value: Any) -> str:
    value = value if isinstance(value, str) else str(value)
    if name not in TOPIC_SETTABLE:
        raise invalid_parameter("AttributeName")
    if name in JSON_ATTRIBUTES:
        try:
            json.loads(value)
        except ValueError:
            raise invalid_parameter("Attributes", f"{name}: the value is not valid JSON") from None
    if name == "DisplayName" and len(value) > MAX_SUBJECT_CHARS:
        raise invalid_parameter("DisplayName", f"at most {MAX_SUBJECT_CHARS} characters")
    if name == "SignatureVersion" and value not in ("1", "2"):
        raise invalid_parameter("SignatureVersion", "must be 1 or 2")
    if name == "TracingConfig" and value not in ("PassThrough", "Active"):
        raise invalid_parameter("TracingConfig", "must be PassThrough or Active")
    return value


def checked_subscription_attribute(protocol: str, name: str, value: Any) -> str:
    value = value if isinstance(value, str) else str(value)
    if name in UNSUPPORTED_SUBSCRIPTION_ATTRIBUTES:
        raise not_implemented(f"the SNS subscription attribute {name}")
    if name == "RawMessageDelivery":
        if protocol != "sqs":
            raise invalid_parameter(
                "Attributes", f"Delivery protocol [{protocol}] does not support raw message delivery."
            )
        if value.lower() not in ("true", "false"):
            raise invalid_parameter(
                "Attributes", f"RawMessageDelivery: Invalid value [{value}]. Must be true or false."
            )
        return value.lower()
    if name == "DeliveryPolicy":
        return checked_topic_attribute(name, value)
    raise invalid_parameter("AttributeName")


def checked_message_attributes(attributes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if len(attributes) > 10:
        raise invalid_value(
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum [10]."
        )
    for name, value in attributes.items():
        if not ATTRIBUTE_NAME.fullmatch(name) or name.lower().startswith(("aws.", "amazon.")):
            raise invalid_value(f"Message attribute name '{name}' is not valid.")
        data_type = value.get("DataType", "")
        kind = data_type.split(".", 1)[0]
        if kind not in ("String", "Number", "Binary"):
            raise invalid_value(
                f"The message attribute '{name}' has an invalid message attribute type, the set of supported "
                "type prefixes is Binary, Number, and String."
            )
        field = "BinaryValue" if kind == "Binary" else "StringValue"
        if not value.get(field):
            raise invalid_value(
                f"The message attribute '{name}' must contain non-empty message attribute value for message "
                f"attribute type '{kind}'."
            )
        if kind == "Number":
            try:
                float(value["StringValue"])
            except ValueError:
                raise invalid_value(f"Could not cast message attribute '{name}' value to number.") from None
        if data_type == "String.Array":
            try:
                parsed = json.loads(value["StringValue"])
            except ValueError:
                parsed = None
            if not isinstance(parsed, list):
                raise invalid_value(
                    f"The message attribute '{name}' with type 'String.Array' must be a JSON array."
                )
    return attributes


def attribute_bytes(value: dict[str, Any]) -> bytes:
    return value["BinaryValue"] if "BinaryValue" in value else value["StringValue"].encode()


def structured(message: str) -> dict[str, str]:
    try:
        document = json.loads(message)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise invalid_parameter("Message Structure - JSON message body failed to parse")
    if "default" not in document:
        raise invalid_parameter("Message Structure - No default entry in JSON message body")
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in document.items()}
