"""The Lambda wire API (rest-json): each operation's parameters to a LambdaBackend call, and back.

(The package is `awslambda` because `lambda` is a Python keyword.)
"""

from __future__ import annotations

import os
from typing import Any

from localcloud.awslambda.backend import LambdaBackend
from localcloud.awslambda.validation import (
    MAX_EVENT_PAYLOAD_BYTES,
    MAX_INVOKE_PAYLOAD_BYTES,
    MAX_REQUEST_BYTES,
    check_invocation_type,
    check_json,
    paged,
    payload_too_large,
)
from localcloud.service import Service, operation, route
from localcloud.wire import FileBody, Request, Response, ServiceError


class LambdaService(Service):
    model_name = "lambda"
    validation_error_code = "ValidationException"
    internal_error_code = "ServiceException"
    unsigned_path_prefixes = ("/_localcloud/lambda/",)
    backend: LambdaBackend

    def body_limit(self, operation_name: str | None, request: Request) -> int:
        if operation_name == "Invoke":  # checked before the payload is read, as Lambda does
            event = request.headers.get("x-amz-invocation-type") == "Event"
            return MAX_EVENT_PAYLOAD_BYTES if event else MAX_INVOKE_PAYLOAD_BYTES
        if operation_name in ("CreateFunction", "UpdateFunctionCode"):
            return MAX_REQUEST_BYTES  # the zip travels base64-encoded in the JSON body
        return self.config.max_request_bytes

    def request_too_large(self, limit: int) -> ServiceError:
        return payload_too_large(limit)

    # --- functions -----------------------------------------------------------------------------------

    @operation("CreateFunction")
    def create_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.create_function(params)

    @operation("GetFunction")
    def get_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.get_function(params["FunctionName"], params.get("Qualifier"))

    @operation("GetFunctionConfiguration")
    def get_function_configuration(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.configuration(params["FunctionName"], params.get("Qualifier"))

    @operation("ListFunctions")
    def list_functions(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        functions = self.backend.list_functions()
        page, marker = paged(
            functions, params.get("Marker"), params.get("MaxItems"), lambda f: f["FunctionName"]
        )
        return {"Functions": page, "NextMarker": marker}

    @operation("UpdateFunctionCode")
    def update_function_code(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.update_function_code(params)

    @operation("UpdateFunctionConfiguration")
    def update_function_configuration(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.update_function_configuration(params)

    @operation("DeleteFunction")
    def delete_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_function(params["FunctionName"], params.get("Qualifier"))
        return {"StatusCode": 204}

    # --- versions and aliases -------------------------------------------------------------------------

    @operation("PublishVersion")
    def publish_version(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.publish_version(
            params["FunctionName"],
            params.get("CodeSha256"),
            params.get("Description"),
            params.get("RevisionId"),
        )

    @operation("ListVersionsByFunction")
    def list_versions_by_function(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        versions = self.backend.list_versions(params["FunctionName"])
        page, marker = paged(versions, params.get("Marker"), params.get("MaxItems"), lambda v: v["Version"])
        return {"Versions": page, "NextMarker": marker}

    @operation("CreateAlias")
    def create_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.create_alias(
            params["FunctionName"],
            params["Name"],
            params["FunctionVersion"],
            params.get("Description", ""),
            params.get("RoutingConfig"),
        )

    @operation("GetAlias")
    def get_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.alias(params["FunctionName"], params["Name"])

    @operation("UpdateAlias")
    def update_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.update_alias(params["FunctionName"], params["Name"], params)

    @operation("DeleteAlias")
    def delete_alias(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_alias(params["FunctionName"], params["Name"])
        return {}

    @operation("ListAliases")
    def list_aliases(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        aliases = self.backend.list_aliases(params["FunctionName"], params.get("FunctionVersion"))
        page, marker = paged(aliases, params.get("Marker"), params.get("MaxItems"), lambda a: a["Name"])
        return {"Aliases": page, "NextMarker": marker}

    # --- permissions -----------------------------------------------------------------------------------

    @operation("AddPermission")
    def add_permission(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {
            "Statement": self.backend.add_permission(params["FunctionName"], params.get("Qualifier"), params)
        }

    @operation("GetPolicy")
    def get_policy(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        name, _ = self.backend.parse_ref(params["FunctionName"])
        return {
            "Policy": self.backend.policy(params["FunctionName"]),
            "RevisionId": self.backend.function(name)["latest"]["RevisionId"],
        }

    @operation("RemovePermission")
    def remove_permission(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.remove_permission(params["FunctionName"], params["StatementId"])
        return {}

    # --- invoking ----------------------------------------------------------------------------------------

    @operation("Invoke")
    def invoke(self, params: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        invocation_type = params.get("InvocationType", "RequestResponse")
        check_invocation_type(invocation_type)
        payload = params.get("Payload") or b""
        if payload and invocation_type != "DryRun":
            check_json(payload)
        result = self.backend.invoke(
            params["FunctionName"],
            params.get("Qualifier"),
            payload,
            invocation_type=invocation_type,
            tail=params.get("LogType") == "Tail",
            client_context=params.get("ClientContext"),
        )
        if result is None:
            return {"StatusCode": 204 if invocation_type == "DryRun" else 202}
        response = self.serialize(
            "Invoke",
            {
                "StatusCode": 200,
                "FunctionError": result.function_error,
                "LogResult": result.log_tail,
                "ExecutedVersion": result.executed_version,
                "Payload": result.payload,
            },
            request,
        )
        response.headers["Content-Type"] = "application/json"
        return response

    @route("GET", "/_localcloud/lambda/code/{CodeFile}")
    def download_code(self, params: dict[str, Any], request: Request) -> Response:
        """GetFunction's Code.Location: the deployment package as uploaded."""
        code_id = params["CodeFile"].removesuffix(".zip")
        file = self.backend.open_code(code_id)
        size = os.fstat(file.fileno()).st_size
        return Response(200, {"Content-Type": "application/zip"}, FileBody(file, 0, size))
