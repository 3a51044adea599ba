"""The four AWS wire protocols localcloud speaks (json, rest-json, rest-xml, query), each written once.

Everything is driven by botocore's own service models, so the wire format is exactly what the clients
send and parse. A protocol:

- finds which operation a request is (X-Amz-Target, the model's HTTP method + requestUri, or Action=);
- turns the request into that operation's parameters, keyed by the member names boto3 uses
  (`{"Bucket": ..., "Key": ..., "Body": <stream>}`, `{"logGroupName": ...}`);
- turns the handler's returned dict, shaped like boto3's response, into headers, status and body;
- turns a ServiceError into the protocol's error shape.

How one member's value is written inside them (JSON, XML, header and query text, timestamps) is
shapes.py's.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, parse_qsl, unquote

import botocore.loaders
import botocore.model

from localcloud.shapes import (
    XML_DECLARATION,
    fill_xml,
    format_timestamp,
    from_text,
    from_wire_json,
    from_xml,
    member_shape,
    parse_xml,
    to_wire_json,
    to_xml,
    wire_name,
    xml_root,
)
from localcloud.wire import Request, Response, ServiceError

if TYPE_CHECKING:
    from localcloud.service import Service

Shape = botocore.model.Shape
Operation = botocore.model.OperationModel


@functools.cache
def load_service_model(name: str) -> botocore.model.ServiceModel:
    """The botocore model of an AWS service ("s3", "logs", "lambda", ...), as the installed boto3 sees it."""
    return botocore.model.ServiceModel(botocore.loaders.Loader().load_service_model(name, "service-2"), name)


def make_protocol(service: Service) -> Protocol:
    kinds = {
        "json": JsonProtocol,
        "rest-json": RestJsonProtocol,
        "rest-xml": RestXmlProtocol,
        "query": QueryProtocol,
    }
    return kinds[service.model.protocol](service)


# --- protocols ---------------------------------------------------------------------------------


class Protocol:
    """Base: finding the operation, parsing its input, serialising its output and errors."""

    content_type = "application/json"

    def __init__(self, service: Service) -> None:
        self.service = service
        self.model = service.model

    def find_operation(self, request: Request) -> tuple[Operation, dict[str, Any]]:
        raise NotImplementedError

    def parse_input(self, operation: Operation, request: Request, context: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def serialize_output(
        self, operation: Operation, data: dict[str, Any], request: Request, status: int | None = None
    ) -> Response:
        raise NotImplementedError

    def serialize_error(self, error: ServiceError, request: Request) -> Response:
        raise NotImplementedError

    def unknown_operation(self, description: str) -> ServiceError:
        return ServiceError(
            "UnknownOperationException", f"{self.model.metadata['serviceId']} has no operation {description}"
        )

    def _read_body(self, request: Request, operation: Operation | None) -> bytes:
        """The whole body, held to the operation's own limit before a byte of it is read."""
        limit = self.service.body_limit(operation.name if operation else None, request)
        return request.body.read_all(limit, self.service.request_too_large)


class JsonProtocol(Protocol):
    """X-Amz-Target "Prefix.Operation", JSON in, JSON out (Logs, SageMaker)."""

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.content_type = f"application/x-amz-json-{self.model.metadata.get('jsonVersion', '1.1')}"
        self._operations = set(self.model.operation_names)

    def find_operation(self, request: Request) -> tuple[Operation, dict[str, Any]]:
        target = request.headers.get("x-amz-target", "")
        prefix, _, name = target.rpartition(".")
        if prefix != self.model.metadata.get("targetPrefix") or name not in self._operations:
            raise self.unknown_operation(repr(target))
        return self.model.operation_model(name), {}

    def parse_input(self, operation: Operation, request: Request, context: dict[str, Any]) -> dict[str, Any]:
        raw = self._read_body(request, operation)
        try:
            document = json.loads(raw) if raw.strip() else {}
        except ValueError as error:
            raise ServiceError("SerializationException", f"request body is not valid JSON: {error}") from None
        return from_wire_json(operation.input_shape, document) if operation.input_shape else {}

    def serialize_output(
        self, operation: Operation, data: dict[str, Any], request: Request, status: int | None = None
    ) -> Response:
        document = to_wire_json(operation.output_shape, data) if operation.output_shape else {}
        body = json.dumps(document, separators=(",", ":")).encode()
        return Response(status or 200, {"Content-Type": self.content_type}, body)

    def serialize_error(self, error: ServiceError, request: Request) -> Response:
        error_type = error.code
        headers = {"Content-Type": self.content_type}
        if self.model.is_query_compatible:
            # A service that moved from query to json (SQS) keeps its query codes: __type names the
            # modeled exception (the service's query_error_shapes), x-amzn-query-error carries the code
            # botocore reports as Error.Code.
            shapes = getattr(self.service, "query_error_shapes", {})
            error_type = shapes.get(error.code, error.code)
            fault = "Sender" if error.status < 500 else "Receiver"
            headers["x-amzn-query-error"] = f"{error.code};{fault}"
        headers["x-amzn-ErrorType"] = error_type
        document = {"__type": error_type, "message": error.message, **error.fields}
        body = json.dumps(document, default=str).encode()
        return Response(error.status, headers, body)


class _RestRoute:
    """One operation's HTTP binding from the model, e.g. PUT /{Bucket}/{Key+} with x-amz-copy-source."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.method = operation.http["method"]
        path, _, query = operation.http["requestUri"].partition("?")
        self.pattern, self.names = compile_path_template(path)
        # x-id only labels the operation for humans; botocore may or may not send it.
        self.query_literals = {k: v for k, v in parse_qsl(query, keep_blank_values=True) if k != "x-id"}
        shape = operation.input_shape
        required = shape.required_members if shape else []
        self.required_query = [
            wire_name(shape.members[name], name)
            for name in required
            if shape.members[name].serialization.get("location") == "querystring"
        ]
        self.required_headers = [
            wire_name(shape.members[name], name).lower()
            for name in required
            if shape.members[name].serialization.get("location") == "header"
        ]
        # The most specific binding wins: GET /{Bucket}/{Key+}?uploadId=... is ListParts, not GetObject.
        # Between equal bindings the current operation wins over the deprecated one it replaced
        # (PUT /{Bucket}?notification is PutBucketNotificationConfiguration, not PutBucketNotification).
        self.specificity = (
            len(self.query_literals) + len(self.required_query) + len(self.required_headers),
            len(path),
            not operation.deprecated,
        )

    def match(self, request: Request) -> dict[str, str] | None:
        found = self.pattern.fullmatch(request.path)
        if found is None:
            return None
        for key, value in self.query_literals.items():
            if key not in request.query or (value and request.query[key][0] != value):
                return None
        if any(key not in request.query for key in self.required_query):
            return None
        if any(key not in request.headers for key in self.required_headers):
            return None
        return {name: unquote(value) for name, value in zip(self.names, found.groups(), strict=True)}


def compile_path_template(template: str) -> tuple[re.Pattern[str], list[str]]:
    """A regex over the raw (percent-encoded) path, and the names of its parameters, from a template.

    `/2015-03-31/functions/{FunctionName}/invocations`: "{Name}" is one path segment, "{Name+}" is
    greedy (it may contain slashes, like an S3 key); a trailing slash is optional.
    """
    names, regex = [], ""
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{"):
            name = part[1:-1]
            names.append(name.rstrip("+"))
            regex += "(.+)" if name.endswith("+") else "([^/]+)"
        else:
            regex += re.escape(part)
    return re.compile(regex.rstrip("/") + "/?"), names


class _RestProtocol(Protocol):
    """What rest-json and rest-xml share: routing by method + path, and header/query/uri members."""

    timestamp_style = "unixtimestamp"

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self._routes: dict[str, list[_RestRoute]] = {}
        for name in self.model.operation_names:
            route = _RestRoute(self.model.operation_model(name))
            self._routes.setdefault(route.method, []).append(route)
        for routes in self._routes.values():
            routes.sort(key=lambda route: route.specificity, reverse=True)

    def find_operation(self, request: Request) -> tuple[Operation, dict[str, Any]]:
        for route in self._routes.get(request.method, ()):
            path_params = route.match(request)
            if path_params is not None:
                return route.operation, path_params
        raise self.unknown_operation(f"for {request.method} {request.path}")

    def parse_input(self, operation: Operation, request: Request, context: dict[str, Any]) -> dict[str, Any]:
        shape = operation.input_shape
        if shape is None:
            return {}
        params: dict[str, Any] = {}
        payload = shape.serialization.get("payload")
        for key, member in shape.members.items():
            location = member.serialization.get("location")
            wire = wire_name(member, key)
            if location == "uri" and wire in context:
                params[key] = context[wire]
            elif location == "querystring" and member.type_name == "list" and wire in request.query:
                params[key] = [from_text(member.member, item) for item in request.query[wire]]
            elif location == "querystring" and wire in request.query:
                params[key] = from_text(member, request.query[wire][0])
            elif location == "header" and wire.lower() in request.headers:
                params[key] = from_text(member, request.headers[wire.lower()])
            elif location == "headers":
                prefix = wire.lower()
                found = {h[len(prefix) :]: v for h, v in request.headers.items() if h.startswith(prefix)}
                if found:
                    params[key] = found
        if payload:
            member = shape.members[payload]
            if member.type_name == "blob" and member.serialization.get("streaming"):
                params[payload] = request.body  # the handler streams it (S3 uploads)
            elif member.type_name in ("blob", "string"):
                raw = self._read_body(request, operation)
                params[payload] = raw if member.type_name == "blob" else raw.decode()
            elif raw := self._read_body(request, operation):
                params[payload] = self.decode_document(member, raw)
        elif any(not m.serialization.get("location") for m in shape.members.values()):
            raw = self._read_body(request, operation)
            if raw.strip():
                body = self.decode_document(shape, raw)
                params.update(
                    {k: v for k, v in body.items() if not shape.members[k].serialization.get("location")}
                )
        return params

    def serialize_output(
        self, operation: Operation, data: dict[str, Any], request: Request, status: int | None = None
    ) -> Response:
        status = status or operation.http.get("responseCode", 200)
        shape = operation.output_shape
        if shape is None:
            return Response(status)
        headers: dict[str, str] = {}
        body_members: dict[str, Any] = {}
        payload_name = shape.serialization.get("payload")
        payload: Any = None
        for key, value in data.items():
            if value is None:
                continue
            member = member_shape(shape, key)
            location = member.serialization.get("location")
            if location == "header":
                headers[wire_name(member, key)] = self._header_text(member, value)
            elif location == "headers":
                prefix = wire_name(member, key)
                headers.update({prefix + name: str(item) for name, item in value.items()})
            elif location == "statusCode":
                status = int(value)
            elif key == payload_name:
                payload = value
            else:
                body_members[key] = value
        if payload_name:
            member = shape.members[payload_name]
            if payload is None:
                return Response(status, headers)
            if member.type_name in ("blob", "string"):
                headers.setdefault("Content-Type", "application/octet-stream")
                body = payload.encode() if isinstance(payload, str) else payload
                return Response(status, headers, body)
            headers["Content-Type"] = self.content_type
            return Response(
                status, headers, self.encode_document(member, payload, wire_name(member, payload_name))
            )
        if not any(not m.serialization.get("location") for m in shape.members.values()):
            return Response(status, headers)
        headers["Content-Type"] = self.content_type
        return Response(status, headers, self.encode_document(shape, body_members, self.root_name(operation)))

    def root_name(self, operation: Operation) -> str:
        return self.service.xml_root_names.get(operation.name, f"{operation.name}Result")

    def decode_document(self, shape: Shape, raw: bytes) -> Any:
        raise NotImplementedError

    def encode_document(self, shape: Shape, value: Any, root: str) -> bytes:
        raise NotImplementedError

    @staticmethod
    def _header_text(member: Shape, value: Any) -> str:
        if member.type_name == "timestamp":
            return str(format_timestamp(value, member.serialization.get("timestampFormat", "rfc822")))
        if member.type_name == "boolean":
            return "true" if value else "false"
        if member.type_name == "jsonvalue" or member.serialization.get("jsonvalue"):
            return base64.b64encode(json.dumps(value).encode()).decode()
        if member.type_name == "list":
            return ",".join(str(item) for item in value)
        return str(value)


class RestJsonProtocol(_RestProtocol):
    """Method + path routing, JSON bodies (Lambda, API Gateway v2)."""

    def decode_document(self, shape: Shape, raw: bytes) -> Any:
        try:
            document = json.loads(raw)
        except ValueError as error:
            raise ServiceError("SerializationException", f"request body is not valid JSON: {error}") from None
        return from_wire_json(shape, document)

    def encode_document(self, shape: Shape, value: Any, root: str) -> bytes:
        return json.dumps(to_wire_json(shape, value, self.timestamp_style), separators=(",", ":")).encode()

    def serialize_error(self, error: ServiceError, request: Request) -> Response:
        document = {
            "Type": "User" if error.status < 500 else "Service",
            "message": error.message,
            **error.fields,
        }
        body = json.dumps(document, default=str).encode()
        return Response(
            error.status, {"Content-Type": "application/json", "x-amzn-ErrorType": error.code}, body
        )


class RestXmlProtocol(_RestProtocol):
    """Method + path routing, XML bodies (S3)."""

    content_type = "application/xml"
    timestamp_style = "iso8601"

    def decode_document(self, shape: Shape, raw: bytes) -> Any:
        return from_xml(shape, parse_xml(raw))

    def encode_document(self, shape: Shape, value: Any, root: str) -> bytes:
        return to_xml(shape, value, root, self.service.xml_namespace)

    def serialize_error(self, error: ServiceError, request: Request) -> Response:
        element = ET.Element("Error")
        ET.SubElement(element, "Code").text = error.code
        ET.SubElement(element, "Message").text = error.message
        for name, value in error.fields.items():
            ET.SubElement(element, name).text = str(value)
        ET.SubElement(element, "RequestId").text = request.request_id
        body = XML_DECLARATION + ET.tostring(element)
        return Response(error.status, {"Content-Type": "application/xml"}, body)


class QueryProtocol(Protocol):
    """Action=Operation form parameters in, namespaced XML out (STS)."""

    content_type = "text/xml"

    def find_operation(self, request: Request) -> tuple[Operation, dict[str, Any]]:
        form = dict(request.query)
        if request.method == "POST":
            form.update(parse_qs(self._read_body(request, None).decode(), keep_blank_values=True))
        params = {key: values[0] for key, values in form.items()}
        action = params.get("Action", "")
        if action not in self.model.operation_names:
            raise ServiceError(
                "InvalidAction", f"Could not find operation {action!r} for version {params.get('Version')}"
            )
        return self.model.operation_model(action), params

    def parse_input(self, operation: Operation, request: Request, context: dict[str, Any]) -> dict[str, Any]:
        shape = operation.input_shape
        if shape is None:
            return {}
        params = {}
        for key, member in shape.members.items():
            wire = wire_name(member, key)
            if member.type_name == "list":  # Name.member.1=a&Name.member.2=b
                prefix = f"{wire}.member."
                indexed = {
                    int(name[len(prefix) :]): value
                    for name, value in context.items()
                    if name.startswith(prefix) and name[len(prefix) :].isdigit()
                }
                if indexed:
                    params[key] = [from_text(member.member, indexed[i]) for i in sorted(indexed)]
            elif wire in context:
                params[key] = from_text(member, context[wire])
        return params

    def serialize_output(
        self, operation: Operation, data: dict[str, Any], request: Request, status: int | None = None
    ) -> Response:
        root = xml_root(f"{operation.name}Response", self.model.metadata.get("xmlNamespace"))
        shape = operation.output_shape
        if shape is not None:
            wrapper = shape.serialization.get("resultWrapper", f"{operation.name}Result")
            fill_xml(ET.SubElement(root, wrapper), shape, data)
        metadata = ET.SubElement(root, "ResponseMetadata")
        ET.SubElement(metadata, "RequestId").text = request.request_id
        body = XML_DECLARATION + ET.tostring(root)
        return Response(status or 200, {"Content-Type": self.content_type}, body)

    def serialize_error(self, error: ServiceError, request: Request) -> Response:
        root = xml_root("ErrorResponse", self.model.metadata.get("xmlNamespace"))
        detail = ET.SubElement(root, "Error")
        ET.SubElement(detail, "Type").text = "Sender" if error.status < 500 else "Receiver"
        ET.SubElement(detail, "Code").text = error.code
        ET.SubElement(detail, "Message").text = error.message
        ET.SubElement(root, "RequestId").text = request.request_id
        body = XML_DECLARATION + ET.tostring(root)
        return Response(error.status, {"Content-Type": self.content_type}, body)
