"""What every localcloud service is made of: a Backend that owns state, a Service that speaks the wire.

A service module defines:

    class LogsBackend(Backend):          # state and behaviour, plain Python arguments, no HTTP
        def create_log_group(self, name: str) -> None: ...

    class LogsService(Service):          # the thin dispatcher: wire operation name -> method
        model_name = "logs"              # botocore's name; protocol, routes and shapes come from it

        @operation("CreateLogGroup")
        def create_log_group(self, params, request):
            self.backend.create_log_group(params["logGroupName"])
            return {}

`params` are the operation's input members under boto3's names; the returned dict is shaped like
boto3's response. Raise ServiceError for client mistakes. Endpoints that are not AWS operations (the
Lambda Runtime API, an HTTP API's invoke URL) are `@route(method, path_template)` methods that take
the same `(params, request)` and return a Response.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

from localcloud.config import Config
from localcloud.protocols import compile_path_template, load_service_model, make_protocol
from localcloud.wire import Request, Response, ServiceError

if TYPE_CHECKING:
    from localcloud.app import LocalCloud

logger = logging.getLogger("localcloud")

Handler = Callable[..., Any]


def operation(name: str) -> Callable[[Handler], Handler]:
    """Mark a Service method as the handler of the AWS operation `name` (as in botocore's model)."""

    def register(method: Handler) -> Handler:
        method.wire_operation = name  # type: ignore[attr-defined]
        return method

    return register


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    """Mark a Service method as the handler of a plain HTTP endpoint, e.g. route("GET", "/x/{Id}/next").

    Path parameters arrive as `params`; "{Name+}" may span slashes. The method returns a Response.
    Routes are tried before the AWS operations of the same service.
    """

    def register(handler: Handler) -> Handler:
        handler.wire_route = (method.upper(), path)  # type: ignore[attr-defined]
        return handler

    return register


class Backend:
    """State and behaviour of one service, independent of the wire protocol.

    LocalCloud calls `start` after the port is bound and before the first request is served (recover
    state, start background threads), and `stop` after the server stops accepting requests (stop
    threads and worker processes, wake blocked long-polls). Both run once per LocalCloud start/stop.
    """

    def start(self, cloud: LocalCloud) -> None:
        """Startup hook; `cloud.endpoint_url` is already known."""

    def stop(self) -> None:
        """Shutdown hook; must return promptly and leave nothing running."""

    def counts(self) -> dict[str, int]:
        """Resource counts for the health endpoint and `localcloud status`."""
        return {}


class Service:
    """The wire side of one AWS service: routes a request to a method and (de)serialises it."""

    model_name: ClassVar[str]  # botocore service name: "s3", "logs", "sts", "lambda", "sagemaker", ...
    # SigV4 signing names this service answers besides the model's own ("execute-api" for invoke URLs).
    extra_signing_names: ClassVar[tuple[str, ...]] = ()
    # Paths that reach this service when a request is not signed (Lambda Runtime API, invoke URLs).
    unsigned_path_prefixes: ClassVar[tuple[str, ...]] = ()
    validation_error_code: ClassVar[str] = "ValidationException"
    internal_error_code: ClassVar[str] = "InternalFailure"
    xml_namespace: ClassVar[str | None] = None  # rest-xml: the xmlns of response documents
    xml_root_names: ClassVar[dict[str, str]] = {}  # rest-xml: root element per operation

    _handlers: ClassVar[dict[str, Handler]] = {}
    _routes: ClassVar[list[tuple[str, Any, list[str], Handler]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers, cls._routes = {}, []
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                if name := getattr(attr, "wire_operation", None):
                    cls._handlers[name] = attr
                if spec := getattr(attr, "wire_route", None):
                    pattern, names = compile_path_template(spec[1])
                    cls._routes.append((spec[0], pattern, names, attr))

    def __init__(self, backend: Backend | None, config: Config) -> None:
        self.backend = backend
        self.config = config
        self.model = load_service_model(self.model_name)
        unknown = sorted(set(self._handlers) - set(self.model.operation_names))
        if unknown:
            raise ValueError(f"{type(self).__name__} registers operations botocore does not know: {unknown}")
        self.protocol = make_protocol(self)

    @property
    def service_id(self) -> str:
        return self.model.metadata["serviceId"]

    @property
    def signing_names(self) -> tuple[str, ...]:
        return (self.model.signing_name, *self.extra_signing_names)

    def body_limit(self, operation_name: str | None, request: Request) -> int:
        """The most body bytes `operation_name` accepts (None: not known yet), checked before reading.

        Services with operations of other sizes override it (Lambda: zips, Invoke's 6 MB).
        """
        return self.config.max_request_bytes

    def request_too_large(self, limit: int) -> ServiceError:
        """The error for a body over `limit` bytes; services override it with their AWS error code."""
        return ServiceError(
            "RequestEntityTooLargeException", f"Request body must not exceed {limit} bytes", 413
        )

    def handle(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except ServiceError as error:
            return self.protocol.serialize_error(error, request)
        except ConnectionError:
            raise  # the client went away; the server drops the connection
        except Exception as error:
            logger.exception("%s %s failed in %s", request.method, request.path, type(self).__name__)
            failure = ServiceError(
                self.internal_error_code, f"localcloud failed on this request: {error!r}", 500
            )
            return self.protocol.serialize_error(failure, request)

    def _dispatch(self, request: Request) -> Response:
        for method, pattern, names, handler in self._routes:
            found = pattern.fullmatch(request.path)
            if found and method == request.method:
                params = {name: unquote(value) for name, value in zip(names, found.groups(), strict=True)}
                return handler(self, params, request)
        op, context = self.protocol.find_operation(request)
        handler = self._handlers.get(op.name)
        if handler is None:
            raise ServiceError(
                "NotImplemented", f"localcloud does not implement {self.service_id}.{op.name}", 501
            )
        params = self.protocol.parse_input(op, request, context)
        for name in op.input_shape.required_members if op.input_shape else []:
            if name not in params:
                raise ServiceError(
                    self.validation_error_code, f"{op.name} is missing required parameter {name}"
                )
        result = handler(self, params, request)
        if isinstance(result, Response):
            return result
        return self.protocol.serialize_output(op, result or {}, request)

    def serialize(
        self, operation_name: str, data: dict[str, Any], request: Request, status: int | None = None
    ) -> Response:
        """The wire response for `data`, when a handler needs to adjust it (a 206 status, an extra header)."""
        return self.protocol.serialize_output(
            self.model.operation_model(operation_name), data, request, status
        )
