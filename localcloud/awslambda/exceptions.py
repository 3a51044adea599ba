"""Lambda's errors, in the codes, statuses and words AWS uses (botocore raises them by code)."""

from __future__ import annotations

from typing import Any

from localcloud.wire import ServiceError


def not_found(message: str) -> ServiceError:
    return ServiceError("ResourceNotFoundException", message, 404, Type="User")


def invalid_parameter(message: str) -> ServiceError:
    return ServiceError("InvalidParameterValueException", message, 400, Type="User")


def constraint_error(value: Any, field: str, constraint: str) -> ServiceError:
    """AWS's message for a parameter outside its model constraints, naming the field and the rule."""
    return ServiceError(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {constraint}",
    )


def conflict(message: str) -> ServiceError:
    return ServiceError("ResourceConflictException", message, 409, Type="User")


def state_conflict(state: str) -> ServiceError:
    """The function (or version) cannot run or change while it is `state` (Pending, Failed, ...)."""
    return conflict(
        f"The operation cannot be performed at this time. The function is currently in the following state: {state}"
    )


def revision_mismatch() -> ServiceError:
    return ServiceError(
        "PreconditionFailedException",
        "The Revision Id provided does not match the latest Revision Id. "
        "Call the GetFunction/GetAlias API to retrieve the latest Revision Id",
        412,
        Type="User",
    )


def invalid_request_content(message: str) -> ServiceError:
    return ServiceError("InvalidRequestContentException", message, 400, Type="User")
