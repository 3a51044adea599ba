"""SQS's errors: the codes clients see, and the modeled exception each belongs to.

SQS moved from the query protocol to json but kept its query error codes. An error answer names the
modeled exception in `__type` (`com.amazonaws.sqs#QueueDoesNotExist`) and the old code in the
`x-amzn-query-error` header (`AWS.SimpleQueueService.NonExistentQueue;Sender`); botocore raises
`client.exceptions.QueueDoesNotExist` with `Error.Code` = the old code. So a ServiceError here carries
the old code, and QUERY_ERROR_SHAPES tells the protocol which exception it is.
"""

from __future__ import annotations

from typing import Any

from localcloud.wire import ServiceError

NON_EXISTENT_QUEUE = "AWS.SimpleQueueService.NonExistentQueue"

# query code -> the modeled exception's shape name (codes not listed are their own shape name, or an
# unmodeled error such as InvalidParameterValue, which botocore raises as a plain ClientError).
QUERY_ERROR_SHAPES = {
    NON_EXISTENT_QUEUE: "QueueDoesNotExist",
    "QueueAlreadyExists": "QueueNameExists",
    "AWS.SimpleQueueService.QueueDeletedRecently": "QueueDeletedRecently",
    "AWS.SimpleQueueService.PurgeQueueInProgress": "PurgeQueueInProgress",
    "AWS.SimpleQueueService.EmptyBatchRequest": "EmptyBatchRequest",
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest": "TooManyEntriesInBatchRequest",
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct": "BatchEntryIdsNotDistinct",
    "AWS.SimpleQueueService.InvalidBatchEntryId": "InvalidBatchEntryId",
    "AWS.SimpleQueueService.BatchRequestTooLong": "BatchRequestTooLong",
    "AWS.SimpleQueueService.MessageNotInflight": "MessageNotInflight",
    "AWS.SimpleQueueService.UnsupportedOperation": "UnsupportedOperation",
}


def queue_does_not_exist() -> ServiceError:
    return ServiceError(NON_EXISTENT_QUEUE, "The specified queue does not exist.")


def invalid_parameter(message: str) -> ServiceError:
    return ServiceError("InvalidParameterValue", message)


def invalid_value(value: object, parameter: str, reason: str) -> ServiceError:
    """AWS's wording for a parameter out of its range: `Value 11 for parameter X is invalid. Reason: ...`."""
    return invalid_parameter(f"Value {value} for parameter {parameter} is invalid. Reason: {reason}")


def missing_parameter(name: str) -> ServiceError:
    return ServiceError("MissingParameter", f"The request must contain the parameter {name}.")


def unknown_attribute(name: str) -> ServiceError:
    return ServiceError("InvalidAttributeName", f"Unknown Attribute {name}.")


def invalid_attribute_value(name: str, why: str = "") -> ServiceError:
    return ServiceError(
        "InvalidAttributeValue",
        f"Invalid value for the parameter {name}." + (f" Reason: {why}" if why else ""),
    )


def receipt_handle_invalid(handle: str) -> ServiceError:
    return ServiceError(
        "ReceiptHandleIsInvalid", f'The input receipt handle "{handle}" is not a valid receipt handle.'
    )


def fifo_not_implemented(what: str) -> ServiceError:
    return ServiceError(
        "AWS.SimpleQueueService.UnsupportedOperation",
        f"localcloud does not implement FIFO queues ({what}); use a standard queue",
    )


def batch_failure(entry_id: str, error: ServiceError) -> dict[str, Any]:
    """A *Batch operation's Failed entry for an entry that raised `error`."""
    return {"Id": entry_id, "SenderFault": error.status < 500, "Code": error.code, "Message": error.message}
