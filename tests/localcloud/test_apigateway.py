"""localcloud's API Gateway v2: HTTP APIs (quick create) served on localcloud's port, backed by real Lambdas."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from mnist_pipeline.lambda_zip import HANDLER, build_lambda_zip
from tests.localcloud.test_awslambda import HANDLER_FILE, create_function, make_zip, publish

# A function that shows what it was sent, and answers in whatever shape the path asks for.
SHAPES = """
import base64, json

def handler(event, context):
    path = event["rawPath"]
    if path == "/status":
        return {"statusCode": 201, "headers": {"X-Answer": "yes"}, "body": "created", "cookies": ["a=1"]}
    if path == "/bare":
        return [1, 2, 3]
    if path == "/binary":
        return {"statusCode": 200, "headers": {"Content-Type": "image/png"},
                "body": base64.b64encode(b"\\x89PNG").decode(), "isBase64Encoded": True}
    if path == "/boom":
        raise RuntimeError("the handler failed")
    if path == "/malformed":
        return {"statusCode": "not a number"}
    return {"statusCode": 200, "body": json.dumps(event)}
"""


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request, errors included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def lambda_with_alias(lam, name: str, code: bytes, **settings) -> str:
    create_function(lam, name, code, **settings)
    version = publish(lam, name)
    return lam.create_alias(FunctionName=name, Name="live", FunctionVersion=version["Version"])["AliasArn"]


def test_quick_create_makes_an_api_with_its_route_integration_and_stage(localcloud):
    lam, apis = localcloud.client("lambda"), localcloud.client("apigatewayv2")
    target = lambda_with_alias(lam, "shapes", make_zip({"app.py": SHAPES}))

    api = apis.create_api(Name="mnist", ProtocolType="HTTP", Target=target, RouteKey="POST /mnist")
    api_id = api["ApiId"]
    assert api["ApiEndpoint"] == f"{localcloud.endpoint_url}/_aws/execute-api/{api_id}"
    assert (api["Name"], api["ProtocolType"]) == ("mnist", "HTTP")
    assert api["RouteSelectionExpression"] == "${request.method} ${request.path}"
    assert apis.get_api(ApiId=api_id)["CreatedDate"] == api["CreatedDate"]
    assert [item["ApiId"] for item in apis.get_apis()["Items"]] == [api_id]

    (route,) = apis.get_routes(ApiId=api_id)["Items"]
    (integration,) = apis.get_integrations(ApiId=api_id)["Items"]
    (stage,) = apis.get_stages(ApiId=api_id)["Items"]
    assert (route["RouteKey"], route["Target"]) == (
        "POST /mnist",
        f"integrations/{integration['IntegrationId']}",
    )
    assert (integration["IntegrationType"], integration["IntegrationUri"]) == ("AWS_PROXY", target)
    assert integration["PayloadFormatVersion"] == "2.0"
    assert (stage["StageName"], stage["AutoDeploy"]) == ("$default", True)
    assert apis.get_route(ApiId=api_id, RouteId=route["RouteId"])["RouteKey"] == "POST /mnist"

    apis.delete_api(ApiId=api_id)
    with pytest.raises(apis.exceptions.NotFoundException, match=api_id):
        apis.get_api(ApiId=api_id)
    assert http("POST", f"{api['ApiEndpoint']}/mnist", b"{}")[0] == 404


def test_create_api_refuses_what_localcloud_cannot_serve(localcloud):
    apis = localcloud.client("apigatewayv2")
    with pytest.raises(apis.exceptions.BadRequestException, match="HTTP APIs only"):
        apis.create_api(Name="ws", ProtocolType="WEBSOCKET", RouteSelectionExpression="$request.body.action")
    with pytest.raises(apis.exceptions.BadRequestException, match="not a Lambda function ARN"):
        apis.create_api(Name="x", ProtocolType="HTTP", Target="https://example.com")
    with pytest.raises(apis.exceptions.BadRequestException, match="Invalid route key"):
        apis.create_api(
            Name="x",
            ProtocolType="HTTP",
            RouteKey="FETCH /x",
            Target="arn:aws:lambda:us-east-1:000000000000:function:f",
        )
    assert apis.get_apis()["Items"] == []


def test_requests_become_payload_2_0_events_and_answers_become_responses(localcloud):
    lam, apis = localcloud.client("lambda"), localcloud.client("apigatewayv2")
    target = lambda_with_alias(lam, "shapes", make_zip({"app.py": SHAPES}))
    api = apis.create_api(Name="shapes", ProtocolType="HTTP", Target=target, RouteKey="ANY /{proxy+}")
    base = api["ApiEndpoint"]

    status, headers, body = http(
        "POST",
        f"{base}/echo/deep?digit=7&digit=8&mode=fast",
        b'{"input": [0]}',
        {
            "Content-Type": "application/json",
            "X-Trace": "abc",
            "Cookie": "session=1; theme=dark",
            "User-Agent": "t",
        },
    )
    assert status == 200 and headers["Apigw-Requestid"]
    # An HTTP API answers as API Gateway does, without the AWS API's own request-id and Server headers.
    assert not {"x-amzn-requestid", "x-amz-request-id", "server"} & {name.lower() for name in headers}
    event = json.loads(body)
    assert (event["version"], event["routeKey"], event["rawPath"]) == ("2.0", "ANY /{proxy+}", "/echo/deep")
    assert event["rawQueryString"] == "digit=7&digit=8&mode=fast"
    assert event["queryStringParameters"] == {"digit": "7,8", "mode": "fast"}
    assert event["pathParameters"] == {"proxy": "echo/deep"}
    assert event["headers"]["x-trace"] == "abc" and "cookie" not in event["headers"]
    assert event["cookies"] == ["session=1", "theme=dark"]
    context = event["requestContext"]
    assert context["http"] == {
        "method": "POST",
        "path": "/echo/deep",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "t",
    }
    assert (context["apiId"], context["stage"], context["routeKey"]) == (
        api["ApiId"],
        "$default",
        "ANY /{proxy+}",
    )
    assert isinstance(context["timeEpoch"], int) and context["requestId"] == headers["Apigw-Requestid"]
    assert (event["body"], event["isBase64Encoded"]) == ('{"input": [0]}', False)

    binary = bytes(range(256))
    event = json.loads(http("PUT", f"{base}/upload", binary, {"Content-Type": "application/octet-stream"})[2])
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == binary

    status, headers, body = http("GET", f"{base}/status")
    assert (status, headers["X-Answer"], headers["Set-Cookie"], body) == (201, "yes", "a=1", b"created")
    status, headers, body = http("GET", f"{base}/bare")
    assert (status, headers["Content-Type"], json.loads(body)) == (200, "application/json", [1, 2, 3])
    status, headers, body = http("GET", f"{base}/binary")
    assert (status, headers["Content-Type"], body) == (200, "image/png", b"\x89PNG")
    for failing in ("boom", "malformed"):
        status, _, body = http("GET", f"{base}/{failing}")
        assert (status, json.loads(body)) == (500, {"message": "Internal Server Error"})
    status, _, body = http("GET", f"{localcloud.endpoint_url}/_aws/execute-api/nosuchapi/echo")
    assert (status, json.loads(body)) == (404, {"message": "Not Found"})


def test_the_mnist_endpoint_answers_real_digits_and_rejects_bad_input(localcloud, trained_model_dir, mnist):
    lam, apis = localcloud.client("lambda"), localcloud.client("apigatewayv2")
    code = build_lambda_zip(
        HANDLER_FILE, trained_model_dir / "model.onnx", trained_model_dir / "model_card.json"
    )
    target = lambda_with_alias(lam, "mnist", code, Handler=HANDLER, MemorySize=512, Timeout=30)
    api = apis.create_api(Name="mnist", ProtocolType="HTTP", Target=target, RouteKey="POST /mnist")
    url = f"{api['ApiEndpoint']}/mnist"
    json_headers = {"Content-Type": "application/json"}

    correct = 0
    for image, label in zip(mnist.test_images[:20], mnist.test_labels[:20], strict=True):
        status, headers, body = http(
            "POST", url, json.dumps({"input": image.reshape(-1).tolist()}).encode(), json_headers
        )
        answer = json.loads(body)
        assert (status, headers["Content-Type"], answer["model"]["version"]) == (200, "application/json", "1")
        assert len(answer["probabilities"]) == 10 and np.isclose(sum(answer["probabilities"]), 1.0)
        correct += answer["prediction"] == label
    assert correct >= 17  # the quick-trained model is ~97% accurate

    status, _, body = http("POST", url, b'{"input": [1, 2, 3]}', json_headers)
    assert status == 400 and json.loads(body)["error"]["code"] == "wrong_length"
    status, _, body = http("POST", url, b"input=1", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type"
    for method, path in (("POST", "/other"), ("GET", "/mnist")):
        status, _, body = http(method, f"{api['ApiEndpoint']}{path}")
        assert (status, json.loads(body)) == (404, {"message": "Not Found"})


def test_apis_survive_a_restart_and_serve_again(localcloud):
    lam, apis = localcloud.client("lambda"), localcloud.client("apigatewayv2")
    target = lambda_with_alias(lam, "shapes", make_zip({"app.py": SHAPES}))
    api = apis.create_api(Name="shapes", ProtocolType="HTTP", Target=target, RouteKey="GET /status")

    localcloud.restart()
    apis = localcloud.client("apigatewayv2")
    assert apis.get_api(ApiId=api["ApiId"])["ApiEndpoint"] == api["ApiEndpoint"]
    assert [r["RouteKey"] for r in apis.get_routes(ApiId=api["ApiId"])["Items"]] == ["GET /status"]
    status, _, body = http("GET", f"{api['ApiEndpoint']}/status")
    assert (status, body) == (201, b"created")


def test_a_deleted_function_behind_an_api_is_an_internal_error(localcloud):
    lam, apis = localcloud.client("lambda"), localcloud.client("apigatewayv2")
    target = lambda_with_alias(lam, "shapes", make_zip({"app.py": SHAPES}))
    api = apis.create_api(Name="shapes", ProtocolType="HTTP", Target=target)  # route "$default"
    assert http("GET", f"{api['ApiEndpoint']}/status")[0] == 201
    lam.delete_function(FunctionName="shapes")
    status, _, body = http("GET", f"{api['ApiEndpoint']}/status")
    assert (status, json.loads(body)) == (500, {"message": "Internal Server Error"})
