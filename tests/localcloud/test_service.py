"""The service framework (service.py, protocols.py) as later services use it: routes, long-polls, the
rest-json contract, the operation-name typo guard."""

import base64
import json
import queue
import threading
import time
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from localcloud.app import make_client
from localcloud.config import Config
from localcloud.routing import Router
from localcloud.server import HttpServer
from localcloud.service import Backend, Service, operation, route
from localcloud.wire import Request, Response, ServiceError, json_response
from tests.fixtures.raw_http import http


class MailboxBackend(Backend):
    """A long-poll endpoint in miniature: GET .../next blocks until something is posted or we stop."""

    def __init__(self) -> None:
        self.items: queue.Queue[str | None] = queue.Queue()

    def stop(self) -> None:
        self.items.put(None)  # wake a blocked long-poll so shutdown is prompt


class MailboxService(Service):
    model_name = "lambda"
    unsigned_path_prefixes = ("/_localcloud/mailbox/",)
    backend: MailboxBackend

    @route("GET", "/_localcloud/mailbox/{Box}/next")
    def next_item(self, params: dict[str, str], request: Request) -> Response:
        item = self.backend.items.get(timeout=10)
        return json_response({"box": params["Box"], "item": item})

    @route("POST", "/_localcloud/mailbox/{Box}")
    def post_item(self, params: dict[str, str], request: Request) -> Response:
        self.backend.items.put(request.body.read().decode())
        return Response(202)


def test_long_poll_route_waits_without_blocking_the_server(localcloud):
    backend = MailboxBackend()
    service = MailboxService(backend, localcloud.config)
    side = localcloud.cloud.start_side_server(service.handle, "mailbox")
    base = f"http://127.0.0.1:{side.server_address[1]}/_localcloud/mailbox/a%20box"
    answer: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: answer.update(json.loads(http("GET", f"{base}/next")[1])))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # still waiting: nothing posted yet
    assert http("POST", base, b"invocation-1")[0] == 202  # served while the long-poll blocks
    waiter.join(timeout=5)
    assert answer == {"box": "a box", "item": "invocation-1"}
    backend.stop()


class ToyLambda(Service):
    """rest-json as the Lambda service will use it: path params, query, headers, blob payloads."""

    model_name = "lambda"

    @operation("GetFunctionConfiguration")
    def get_function_configuration(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        if params["FunctionName"] != "mnist":
            raise ServiceError(
                "ResourceNotFoundException", f"Function not found: {params['FunctionName']}", 404
            )
        return {
            "FunctionName": "mnist",
            "Version": params.get("Qualifier", "$LATEST"),
            "Timeout": 30,
            "Environment": {"Variables": {"MODEL": "model.onnx"}},
        }

    @operation("Invoke")
    def invoke(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        failed = params["Payload"] == b"boom"
        return {
            "StatusCode": 200,
            "FunctionError": "Unhandled" if failed else None,
            "LogResult": base64.b64encode(f"tail of {params.get('LogType')}".encode()).decode(),
            "ExecutedVersion": "3",
            "Payload": params["Payload"][::-1],
        }


class ToyApis(Service):
    """rest-json with lowerCamel wire names (API Gateway v2) and ISO 8601 timestamps."""

    model_name = "apigatewayv2"

    @operation("CreateApi")
    def create_api(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        return {
            "ApiId": "a1b2c3",
            "Name": params["Name"],
            "ProtocolType": params["ProtocolType"],
            "ApiEndpoint": f"target={params['Target']}",
            "CreatedDate": 1_700_000_000.25,
        }


@pytest.mark.slow
def test_rest_json_protocol_contract_for_later_services(tmp_path):
    config = Config(data_dir=tmp_path)
    router = Router([ToyLambda(None, config), ToyApis(None, config)], {})
    server = HttpServer("127.0.0.1", 0, router.dispatch, config)
    server.serve_in_background()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        lam = make_client(endpoint, "lambda", config=BotoConfig(retries={"max_attempts": 1}))
        conf = lam.get_function_configuration(FunctionName="mnist", Qualifier="live")
        assert (conf["Version"], conf["Timeout"], conf["Environment"]) == (
            "live",
            30,
            {"Variables": {"MODEL": "model.onnx"}},
        )
        with pytest.raises(lam.exceptions.ResourceNotFoundException, match="Function not found: other"):
            lam.get_function_configuration(FunctionName="other")

        ok = lam.invoke(FunctionName="mnist", Payload=b'{"input": 1}', LogType="Tail")
        assert (ok["StatusCode"], ok["ExecutedVersion"], "FunctionError" in ok) == (200, "3", False)
        assert ok["Payload"].read() == b'}1 :"tupni"{'
        assert base64.b64decode(ok["LogResult"]) == b"tail of Tail"
        assert lam.invoke(FunctionName="mnist", Payload=b"boom")["FunctionError"] == "Unhandled"

        with pytest.raises(ClientError) as excinfo:
            lam.list_functions()
        assert excinfo.value.response["Error"]["Code"] == "NotImplemented"
        assert "Lambda.ListFunctions" in excinfo.value.response["Error"]["Message"]

        apis = make_client(endpoint, "apigatewayv2", config=BotoConfig(retries={"max_attempts": 1}))
        api = apis.create_api(
            Name="mnist", ProtocolType="HTTP", Target="arn:aws:lambda:us-east-1:0:function:f:live"
        )
        assert (api["ApiId"], api["Name"], api["ProtocolType"]) == ("a1b2c3", "mnist", "HTTP")
        assert api["ApiEndpoint"] == "target=arn:aws:lambda:us-east-1:0:function:f:live"
        assert api["CreatedDate"].timestamp() == 1_700_000_000.25
    finally:
        server.stop()


def test_registering_an_operation_botocore_does_not_know_fails_at_start(tmp_path):
    class Typo(Service):
        model_name = "logs"

        @operation("CreateLogGroops")
        def create(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
            return {}

    with pytest.raises(ValueError, match="CreateLogGroops"):
        Typo(None, Config(data_dir=tmp_path))
