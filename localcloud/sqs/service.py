"""SqsService: SQS's json operations (AwsJson1_0, target prefix AmazonSQS), a thin dispatcher.

It turns a QueueUrl into the queue's name (any host: a URL built by a client elsewhere works) and the
batch operations' entries into per-entry results; every rule about queues and messages is the
backend's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from localcloud.service import Service, operation
from localcloud.sqs import validation as v
from localcloud.sqs.backend import SqsBackend
from localcloud.sqs.exceptions import QUERY_ERROR_SHAPES, batch_failure, invalid_value, queue_does_not_exist
from localcloud.wire import Request, ServiceError


class SqsService(Service):
    model_name = "sqs"
    validation_error_code = "MissingParameter"
    internal_error_code = "InternalError"
    # awsQueryCompatible: the protocol names the modeled exception of a query code in __type.
    query_error_shapes: ClassVar[dict[str, str]] = QUERY_ERROR_SHAPES
    backend: SqsBackend

    def _name(self, params: dict[str, Any]) -> str:
        return self.backend.name_from_url(params["QueueUrl"])

    # --- queues ------------------------------------------------------------------------------------

    @operation("CreateQueue")
    def create_queue(self, params: dict, request: Request) -> dict:
        url = self.backend.create_queue(params["QueueName"], params.get("Attributes"), params.get("tags"))
        return {"QueueUrl": url}

    @operation("GetQueueUrl")
    def get_queue_url(self, params: dict, request: Request) -> dict:
        owner = params.get("QueueOwnerAWSAccountId")
        if owner is not None and owner != self.config.account_id:
            raise queue_does_not_exist()
        self.backend.queue(params["QueueName"])
        return {"QueueUrl": self.backend.queue_url(params["QueueName"])}

    @operation("ListQueues")
    def list_queues(self, params: dict, request: Request) -> dict:
        limit = params.get("MaxResults")
        if limit is not None:
            v.check_range(limit, "MaxResults", 1, 1000)
        after = _token(params.get("NextToken"))
        names, last = self.backend.list_queues(params.get("QueueNamePrefix", ""), limit, after)
        result: dict[str, Any] = {}
        if names:
            result["QueueUrls"] = [self.backend.queue_url(name) for name in names]
        if last is not None:
            result["NextToken"] = last
        return result

    @operation("DeleteQueue")
    def delete_queue(self, params: dict, request: Request) -> dict:
        self.backend.delete_queue(self._name(params))
        return {}

    @operation("PurgeQueue")
    def purge_queue(self, params: dict, request: Request) -> dict:
        self.backend.purge_queue(self._name(params))
        return {}

    @operation("GetQueueAttributes")
    def get_queue_attributes(self, params: dict, request: Request) -> dict:
        attributes = self.backend.queue_attributes(self._name(params), params.get("AttributeNames", []))
        return {"Attributes": attributes} if attributes else {}

    @operation("SetQueueAttributes")
    def set_queue_attributes(self, params: dict, request: Request) -> dict:
        self.backend.set_queue_attributes(self._name(params), params["Attributes"])
        return {}

    @operation("ListDeadLetterSourceQueues")
    def list_dead_letter_source_queues(self, params: dict, request: Request) -> dict:
        limit = params.get("MaxResults")
        if limit is not None:
            v.check_range(limit, "MaxResults", 1, 1000)
        names = self.backend.dead_letter_source_queues(self._name(params))
        after = _token(params.get("NextToken"))
        if after is not None:
            names = [name for name in names if name > after]
        result: dict[str, Any] = {}
        if limit is not None and len(names) > limit:
            names = names[:limit]
            result["NextToken"] = names[-1]
        result["queueUrls"] = [self.backend.queue_url(name) for name in names]
        return result

    @operation("TagQueue")
    def tag_queue(self, params: dict, request: Request) -> dict:
        self.backend.tag_queue(self._name(params), params["Tags"])
        return {}

    @operation("UntagQueue")
    def untag_queue(self, params: dict, request: Request) -> dict:
        self.backend.untag_queue(self._name(params), params["TagKeys"])
        return {}

    @operation("ListQueueTags")
    def list_queue_tags(self, params: dict, request: Request) -> dict:
        tags = self.backend.queue_tags(self._name(params))
        return {"Tags": tags} if tags else {}

    # --- messages ----------------------------------------------------------------------------------

    @operation("SendMessage")
    def send_message(self, params: dict, request: Request) -> dict:
        return self.backend.send_message(
            self._name(params),
            params["MessageBody"],
            params.get("MessageAttributes"),
            params.get("DelaySeconds"),
            params.get("MessageSystemAttributes"),
            params.get("MessageGroupId"),
            params.get("MessageDeduplicationId"),
        )

    @operation("SendMessageBatch")
    def send_message_batch(self, params: dict, request: Request) -> dict:
        successful, failed = self.backend.send_message_batch(self._name(params), params["Entries"])
        return {"Successful": successful, "Failed": failed}

    @operation("ReceiveMessage")
    def receive_message(self, params: dict, request: Request) -> dict:
        messages = self.backend.receive_message(
            self._name(params),
            params.get("MaxNumberOfMessages", 1),
            params.get("WaitTimeSeconds"),
            params.get("VisibilityTimeout"),
            [*params.get("AttributeNames", []), *params.get("MessageSystemAttributeNames", [])],
            params.get("MessageAttributeNames", []),
        )
        return {"Messages": messages} if messages else {}

    @operation("DeleteMessage")
    def delete_message(self, params: dict, request: Request) -> dict:
        self.backend.delete_message(self._name(params), params["ReceiptHandle"])
        return {}

    @operation("DeleteMessageBatch")
    def delete_message_batch(self, params: dict, request: Request) -> dict:
        name, entries = self._name(params), params["Entries"]
        v.check_batch(entries, "DeleteMessageBatchRequestEntry")
        self.backend.queue(name)
        return self._each(entries, lambda entry: self.backend.delete_message(name, entry["ReceiptHandle"]))

    @operation("ChangeMessageVisibility")
    def change_message_visibility(self, params: dict, request: Request) -> dict:
        self.backend.change_message_visibility(
            self._name(params), params["ReceiptHandle"], params["VisibilityTimeout"]
        )
        return {}

    @operation("ChangeMessageVisibilityBatch")
    def change_message_visibility_batch(self, params: dict, request: Request) -> dict:
        name, entries = self._name(params), params["Entries"]
        v.check_batch(entries, "ChangeMessageVisibilityBatchRequestEntry")
        self.backend.queue(name)
        return self._each(
            entries,
            lambda entry: self.backend.change_message_visibility(
                name, entry["ReceiptHandle"], entry.get("VisibilityTimeout", 0)
            ),
        )

    @staticmethod
    def _each(entries: list[dict[str, Any]], action: Any) -> dict:
        successful, failed = [], []
        for entry in entries:
            try:
                action(entry)
            except ServiceError as error:
                failed.append(batch_failure(entry["Id"], error))
            else:
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}


def _token(token: str | None) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token:
        raise invalid_value(token, "NextToken", "Invalid or expired next token.")
    return token
