"""Routing: which service a request is for, and the error shape of one that reaches none.

In order:
1. `/_localcloud/...` endpoints of localcloud itself (health, fault rules);
2. signed requests: the service in the SigV4 credential scope, from a whole SigV4 Authorization header
   (`AWS4-HMAC-SHA256 Credential=AKID/date/region/s3/aws4_request, SignedHeaders=..., Signature=...`) or
   a presigned URL carrying X-Amz-Credential and X-Amz-Signature; S3's SigV2 (`Authorization: AWS
   AKID:sig`, or the AWSAccessKeyId/Signature query boto3 still presigns S3 URLs with) is S3's.
   Signatures are never verified: any credentials work;
3. unsigned requests reach only the paths services publish unsigned (an HTTP API's invoke URL, the
   Lambda code download); anything else unsigned gets the service's own "missing authentication"
   error (S3 AccessDenied, MissingAuthenticationToken(Exception) for X-Amz-Target / Action= requests),
   403, having changed nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from localcloud.service import Service
from localcloud.wire import Request, Response, ServiceError

# A whole SigV4 Authorization header, as every AWS SDK writes it.
_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request,\s*"
    r"SignedHeaders=[a-z0-9;._-]+,\s*Signature=[0-9a-f]+"
)
_SIGV2 = re.compile(r"AWS [^:\s]+:\S+")  # S3's legacy header signature

InternalHandler = Callable[[Request], Response]


def credential_scope(headers: dict[str, str], query: dict[str, list[str]]) -> tuple[str | None, str] | None:
    """(region, signing service) of a signed request, None if it is not signed.

    Signed means a whole SigV4 Authorization header, a presigned URL with X-Amz-Credential and
    X-Amz-Signature, or S3's SigV2 (header or query; it carries no region). Nothing is verified.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        found = _SIGV4.fullmatch(authorization)
        if found:
            return found.group(1), found.group(2)
        return (None, "s3") if _SIGV2.fullmatch(authorization) else None
    if "X-Amz-Signature" in query:
        credential = query.get("X-Amz-Credential")
        parts = credential[0].split("/") if credential else []
        if len(parts) == 5 and parts[4] == "aws4_request":
            return parts[2], parts[3]
    elif "Signature" in query and "AWSAccessKeyId" in query:
        return None, "s3"
    return None


class Router:
    def __init__(self, services: Iterable[Service], internal: dict[tuple[str, str], InternalHandler]) -> None:
        self.services = list(services)
        self._internal = internal
        self._by_signing_name = {name: svc for svc in self.services for name in svc.signing_names}
        self._by_target_prefix = {
            svc.model.metadata["targetPrefix"]: svc for svc in self.services if svc.model.protocol == "json"
        }
        self._by_path_prefix = [
            (prefix, svc) for svc in self.services for prefix in svc.unsigned_path_prefixes
        ]
        self._query_service = next((svc for svc in self.services if svc.model.protocol == "query"), None)
        self._s3 = self._by_signing_name.get("s3")

    def dispatch(self, request: Request) -> Response:
        internal = self._internal.get((request.method, request.path))
        if internal is not None:
            return internal(request)
        if request.signing_name is not None:
            service = self._by_signing_name.get(request.signing_name)
            if service is None:
                return _unknown_service(request, [svc.model_name for svc in self.services])
            return service.handle(request)
        for prefix, service in self._by_path_prefix:
            if request.path.startswith(prefix):
                return service.handle(request)
        return self.error_response(
            request,
            ServiceError(
                "MissingAuthentication",
                "localcloud serves only signed requests here (any credentials work): this one has neither a "
                "SigV4 Authorization header nor a presigned URL's X-Amz-Signature",
                403,
            ),
        )

    def error_response(self, request: Request, error: ServiceError) -> Response:
        """`error` in the shape of the service the request looks meant for (S3 when nothing says)."""
        service = self._shape_service(request)
        if service is None:
            return json_error(error)
        if error.code == "MissingAuthentication":  # each protocol names a missing signature its own way
            code = {"json": "MissingAuthenticationTokenException", "query": "MissingAuthenticationToken"}
            error = ServiceError(
                code.get(service.model.protocol, "AccessDenied"), error.message, error.status
            )
        elif error.code == "AccessDenied" and service.model.protocol in ("json", "rest-json"):
            error = ServiceError("AccessDeniedException", error.message, error.status)
        return service.protocol.serialize_error(error, request)

    def _shape_service(self, request: Request) -> Service | None:
        if request.signing_name is not None:
            return self._by_signing_name.get(request.signing_name)
        target = request.headers.get("x-amz-target")
        if target:
            return self._by_target_prefix.get(target.rpartition(".")[0])
        form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        if self._query_service is not None and (
            "Action" in request.query or (form and request.method == "POST")
        ):
            return self._query_service
        return self._s3


def _unknown_service(request: Request, served: list[str]) -> Response:
    name = request.signing_name or "requested"
    message = f"localcloud does not implement the {name} service; it serves {', '.join(served)}"
    return json_error(ServiceError("NotImplemented", message, 501))


def json_error(error: ServiceError) -> Response:
    body = json.dumps({"__type": error.code, "message": error.message}).encode()
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error.code}
    return Response(error.status, headers, body)
