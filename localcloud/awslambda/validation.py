"""What Lambda checks before it changes anything: names and ARNs, settings, payloads, paging markers.

Pure functions of the request; they raise the error AWS gives (exceptions.py). Checks that need state
(does this version exist?) stay in the backend.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from localcloud.awslambda.exceptions import constraint_error, invalid_parameter, invalid_request_content
from localcloud.awslambda.runtime.worker import RESERVED_ENVIRONMENT
from localcloud.wire import ServiceError

LATEST = "$LATEST"
MAX_INVOKE_PAYLOAD_BYTES = 6 * 1024 * 1024  # synchronous Invoke request payload, as on AWS
MAX_EVENT_PAYLOAD_BYTES = 1024 * 1024  # an Event (asynchronous) invocation's payload, as on AWS since 2025
MAX_REQUEST_BYTES = 70_167_211  # a CreateFunction body with a 50 MB zip, base64-encoded, as on AWS
MAX_ENVIRONMENT_BYTES = 4096
DEFAULT_LIST_ITEMS = 50
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")

FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
VERSION_NUMBER = re.compile(r"[0-9]+")
_FUNCTION_REF = re.compile(
    r"(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:|\d{12}:function:)?"
    r"(?P<name>[a-zA-Z0-9_-]{1,64})(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9_-]{1,128}))?"
)
_ALIAS_NAME = re.compile(r"(?!^[0-9]+$)[a-zA-Z0-9_-]{1,128}")
_ROLE = re.compile(r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
_ENV_NAME = re.compile(r"[a-zA-Z]([a-zA-Z0-9_])+")
_PYTHON_RUNTIME = re.compile(r"python3\.\d+")


# --- names -------------------------------------------------------------------------------------------


def parse_function_ref(function_name: str, qualifier: str | None = None) -> tuple[str, str | None]:
    """(name, qualifier) from a name, ARN or partial ARN, with or without ":qualifier"."""
    found = _FUNCTION_REF.fullmatch(function_name)
    if found is None:
        raise constraint_error(
            function_name,
            "functionName",
            "Member must satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:)?"
            r"([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)"
            r"(:(\$LATEST|[a-zA-Z0-9-_]+))?",
        )
    derived = found.group("qualifier")
    if derived and qualifier and derived != qualifier:
        raise invalid_parameter(
            "The derived qualifier from the function name does not match the specified qualifier."
        )
    return found.group("name"), derived or qualifier or None


def check_alias_name(alias: str) -> None:
    if not _ALIAS_NAME.fullmatch(alias):
        raise constraint_error(
            alias, "name", r"Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"
        )


def check_version_name(version: str) -> None:
    """`version` names $LATEST or a version number (an alias may point at nothing else)."""
    if version != LATEST and not VERSION_NUMBER.fullmatch(version):
        raise constraint_error(
            version,
            "functionVersion",
            r"Member must satisfy regular expression pattern: (\$LATEST|[0-9]+)",
        )


# --- settings ----------------------------------------------------------------------------------------


def check_runtime(runtime: str) -> None:
    if not _PYTHON_RUNTIME.fullmatch(runtime):
        raise invalid_parameter(
            f"localcloud runs Python functions only (python3.x runtimes, run with its own interpreter); "
            f"runtime {runtime!r} is not supported"
        )


def check_role(role: str) -> None:
    if not _ROLE.fullmatch(role):
        raise constraint_error(
            role,
            "role",
            r"Member must satisfy regular expression pattern: arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+",
        )


def checked_limits(timeout: int, memory: int) -> tuple[int, int]:
    if not 1 <= timeout <= 900:
        bound = "greater than or equal to 1" if timeout < 1 else "less than or equal to 900"
        raise constraint_error(timeout, "timeout", f"Member must have value {bound}")
    if not 128 <= memory <= 10240:
        bound = "greater than or equal to 128" if memory < 128 else "less than or equal to 10240"
        raise constraint_error(memory, "memorySize", f"Member must have value {bound}")
    return timeout, memory


def checked_description(description: str) -> str:
    if len(description) > 256:
        raise constraint_error(
            description[:20] + "...", "description", "Member must have length less than or equal to 256"
        )
    return description


def checked_environment(environment: dict[str, Any] | None) -> dict[str, str] | None:
    if environment is None:
        return None
    variables = environment.get("Variables") or {}
    for key in variables:
        if not _ENV_NAME.fullmatch(key):
            raise constraint_error(
                key,
                "environment.variables",
                "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [a-zA-Z]([a-zA-Z0-9_])+]",
            )
    reserved = sorted(set(variables) & RESERVED_ENVIRONMENT)
    if reserved:
        raise invalid_parameter(
            "Lambda was unable to configure your environment variables because the environment variables you have "
            "provided contains reserved keys that are currently not supported for modification. "
            f"Reserved keys used in this request: {', '.join(reserved)}"
        )
    measured = json.dumps(variables, separators=(",", ":"))
    if len(measured.encode()) > MAX_ENVIRONMENT_BYTES:
        raise invalid_parameter(
            "Lambda was unable to configure your environment variables because the environment variables you have "
            f"provided exceeded the 4KB limit. String measured: {measured[:200]}"
        )
    return {key: str(value) for key, value in variables.items()}


def checked_routing_weights(version: str, routing: dict[str, Any] | None) -> dict[str, float]:
    """An alias's AdditionalVersionWeights beside `version`, checked as AWS does (not yet that they exist)."""
    weights = (routing or {}).get("AdditionalVersionWeights") or {}
    if len(weights) > 1:
        raise invalid_parameter("Number of items in AdditionalVersionWeights cannot be greater than 1")
    for extra, weight in weights.items():
        if not 0.0 <= weight < 1.0:
            raise constraint_error(
                f"{{{extra}={weight}}}",
                "routingConfig.additionalVersionWeights",
                "Map value must satisfy constraint: [Member must have value less than or equal to 1.0, "
                "Member must have value greater than or equal to 0.0, Member must not be null]",
            )
        if extra == version:
            raise invalid_parameter(
                f"Invalid function version {version}. Function version {version} is already included in "
                "routing configuration."
            )
        if version == LATEST:
            raise invalid_parameter("$LATEST is not supported for an alias pointing to more than 1 version")
        if not VERSION_NUMBER.fullmatch(extra):
            raise constraint_error(
                f"{{{extra}={weight}}}",
                "routingConfig.additionalVersionWeights",
                "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [0-9]+]",
            )
    return dict(weights)


# --- invocations -------------------------------------------------------------------------------------


def check_invocation_type(invocation_type: str) -> None:
    if invocation_type not in INVOCATION_TYPES:
        raise constraint_error(
            invocation_type,
            "invocationType",
            "Member must satisfy enum value set: [Event, RequestResponse, DryRun]",
        )


def check_payload_size(payload: bytes, invocation_type: str) -> None:
    limit = MAX_EVENT_PAYLOAD_BYTES if invocation_type == "Event" else MAX_INVOKE_PAYLOAD_BYTES
    if len(payload) > limit:
        raise payload_too_large(limit, len(payload))


def payload_too_large(limit: int, size: int | None = None) -> ServiceError:
    """Lambda's RequestEntityTooLargeException, in its words for Invoke and for other operations."""
    if limit == MAX_EVENT_PAYLOAD_BYTES:
        measured = f"{size} byte payload" if size is not None else "The payload"
        message = f"{measured} is too large for the Event invocation type (limit {limit} bytes)"
    elif limit == MAX_INVOKE_PAYLOAD_BYTES:
        message = f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
    else:
        message = f"Request must be smaller than {limit} bytes"
    return ServiceError("RequestEntityTooLargeException", message, 413, Type="User")


def check_json(payload: bytes) -> None:
    try:
        json.loads(payload)
    except ValueError as error:
        raise invalid_request_content(f"Could not parse request body into json: {error}") from None


def decoded_client_context(client_context: str) -> str:
    try:
        text = base64.b64decode(client_context, validate=True).decode()
        json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_parameter("Client context must be a valid Base64-encoded JSON object.") from None
    return text


# --- paging ------------------------------------------------------------------------------------------


def paged(
    items: list[dict[str, Any]], marker: str | None, max_items: int | None, key: Callable[[dict], str]
) -> tuple[list[dict[str, Any]], str | None]:
    """One page after `marker` (the key of the last item of the previous page) and the next marker."""
    limit = max_items or DEFAULT_LIST_ITEMS
    start = 0
    if marker:
        keys = [key(item) for item in items]
        if marker not in keys:
            raise invalid_parameter(f"Invalid marker {marker!r}; pass the NextMarker of the previous page.")
        start = keys.index(marker) + 1
    found = items[start : start + limit]
    more = start + limit < len(items)
    return found, key(found[-1]) if more and found else None
