"""Amazon API Gateway v2 (rest-json, signing name "apigateway"): HTTP APIs that invoke Lambda functions.

Control plane: CreateApi (quick create: Target = a Lambda function, version or alias ARN, and a RouteKey
such as "POST /mnist"; without a RouteKey the route is "$default"), GetApi(s), DeleteApi, and the routes,
integrations and stages a quick create makes (GetRoute(s), GetIntegration(s), GetStage(s)).

Data plane: every HTTP API is served on localcloud's own port at

    <endpoint>/_aws/execute-api/<apiId>/<path>          e.g. http://127.0.0.1:4566/_aws/execute-api/a1b2c3d4e5/mnist

which is its ApiEndpoint (AWS's is https://<apiId>.execute-api.<region>.amazonaws.com; a path prefix
works with any HTTP client and needs no DNS). A request that matches a route becomes a payload format 2.0
event for the Lambda integration, and the function's answer becomes the HTTP response, as on AWS:
`{"statusCode", "headers", "body", "isBase64Encoded", "cookies"}`, or any other JSON value, which is sent
as a 200 application/json body. No route: 404 {"message":"Not Found"}; the function failed:
500 {"message":"Internal Server Error"}; it was throttled: 503 {"message":"Service Unavailable"}.

Only the "$default" stage exists; requests carry no stage name in their path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode

from localcloud.awslambda.validation import MAX_INVOKE_PAYLOAD_BYTES
from localcloud.config import Config
from localcloud.service import Backend, Service, operation
from localcloud.store import Store
from localcloud.wire import Request, Response, ServiceError, json_response

if TYPE_CHECKING:
    from localcloud.app import LocalCloud
    from localcloud.awslambda import LambdaBackend

API_KIND = "apigateway/api"
EXECUTE_PREFIX = "/_aws/execute-api/"
MAX_BODY_BYTES = 10 * 1024 * 1024  # HTTP API payload limit
LIVE_API_CACHE = 1024  # compiled APIs kept in memory; an account may have 600 HTTP APIs per region
TOO_LARGE = {"message": "Request Entity Too Large"}
DEFAULT_STAGE = "$default"
INTEGRATION_TIMEOUT_MS = 30_000

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
_ROUTE_KEY = re.compile(r"(?P<method>[A-Z]+) (?P<path>/[^\s]*)")
_LAMBDA_ARN = re.compile(
    r"arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:[a-zA-Z0-9_-]+(:[a-zA-Z0-9$_-]+)?"
)
_APIGATEWAY_LAMBDA_URI = re.compile(
    r"arn:aws[a-zA-Z-]*:apigateway:[a-z0-9-]+:lambda:path/2015-03-31/functions/(?P<arn>.+)/invocations"
)
_TEXT_TYPES = re.compile(
    r"(text/.*|application/(json|javascript|xml|x-www-form-urlencoded|[\w.+-]+\+(json|xml)))", re.IGNORECASE
)
_ID_ALPHABET = string.ascii_lowercase + string.digits
_API_ID = re.compile(r"[a-z0-9]{10}")

NOT_FOUND = json_response({"message": "Not Found"}, 404)


def _new_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _not_found(message: str) -> ServiceError:
    return ServiceError("NotFoundException", message, 404)


def _bad_request(message: str) -> ServiceError:
    return ServiceError("BadRequestException", message, 400)


def _lambda_arn(target: str) -> str:
    """The Lambda ARN an integration invokes, from a function ARN or API Gateway's invocation URI."""
    found = _APIGATEWAY_LAMBDA_URI.fullmatch(target)
    arn = found.group("arn") if found else target
    if not _LAMBDA_ARN.fullmatch(arn):
        raise _bad_request(
            f"Target {target!r} is not a Lambda function ARN (arn:aws:lambda:<region>:<account>:function:<name>"
            "[:<alias or version>]); localcloud's HTTP APIs integrate with Lambda functions only"
        )
    return arn


@dataclass
class _Route:
    """One route, compiled for matching: "POST /mnist", "ANY /items/{id}", "GET /{proxy+}", "$default"."""

    route_key: str
    integration_id: str | None
    method: str = "ANY"
    pattern: re.Pattern[str] | None = None
    names: list[str] = field(default_factory=list)
    rank: tuple[int, ...] = (0,)

    @classmethod
    def compile(cls, route_key: str, target: str | None) -> _Route:
        integration_id = target.removeprefix("integrations/") if target else None
        if route_key == "$default":
            return cls(route_key, integration_id, rank=(9, 0, 0, 0))
        found = _ROUTE_KEY.fullmatch(route_key)
        if found is None or found.group("method") not in _METHODS:
            raise _bad_request(
                f'Invalid route key {route_key!r}: use "$default" or "<METHOD> /<path>" with METHOD one of '
                f"{', '.join(_METHODS)}"
            )
        regex, names, literals, greedy = "", [], 0, 0
        for segment in found.group("path").strip("/").split("/") if found.group("path") != "/" else []:
            if segment.startswith("{") and segment.endswith("+}"):
                names.append(segment[1:-2])
                regex += "/(.+)"
                greedy += 1
            elif segment.startswith("{") and segment.endswith("}"):
                names.append(segment[1:-1])
                regex += "/([^/]+)"
            else:
                regex += "/" + re.escape(segment)
                literals += 1
        method = found.group("method")
        # The most specific route wins: no greedy parameter, more literal segments, an exact method.
        rank = (greedy, -literals, len(names), 1 if method == "ANY" else 0)
        pattern = re.compile(regex + "/?" if regex else "/")
        return cls(route_key, integration_id, method, pattern, names, rank)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.pattern is None:
            return {}
        if self.method not in ("ANY", method):
            return None
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {name: unquote(value) for name, value in zip(self.names, found.groups(), strict=True)}


@dataclass
class _LiveApi:
    """What serving an API needs, kept in memory: its routes in match order and their Lambda targets."""

    api_id: str
    routes: list[_Route]
    targets: dict[str, tuple[str, str | None]]  # integration id -> (function name, qualifier)


class ApiGatewayBackend(Backend):
    def __init__(self, store: Store, config: Config, lambda_: LambdaBackend) -> None:
        self.store = store
        self.config = config
        self.lambda_ = lambda_
        self.endpoint_url = ""
        # Only APIs that exist, at most LIVE_API_CACHE (the oldest is dropped): never a requested id that
        # does not, or any client could grow it without bound.
        self._live: dict[str, _LiveApi] = {}
        self._lock = threading.Lock()

    def start(self, cloud: LocalCloud) -> None:
        self.endpoint_url = cloud.endpoint_url

    def counts(self) -> dict[str, int]:
        return {"apis": self.store.count(API_KIND)}

    def api_endpoint(self, api_id: str) -> str:
        return f"{self.endpoint_url}{EXECUTE_PREFIX}{api_id}"

    # --- control plane -------------------------------------------------------------------------------

    def create_api(self, params: dict[str, Any]) -> dict[str, Any]:
        if params["ProtocolType"] != "HTTP":
            raise _bad_request(
                f"localcloud serves HTTP APIs only; ProtocolType {params['ProtocolType']} is not supported"
            )
        target, route_key = params.get("Target"), params.get("RouteKey")
        if route_key and not target:
            raise _bad_request("RouteKey is only valid with Target: a quick create needs both")
        now = time.time()
        api_id = _new_id(10)
        api = {
            "ApiId": api_id,
            "Name": params["Name"],
            "ProtocolType": "HTTP",
            "RouteSelectionExpression": params.get(
                "RouteSelectionExpression", "${request.method} ${request.path}"
            ),
            "ApiKeySelectionExpression": params.get("ApiKeySelectionExpression", "$request.header.x-api-key"),
            "CreatedDate": now,
            "Description": params.get("Description"),
            "DisableExecuteApiEndpoint": params.get("DisableExecuteApiEndpoint", False),
            "CorsConfiguration": params.get("CorsConfiguration"),
            "Version": params.get("Version"),
            "Tags": params.get("Tags") or {},
        }
        doc = {
            "api": {k: v for k, v in api.items() if v is not None},
            "routes": {},
            "integrations": {},
            "stages": {},
        }
        if target:
            arn = _lambda_arn(target)
            self.lambda_.parse_ref(arn)  # a malformed ARN fails now, not on the first request
            route = _Route.compile(route_key or "$default", None)
            integration_id, route_id = _new_id(7), _new_id(7)
            doc["integrations"][integration_id] = {
                "IntegrationId": integration_id,
                "IntegrationType": "AWS_PROXY",
                "IntegrationUri": target,
                "IntegrationMethod": "POST",
                "PayloadFormatVersion": "2.0",
                "ConnectionType": "INTERNET",
                "TimeoutInMillis": INTEGRATION_TIMEOUT_MS,
                "ApiGatewayManaged": True,
            }
            doc["routes"][route_id] = {
                "RouteId": route_id,
                "RouteKey": route.route_key,
                "Target": f"integrations/{integration_id}",
                "AuthorizationType": "NONE",
                "ApiKeyRequired": False,
                "ApiGatewayManaged": True,
            }
            doc["stages"][DEFAULT_STAGE] = {
                "StageName": DEFAULT_STAGE,
                "AutoDeploy": True,
                "ApiGatewayManaged": True,
                "CreatedDate": now,
                "LastUpdatedDate": now,
                "DefaultRouteSettings": {"DetailedMetricsEnabled": False},
                "RouteSettings": {},
                "StageVariables": {},
                "Tags": {},
            }
        self.store.put(API_KIND, api_id, doc)
        with self._lock:
            self._live.pop(api_id, None)
        return self._api_out(doc)

    def _doc(self, api_id: str) -> dict[str, Any]:
        doc = self.store.get(API_KIND, api_id)
        if doc is None:
            raise _not_found(f"Invalid API identifier specified {self.config.account_id}:{api_id}")
        return doc

    def _api_out(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc["api"], "ApiEndpoint": self.api_endpoint(doc["api"]["ApiId"])}

    def get_api(self, api_id: str) -> dict[str, Any]:
        return self._api_out(self._doc(api_id))

    def get_apis(self) -> list[dict[str, Any]]:
        return [self._api_out(doc) for _, doc in self.store.scan(API_KIND)]

    def delete_api(self, api_id: str) -> None:
        with self.store.transaction():
            self._doc(api_id)
            self.store.delete(API_KIND, api_id)
        with self._lock:
            self._live.pop(api_id, None)

    def items(self, api_id: str, kind: str) -> list[dict[str, Any]]:
        """The routes, integrations or stages of an API."""
        return list(self._doc(api_id)[kind].values())

    def item(self, api_id: str, kind: str, item_id: str) -> dict[str, Any]:
        found = self._doc(api_id)[kind].get(item_id)
        if found is None:
            singular = {"routes": "Route", "integrations": "Integration", "stages": "Stage"}[kind]
            raise _not_found(f"Invalid {singular} identifier specified {item_id}")
        return found

    # --- data plane ---------------------------------------------------------------------------------

    def _live_api(self, api_id: str) -> _LiveApi | None:
        live = self._live.get(api_id)
        if live is not None:
            return live
        if not _API_ID.fullmatch(api_id):
            return None  # not an id CreateApi makes: no store lookup
        doc = self.store.get(API_KIND, api_id)
        if doc is None:
            return None
        routes = sorted(
            (_Route.compile(r["RouteKey"], r.get("Target")) for r in doc["routes"].values()),
            key=lambda route: route.rank,
        )
        targets = {
            integration_id: self.lambda_.parse_ref(_lambda_arn(integration["IntegrationUri"]))
            for integration_id, integration in doc["integrations"].items()
        }
        live = _LiveApi(api_id, routes, targets)
        with self._lock:
            if len(self._live) >= LIVE_API_CACHE:
                self._live.pop(next(iter(self._live)))
            self._live[api_id] = live
        return live

    def execute(self, request: Request) -> Response:
        """Serve one request to <endpoint>/_aws/execute-api/<apiId>/<path> through the API's Lambda."""
        api_id, _, rest = request.path[len(EXECUTE_PREFIX) :].partition("/")
        api = self._live_api(api_id)
        if api is None:
            return NOT_FOUND
        path = "/" + rest
        for route in api.routes:
            path_parameters = route.match(request.method, path)
            if path_parameters is not None:
                break
        else:
            return NOT_FOUND
        target = api.targets.get(route.integration_id or "")
        if target is None:
            return NOT_FOUND
        try:
            # The event that carries the body must fit Lambda's 6 MB, so no longer body can be invoked with:
            # refused before it is read, as the HTTP API's own 10 MB limit would be.
            body = request.body.read_all(min(MAX_BODY_BYTES, MAX_INVOKE_PAYLOAD_BYTES), _too_large)
        except ServiceError:
            return _too_large_response(request)
        payload = json.dumps(
            self._event(request, api_id, route.route_key, path, path_parameters, body)
        ).encode()
        if len(payload) > MAX_INVOKE_PAYLOAD_BYTES:  # headers and base64 made a body that fit too large
            return _too_large_response(request)
        try:
            result = self.lambda_.invoke(target[0], target[1], payload)
        except ServiceError as error:
            if error.status == 413:
                return _too_large_response(request)
            status, message = (
                (503, "Service Unavailable") if error.status == 429 else (500, "Internal Server Error")
            )
            return json_response({"message": message}, status, {"Apigw-Requestid": request.request_id})
        if result.function_error:
            return json_response(
                {"message": "Internal Server Error"}, 500, {"Apigw-Requestid": request.request_id}
            )
        return _http_response(result.payload, request.request_id)

    def _event(
        self,
        request: Request,
        api_id: str,
        route_key: str,
        path: str,
        path_parameters: dict[str, str],
        body: bytes,
    ) -> dict[str, Any]:
        """The payload format 2.0 event for this request."""
        headers = dict(request.headers)
        cookies = headers.pop("cookie", None)
        now = time.time()
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": path,
            "rawQueryString": urlencode(request.query, doseq=True),
            "headers": headers,
            "requestContext": {
                "accountId": self.config.account_id,
                "apiId": api_id,
                "domainName": headers.get("host", ""),
                "domainPrefix": api_id,
                "http": {
                    "method": request.method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": request.client_address,
                    "userAgent": headers.get("user-agent", ""),
                },
                "requestId": request.request_id,
                "routeKey": route_key,
                "stage": DEFAULT_STAGE,
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "isBase64Encoded": False,
        }
        if cookies:
            event["cookies"] = [cookie.strip() for cookie in cookies.split(";")]
        if request.query:
            event["queryStringParameters"] = {key: ",".join(values) for key, values in request.query.items()}
        if path_parameters:
            event["pathParameters"] = path_parameters
        if body:
            content_type = headers.get("content-type", "")
            text = None
            if not content_type or _TEXT_TYPES.match(content_type):
                try:
                    text = body.decode()
                except UnicodeDecodeError:
                    text = None
            if text is None:  # binary bodies travel base64-encoded, as API Gateway does
                event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
            else:
                event["body"] = text
        return event


def _too_large_response(request: Request) -> Response:
    return json_response(TOO_LARGE, 413, {"Apigw-Requestid": request.request_id})


def _too_large(limit: int) -> ServiceError:
    return ServiceError("RequestEntityTooLarge", f"the body is over {limit} bytes", 413)


def _http_response(payload: bytes, request_id: str) -> Response:
    """The HTTP response a payload format 2.0 Lambda answer stands for."""
    internal_error = json_response({"message": "Internal Server Error"}, 500, {"Apigw-Requestid": request_id})
    try:
        answer = json.loads(payload) if payload else None
    except ValueError:
        return internal_error
    if not (isinstance(answer, dict) and "statusCode" in answer):
        # Any other JSON value is the body of a 200 application/json response.
        return Response(200, {"Content-Type": "application/json", "Apigw-Requestid": request_id}, payload)
    try:
        status = int(answer["statusCode"])
        headers = {str(name): str(value) for name, value in (answer.get("headers") or {}).items()}
        body = answer.get("body")
        if body is None:
            data = b""
        elif answer.get("isBase64Encoded"):
            data = base64.b64decode(body, validate=True)
        else:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
    except (TypeError, ValueError, AttributeError, binascii.Error):
        return internal_error
    if not 100 <= status <= 599:
        return internal_error
    cookies = answer.get("cookies") or []
    if cookies:
        headers["Set-Cookie"] = str(cookies[-1])  # one header per name here; the last cookie wins
    headers.setdefault("Content-Type", "application/json")
    headers["Apigw-Requestid"] = request_id
    return Response(status, headers, data)


def _page(items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
    """GetApis-style pagination: MaxResults (a string in this API) and an opaque NextToken."""
    try:
        limit = int(params.get("MaxResults") or 100)
    except ValueError:
        raise _bad_request(f"MaxResults must be a number, got {params['MaxResults']!r}") from None
    start = 0
    if params.get("NextToken"):
        keys = [item[key] for item in items]
        if params["NextToken"] not in keys:
            raise _bad_request(f"Invalid NextToken {params['NextToken']!r}")
        start = keys.index(params["NextToken"]) + 1
    page = items[start : start + limit]
    more = start + limit < len(items)
    return {"Items": page, "NextToken": page[-1][key] if more and page else None}


class ApiGatewayService(Service):
    model_name = "apigatewayv2"
    extra_signing_names = ("execute-api",)  # an IAM-signed call to an invoke URL
    unsigned_path_prefixes = (EXECUTE_PREFIX,)
    validation_error_code = "BadRequestException"
    internal_error_code = "InternalServerErrorException"
    backend: ApiGatewayBackend

    def handle(self, request: Request) -> Response:
        if request.path.startswith(EXECUTE_PREFIX):
            # An HTTP API's own traffic, answered in its shapes and headers.
            return dataclasses.replace(self.backend.execute(request), api_headers=False)
        return super().handle(request)

    @operation("CreateApi")
    def create_api(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.create_api(params)

    @operation("GetApi")
    def get_api(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.get_api(params["ApiId"])

    @operation("GetApis")
    def get_apis(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return _page(self.backend.get_apis(), params, "ApiId")

    @operation("DeleteApi")
    def delete_api(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_api(params["ApiId"])
        return {}

    @operation("GetRoutes")
    def get_routes(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return _page(self.backend.items(params["ApiId"], "routes"), params, "RouteId")

    @operation("GetRoute")
    def get_route(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.item(params["ApiId"], "routes", params["RouteId"])

    @operation("GetIntegrations")
    def get_integrations(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return _page(self.backend.items(params["ApiId"], "integrations"), params, "IntegrationId")

    @operation("GetIntegration")
    def get_integration(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.item(params["ApiId"], "integrations", params["IntegrationId"])

    @operation("GetStages")
    def get_stages(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return _page(self.backend.items(params["ApiId"], "stages"), params, "StageName")

    @operation("GetStage")
    def get_stage(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return self.backend.item(params["ApiId"], "stages", params["StageName"])
