"""What the SageMaker modules share: ARNs, AWS-shaped validation errors, tags, sorting and paging, and how
a training job ends (Outcome)."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from localcloud.config import Config
from localcloud.protocols import load_service_model
from localcloud.store import Store
from localcloud.wire import ServiceError

# TrainingJobName, ModelPackageGroupName and ModelPackageName all use this pattern.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
ROLE_ARN_PATTERN = re.compile(r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
S3_URI_PATTERN = re.compile(r"s3://([^/]+)/?(.*)")
SORT_ORDERS = ("Ascending", "Descending")
MAX_TAGS = 50
TAGS_KIND = "sagemaker/tags"  # key: the resource's ARN


def now() -> float:
    """Epoch seconds at the millisecond precision clients see, so their time filters agree with ours."""
    return round(time.time(), 3)


def validation_error(message: str) -> ServiceError:
    return ServiceError("ValidationException", message)


def constraint_error(value: object, field: str, constraint: str) -> ServiceError:
    """AWS's message for a parameter outside its model constraints, naming the field and the rule."""
    return validation_error(
        f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
        f"Member must {constraint}"
    )


def check_name(value: str, field: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise constraint_error(
            value,
            field,
            f"satisfy regular expression pattern: ^{NAME_PATTERN.pattern}$ (at most 63 characters)",
        )
    return value


def check_choice(value: str, allowed: Sequence[str], field: str) -> str:
    if value not in allowed:
        raise constraint_error(value, field, f"satisfy enum value set: [{', '.join(allowed)}]")
    return value


def check_max_results(value: int, field: str = "maxResults", limit: int = 100) -> int:
    if not 1 <= value <= limit:
        raise constraint_error(value, field, f"have value between 1 and {limit}")
    return value


def parse_s3_uri(uri: str, field: str) -> tuple[str, str]:
    """(bucket, key or prefix) of an s3:// URI."""
    found = S3_URI_PATTERN.fullmatch(uri)
    if not found:
        raise constraint_error(uri, field, "be an S3 URI of the form s3://bucket/prefix")
    return found.group(1), found.group(2)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its final status, secondary status, transition message and FailureReason."""

    status: str
    secondary: str
    message: str
    failure_reason: str | None = None
    upload_model: bool = False


class JobEnded(Exception):
    """Raised inside a runner to end the job early with `outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def client_error(message: str) -> JobEnded:
    """A job failure caused by the job's own settings or data (SageMaker says "ClientError: ...")."""
    return JobEnded(Outcome("Failed", "Failed", "Training job failed", f"ClientError: {message}"))


class Arns:
    """SageMaker ARNs of this localcloud's account and region. Like AWS, they carry names in lower case."""

    def __init__(self, config: Config) -> None:
        self.prefix = f"arn:aws:sagemaker:{config.region}:{config.account_id}:"

    def make(self, resource_type: str, resource_id: str) -> str:
        return f"{self.prefix}{resource_type}/{resource_id.lower()}"

    def parse(self, arn: str) -> tuple[str, str] | None:
        """(resource type, resource id) of one of this account's ARNs, else None."""
        if not arn.startswith(self.prefix) or "/" not in arn:
            return None
        resource_type, _, resource_id = arn[len(self.prefix) :].partition("/")
        return resource_type, resource_id


@functools.cache
def _output_shape(operation: str) -> Any:
    return load_service_model("sagemaker").operation_model(operation).output_shape


def echoed(operation: str, request: dict[str, Any]) -> dict[str, Any]:
    """The request fields a Describe `operation` returns as they were given, in its output's shape.

    Create and Describe shapes differ in places, so members the output lacks are left out.
    """
    shape = _output_shape(operation)
    return {
        key: _in_shape(shape.members[key], value) for key, value in request.items() if key in shape.members
    }


def _in_shape(shape: Any, value: Any) -> Any:
    if shape.type_name == "structure" and isinstance(value, dict):
        return {
            key: _in_shape(shape.members[key], item) for key, item in value.items() if key in shape.members
        }
    if shape.type_name == "list" and isinstance(value, list):
        return [_in_shape(shape.member, item) for item in value]
    return value


# --- tags ----------------------------------------------------------------------------------------


def check_tags(tags: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    checked = []
    for tag in tags:
        key, value = tag["Key"], tag["Value"]
        if not 1 <= len(key) <= 128:
            raise constraint_error(key, "tags.member.key", "have length between 1 and 128")
        if len(value) > 256:
            raise constraint_error(value, "tags.member.value", "have length less than or equal to 256")
        if key.lower().startswith("aws:"):
            raise validation_error(f"Tag keys starting with 'aws:' are reserved for AWS use: {key!r}")
        checked.append({"Key": key, "Value": value})
    if len(checked) > MAX_TAGS:
        raise validation_error(f"A resource can have at most {MAX_TAGS} tags; {len(checked)} were given")
    return checked


def merge_tags(existing: list[dict[str, str]], added: list[dict[str, str]]) -> list[dict[str, str]]:
    """Tags after AddTags: a key that exists gets the new value, in its old place."""
    merged = {tag["Key"]: tag["Value"] for tag in existing}
    merged.update((tag["Key"], tag["Value"]) for tag in added)
    if len(merged) > MAX_TAGS:
        raise validation_error(f"A resource can have at most {MAX_TAGS} tags; this would make {len(merged)}")
    return [{"Key": key, "Value": value} for key, value in merged.items()]


class TagStore:
    """The tags of every SageMaker resource, by ARN, in the order they were first added."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, arn: str) -> list[dict[str, str]]:
        doc = self.store.get(TAGS_KIND, arn)
        return doc["tags"] if doc else []

    def put(self, arn: str, tags: list[dict[str, str]]) -> None:
        if tags:
            self.store.put(TAGS_KIND, arn, {"tags": tags})
        else:
            self.store.delete(TAGS_KIND, arn)

    def add(self, arn: str, tags: list[dict[str, str]]) -> list[dict[str, str]]:
        with self.store.transaction():
            merged = merge_tags(self.get(arn), tags)
            self.put(arn, merged)
        return merged

    def remove(self, arn: str, keys: Iterable[str]) -> None:
        dropped = set(keys)
        with self.store.transaction():
            self.put(arn, [tag for tag in self.get(arn) if tag["Key"] not in dropped])


# --- listing -------------------------------------------------------------------------------------


def sort_and_page(
    items: list[dict[str, Any]],
    sort_key: Callable[[dict[str, Any]], tuple],
    *,
    descending: bool,
    token: str | None,
    max_results: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `items` in sort order, and the NextToken of the rest (None on the last page).

    The token holds the sort key of the last item returned, so items created while a client pages
    neither shift nor repeat entries; sort keys must be unique (end them with the name).
    """
    ordered = sorted(items, key=sort_key, reverse=descending)
    start = 0
    if token:
        cursor = _decode_token(token)
        start = len(ordered)
        for index, item in enumerate(ordered):
            key = list(sort_key(item))
            if (key < cursor) if descending else (key > cursor):
                start = index
                break
    page = ordered[start : start + max_results]
    more = start + max_results < len(ordered)
    return page, _encode_token(list(sort_key(page[-1]))) if more else None


def _encode_token(cursor: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


def _decode_token(token: str) -> list[Any]:
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError):
        raise validation_error(f"Invalid pagination token: {token!r}") from None
    if not isinstance(cursor, list):
        raise validation_error(f"Invalid pagination token: {token!r}")
    return cursor


def time_filter(params: dict[str, Any], value: float | None, after: str, before: str) -> bool:
    """Whether `value` (epoch seconds) passes the request's `<after>`/`<before>` datetime filters."""
    if after in params and (value is None or value <= params[after].timestamp()):
        return False
    return not (before in params and (value is None or value >= params[before].timestamp()))
