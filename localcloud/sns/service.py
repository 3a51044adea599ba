"""SnsService: SNS's query operations, a thin dispatcher over SnsBackend.

SNS's inputs nest (MessageAttributes and Attributes maps, Tags lists of structures), which the shared
QueryProtocol (STS's flat members) does not read, so SNS parses the form itself, as botocore writes it.
"""

from __future__ import annotations

import base64
from typing import Any

from localcloud.config import Config
from localcloud.protocols import QueryProtocol, Shape
from localcloud.service import Service, operation
from localcloud.shapes import from_text, wire_name
from localcloud.sns.backend import SnsBackend
from localcloud.sns.validation import invalid_parameter, not_implemented
from localcloud.wire import Request


class _NestedQueryProtocol(QueryProtocol):
    """The query protocol with nested members, as botocore serialises them: maps as
    ``Name.entry.N.key`` / ``.value`` (SNS's ``MessageAttributes.entry.N.Name`` / ``.Value.DataType``),
    lists of structures as ``Name.member.N.Field``. QueryProtocol (STS) reads flat members only."""

    def parse_input(self, operation: Any, request: Request, context: dict[str, Any]) -> dict[str, Any]:
        if operation.input_shape is None:
            return {}
        return _from_form(operation.input_shape, context, "") or {}


def _from_form(shape: Shape, form: dict[str, str], prefix: str) -> Any:
    kind = shape.type_name
    if kind == "structure":
        found = {}
        for key, member in shape.members.items():
            name = wire_name(member, key)
            value = _from_form(member, form, f"{prefix}.{name}" if prefix else name)
            if value is not None:
                found[key] = value
        return found or None
    if kind in ("list", "map"):
        if form.get(prefix) == "":
            return [] if kind == "list" else {}
        flattened = shape.serialization.get("flattened")
        item = "entry" if kind == "map" else shape.member.serialization.get("name", "member")
        base = prefix if flattened else f"{prefix}.{item}"
        indices = sorted(
            {
                int(number)
                for name in form
                if name.startswith(base + ".")
                for number in [name[len(base) + 1 :].split(".")[0]]
                if number.isdigit()
            }
        )
        if not indices:
            return None
        if kind == "list":
            return [_from_form(shape.member, form, f"{base}.{i}") for i in indices]
        key_name = shape.key.serialization.get("name", "key")
        value_name = shape.value.serialization.get("name", "value")
        return {
            form.get(f"{base}.{i}.{key_name}", ""): _from_form(shape.value, form, f"{base}.{i}.{value_name}")
            for i in indices
        }
    return from_text(shape, form[prefix]) if prefix in form else None


def _token(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return base64.urlsafe_b64decode(value.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise invalid_parameter("NextToken") from None


def _next_token(key: str | None) -> str | None:
    return None if key is None else base64.urlsafe_b64encode(key.encode()).decode()


class SnsService(Service):
    model_name = "sns"
    validation_error_code = "InvalidParameter"
    internal_error_code = "InternalError"
    backend: SnsBackend

    def __init__(self, backend: SnsBackend, config: Config) -> None:
        super().__init__(backend, config)
        self.protocol = _NestedQueryProtocol(self)

    @operation("CreateTopic")
    def create_topic(self, params: dict, request: Request) -> dict:
        if params.get("DataProtectionPolicy"):
            raise not_implemented("SNS message data protection (DataProtectionPolicy)")
        arn = self.backend.create_topic(
            params["Name"], params.get("Attributes") or {}, params.get("Tags") or []
        )
        return {"TopicArn": arn}

    @operation("DeleteTopic")
    def delete_topic(self, params: dict, request: Request) -> dict:
        self.backend.delete_topic(params["TopicArn"])
        return {}

    @operation("ListTopics")
    def list_topics(self, params: dict, request: Request) -> dict:
        arns, last = self.backend.list_topics(_token(params.get("NextToken")))
        return {"Topics": [{"TopicArn": arn} for arn in arns], "NextToken": _next_token(last)}

    @operation("GetTopicAttributes")
    def get_topic_attributes(self, params: dict, request: Request) -> dict:
        return {"Attributes": self.backend.topic_attributes(params["TopicArn"])}

    @operation("SetTopicAttributes")
    def set_topic_attributes(self, params: dict, request: Request) -> dict:
        self.backend.set_topic_attribute(
            params["TopicArn"], params["AttributeName"], params.get("AttributeValue", "")
        )
        return {}

    @operation("Subscribe")
    def subscribe(self, params: dict, request: Request) -> dict:
        arn = self.backend.subscribe(
            params["TopicArn"],
            params["Protocol"],
            params.get("Endpoint"),
            params.get("Attributes") or {},
            params.get("ReturnSubscriptionArn", False),
        )
        return {"SubscriptionArn": arn}

    @operation("Unsubscribe")
    def unsubscribe(self, params: dict, request: Request) -> dict:
        self.backend.unsubscribe(params["SubscriptionArn"])
        return {}

    @operation("ListSubscriptions")
    def list_subscriptions(self, params: dict, request: Request) -> dict:
        page, last = self.backend.list_subscriptions(None, _token(params.get("NextToken")))
        return {"Subscriptions": page, "NextToken": _next_token(last)}

    @operation("ListSubscriptionsByTopic")
    def list_subscriptions_by_topic(self, params: dict, request: Request) -> dict:
        page, last = self.backend.list_subscriptions(params["TopicArn"], _token(params.get("NextToken")))
        return {"Subscriptions": page, "NextToken": _next_token(last)}

    @operation("GetSubscriptionAttributes")
    def get_subscription_attributes(self, params: dict, request: Request) -> dict:
        return {"Attributes": self.backend.subscription_attributes(params["SubscriptionArn"])}

    @operation("SetSubscriptionAttributes")
    def set_subscription_attributes(self, params: dict, request: Request) -> dict:
        self.backend.set_subscription_attribute(
            params["SubscriptionArn"], params["AttributeName"], params.get("AttributeValue", "")
        )
        return {}

    @operation("Publish")
    def publish(self, params: dict, request: Request) -> dict:
        if params.get("PhoneNumber"):
            raise not_implemented("SNS SMS publishing (PhoneNumber)")
        topic_arn = params.get("TopicArn") or params.get("TargetArn")
        if not topic_arn:
            raise invalid_parameter("TopicArn or TargetArn", "no value for required parameter")
        for name in ("MessageGroupId", "MessageDeduplicationId"):
            if params.get(name) is not None:
                raise invalid_parameter(
                    name, f"The request includes {name} parameter that is not valid for this topic type"
                )
        message_id = self.backend.publish(
            topic_arn,
            params["Message"],
            params.get("Subject"),
            params.get("MessageAttributes"),
            params.get("MessageStructure"),
        )
        return {"MessageId": message_id}
