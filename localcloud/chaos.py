"""Fault injection, for fault suites: make chosen operations fail as the real service would.

Modelled on LocalStack's Chaos API (``/_localstack/chaos/faults``)::

    POST   /_localcloud/chaos/faults   [{"service": "lambda", "operation": "Invoke", ...}, ...]  add rules
    GET    /_localcloud/chaos/faults   the rules in force
    DELETE /_localcloud/chaos/faults   remove them all

A rule matches a request when every field it names equals the request's: ``service`` and
``operation`` always, plus what the service offers (Lambda Invoke: ``function_name``, the
``qualifier`` the caller used, the ``version`` that would execute; SNS Publish: ``topic_arn``).
Rules live in memory only: a restart clears them. The endpoint sits behind the same front door as
everything else, so only this machine can use it.

What a matching request gets is the service's own failure, so clients see what they would see on
AWS. Lambda Invoke: a function error (``FunctionError: Unhandled``, payload ``{"errorType",
"errorMessage"}``), as if the handler had raised, without running it. SNS Publish: SNS's 500
``InternalError`` (``error_message`` its message), which boto3 retries and then raises as
InternalErrorException, delivering nothing: SNS is down.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from localcloud.wire import Request, Response, ServiceError, json_response

FAULTS_PATH = "/_localcloud/chaos/faults"
# What a service lets a rule match on, besides service and operation.
MATCH_FIELDS = {
    ("lambda", "Invoke"): ("function_name", "qualifier", "version"),
    ("sns", "Publish"): ("topic_arn",),
}
# What a rule may say about the failure; SNS's is always its InternalError, only the message varies.
RESULT_FIELDS = {
    ("lambda", "Invoke"): ("error_type", "error_message"),
    ("sns", "Publish"): ("error_message",),
}
DEFAULT_ERROR_TYPE = "InjectedFault"
MAX_RULES = 100


class FaultRules:
    """The rules in force; matched on hot paths, so an empty set costs one attribute read."""

    def __init__(self) -> None:
        self.rules: tuple[dict[str, str], ...] = ()
        self._lock = threading.Lock()

    def match(self, service: str, operation: str, **attributes: str | None) -> dict[str, str] | None:
        for rule in self.rules:
            if (
                rule["service"] == service
                and rule["operation"] == operation
                and all(
                    rule[name] == attributes.get(name)
                    for name in MATCH_FIELDS[(service, operation)]
                    if name in rule
                )
            ):
                return rule
        return None

    def add(self, rules: list[dict[str, Any]]) -> None:
        checked = [_checked(rule) for rule in rules]
        with self._lock:
            if len(self.rules) + len(checked) > MAX_RULES:
                raise ServiceError("LimitExceeded", f"at most {MAX_RULES} fault rules", 400)
            self.rules = (*self.rules, *checked)

    def clear(self) -> None:
        with self._lock:
            self.rules = ()

    def handle(self, request: Request) -> Response:
        """The /_localcloud/chaos/faults endpoint."""
        try:
            if request.method == "POST":
                body = request.body.read_all(64 * 1024, lambda limit: ServiceError("TooLarge", "", 413))
                try:
                    rules = json.loads(body)
                except ValueError as error:
                    raise ServiceError("InvalidRequest", f"the body is not JSON: {error}") from None
                self.add(rules if isinstance(rules, list) else [rules])
            elif request.method == "DELETE":
                self.clear()
            return json_response(list(self.rules))
        except ServiceError as error:
            return json_response({"error": {"code": error.code, "message": error.message}}, error.status)


def _checked(rule: Any) -> dict[str, str]:
    if not isinstance(rule, dict):
        raise ServiceError("InvalidRequest", f"a fault rule is a JSON object, got {type(rule).__name__}")
    key = (rule.get("service"), rule.get("operation"))
    if key not in MATCH_FIELDS:
        raise ServiceError(
            "InvalidRequest",
            f"localcloud injects faults into {sorted(f'{s}:{o}' for s, o in MATCH_FIELDS)}, not {key}",
        )
    allowed = {"service", "operation", *MATCH_FIELDS[key], *RESULT_FIELDS[key]}
    unknown = sorted(set(rule) - allowed)
    if unknown:
        raise ServiceError(
            "InvalidRequest", f"unknown fault rule field(s) {unknown}; allowed: {sorted(allowed)}"
        )
    if not all(isinstance(value, str) for value in rule.values()):
        raise ServiceError("InvalidRequest", "fault rule values are strings")
    defaults = {"error_type": DEFAULT_ERROR_TYPE} if "error_type" in RESULT_FIELDS[key] else {}
    return {**defaults, "error_message": "fault injected by localcloud", **rule}
