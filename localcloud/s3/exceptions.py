"""The S3 errors more than one module raises, with S3's codes, messages and extra fields."""

from __future__ import annotations

from localcloud.wire import ServiceError


def entity_too_large(size: int, limit: int) -> ServiceError:
    return ServiceError(
        "EntityTooLarge",
        "Your proposed upload exceeds the maximum allowed size",
        ProposedSize=size,
        MaxSizeAllowed=limit,
    )


def invalid_range(header: str | None, size: int) -> ServiceError:
    return ServiceError(
        "InvalidRange",
        "The requested range is not satisfiable",
        416,
        RangeRequested=header,
        ActualObjectSize=size,
    )


def precondition_failed(condition: str) -> ServiceError:
    return ServiceError(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        412,
        Condition=condition,
    )
