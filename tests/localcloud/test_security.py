"""What localcloud trusts: loopback host names, no other browser origin, and signed requests only.

Every request here is one a web page could make the user's browser send (a cross-origin simple POST,
a DNS-rebound host name, an <img> GET) or a request with no signature at all; each must be refused
before anything changes, and what a user would look at (ListFunctions, ListBuckets) shows nothing.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from botocore.config import Config as BotoConfig

from localcloud.app import LocalCloud
from localcloud.awslambda.runtime.api_server import RuntimeApiServer
from localcloud.config import Config
from localcloud.wire import json_response
from tests.fixtures.raw_http import address, exchange, read_answer, request_bytes, signed
from tests.localcloud.test_awslambda import ROLE, make_zip

REPO = Path(__file__).resolve().parents[2]
EVIL = "https://evil.example"
CREDENTIAL_ONLY = "X-Amz-Credential=a%2F20261201%2Fus-east-1%2Flambda%2Faws4_request"


def create_function_body(name: str = "evil") -> bytes:
    code = make_zip({"app.py": "import os\ndef handler(event, context):\n    return os.system('id')\n"})
    return json.dumps(
        {
            "FunctionName": name,
            "Runtime": "python3.12",
            "Role": ROLE,
            "Handler": "app.handler",
            "Code": {"ZipFile": base64.b64encode(code).decode()},
        }
    ).encode()


def function_names(localcloud) -> list[str]:
    return [f["FunctionName"] for f in localcloud.client("lambda").list_functions()["Functions"]]


def bucket_names(localcloud) -> list[str]:
    return [b["Name"] for b in localcloud.client("s3").list_buckets()["Buckets"]]


def port_of(localcloud) -> int:
    return address(localcloud.endpoint_url)[1]


# --- other origins ---------------------------------------------------------------------------------


def test_a_cross_origin_simple_post_cannot_create_a_function(localcloud):
    # What a web page can make a browser send without a CORS preflight: a text/plain POST.
    raw = request_bytes(
        "POST",
        f"/2015-03-31/functions?{CREDENTIAL_ONLY}&X-Amz-Signature=00",
        {"Host": f"127.0.0.1:{port_of(localcloud)}", "Origin": EVIL, "Content-Type": "text/plain"},
        create_function_body(),
    )
    answer = exchange(localcloud.endpoint_url, raw)
    assert answer.status == 403 and answer.closed
    message = json.loads(answer.body)["message"]
    assert EVIL in message and "LOCALCLOUD_ALLOWED_ORIGINS" in message
    assert "access-control-allow-origin" not in answer.headers
    assert function_names(localcloud) == []


@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost:8080", "own"])
def test_requests_from_other_origins_change_nothing(localcloud, origin):
    # "null" is a sandboxed iframe or a file:// page; localcloud's own origin is no exception either:
    # an S3 object or an HTTP API answer served from it could be anyone's HTML.
    own = f"http://127.0.0.1:{port_of(localcloud)}"
    origin = own if origin == "own" else origin
    headers = {"Host": own.removeprefix("http://"), "Origin": origin, "Authorization": signed("s3")}
    answer = exchange(localcloud.endpoint_url, request_bytes("PUT", "/from-a-page", headers))
    assert answer.status == 403, answer.body
    # In S3's own error shape, so that an SDK shows the reason.
    assert b"<Code>AccessDenied</Code>" in answer.body and origin in answer.body.decode()
    assert bucket_names(localcloud) == []


def test_a_preflight_from_another_origin_gets_no_cors_grant(localcloud):
    headers = {
        "Origin": EVIL,
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization",
    }
    answer = exchange(localcloud.endpoint_url, request_bytes("OPTIONS", "/bucket", headers))
    assert answer.status == 403
    assert not [name for name in answer.headers if name.startswith("access-control-")]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, 403),  # <img src=...> on another site
        ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}, 403),  # a page on another local port
        ({"Referer": f"{EVIL}/page"}, 403),  # an older browser that sends no Sec-Fetch-* headers
        ({"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}, 200),  # the user typed the URL
        ({"User-Agent": "curl/8.5.0"}, 200),
    ],
)
def test_browser_gets_without_an_origin_are_judged_by_fetch_metadata(localcloud, headers, status):
    answer = exchange(localcloud.endpoint_url, request_bytes("GET", "/_localcloud/health", headers))
    assert answer.status == status, answer.body


def test_a_refused_request_is_answered_before_its_body_is_read(localcloud):
    headers = {"Origin": EVIL, "Authorization": signed("s3"), "Content-Length": "1000000000"}
    for expect in ({"Expect": "100-continue"}, {}):
        # No body is sent: an answer that waited for it would never come.
        answer = exchange(localcloud.endpoint_url, request_bytes("PUT", "/big/key", {**headers, **expect}), 3)
        assert (answer.status, answer.closed) == (403, True)
        assert b"100 Continue" not in answer.body
    assert bucket_names(localcloud) == []


# --- other host names (DNS rebinding) -------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:4566",
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io:4566",
        "localhost.:4566",
        "localcloud:4566",  # the compose service name is allowed only where it is configured
        "[::1].evil.example",
        "127.0.0.1@evil.example",
    ],
)
def test_other_host_names_are_refused(localcloud, host):
    headers = {"Host": host, "Authorization": signed("s3")}
    answer = exchange(localcloud.endpoint_url, request_bytes("PUT", "/rebound", headers))
    assert answer.status == 403, answer.body
    assert host in answer.body.decode() and b"LOCALCLOUD_ALLOWED_HOSTS" in answer.body
    assert bucket_names(localcloud) == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost", "[::1]:{port}", "127.0.0.1"]
)
def test_loopback_host_names_are_served_on_any_port_spelling(localcloud, host):
    headers = {"Host": host.format(port=port_of(localcloud)), "Authorization": signed("s3")}
    assert exchange(localcloud.endpoint_url, request_bytes("PUT", "/loopback", headers)).status == 200
    assert bucket_names(localcloud) == ["loopback"]


@pytest.mark.slow
def test_configured_host_names_and_origins_are_served(tmp_path):
    config = Config(
        data_dir=tmp_path,
        port=0,
        allowed_hosts=("localcloud",),
        allowed_origins=("http://localhost:3000",),
    )
    with LocalCloud(config) as cloud:
        url = cloud.endpoint_url

        def status(headers: dict[str, str]) -> int:
            return exchange(url, request_bytes("GET", "/_localcloud/health", headers)).status

        assert status({"Host": "localcloud:4566"}) == 200
        assert status({"Host": "LOCALCLOUD"}) == 200
        assert status({"Host": "localcloud.evil.example"}) == 403
        assert status({"Origin": "http://localhost:3000"}) == 200
        assert status({"Origin": "http://localhost:3001"}) == 403
        assert status({"Origin": "https://localhost:3000"}) == 403
        # A page of the allowed origin loading an image: no Origin, but its Referer names it.
        assert status({"Sec-Fetch-Site": "same-site", "Referer": "http://localhost:3000/app"}) == 200


def test_allowed_hosts_and_origins_come_from_the_environment_and_are_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALCLOUD_ALLOWED_HOSTS", "localcloud, Other.Example ")
    monkeypatch.setenv("LOCALCLOUD_ALLOWED_ORIGINS", "http://localhost:3000")
    config = Config.from_env(data_dir=tmp_path)
    assert config.allowed_hosts == ("localcloud", "Other.Example")
    assert config.allowed_origins == ("http://localhost:3000",)
    for origins, reason in [(("*",), "every"), (("null",), "sandboxed"), (("http://a.example/app",), "path")]:
        with pytest.raises(ValueError, match=f"LOCALCLOUD_ALLOWED_ORIGINS.*{reason}"):
            LocalCloud(Config(data_dir=tmp_path, port=0, allowed_origins=origins)).start()
    with pytest.raises(ValueError, match="LOCALCLOUD_ALLOWED_HOSTS"):
        LocalCloud(Config(data_dir=tmp_path, port=0, allowed_hosts=("*",))).start()


# --- unsigned requests ----------------------------------------------------------------------------


def test_unsigned_requests_change_nothing_and_say_what_is_missing(localcloud):
    url = localcloud.endpoint_url

    answer = exchange(url, request_bytes("PUT", "/anonymous"))
    assert answer.status == 403 and b"<Code>AccessDenied</Code>" in answer.body
    assert exchange(url, request_bytes("GET", "/")).status == 403

    target = {"X-Amz-Target": "Logs_20140328.CreateLogGroup", "Content-Type": "application/x-amz-json-1.1"}
    answer = exchange(url, request_bytes("POST", "/", target, b'{"logGroupName": "anonymous"}'))
    assert answer.status == 403
    assert json.loads(answer.body)["__type"] == "MissingAuthenticationTokenException"

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = exchange(url, request_bytes("POST", "/", form, b"Action=GetCallerIdentity&Version=2011-06-15"))
    assert answer.status == 403 and b"<Code>MissingAuthenticationToken</Code>" in answer.body

    # A credential scope alone is no signature, nor is an Authorization header that is not SigV4.
    not_signed = [
        ("POST", f"/2015-03-31/functions?{CREDENTIAL_ONLY}", {}),
        ("POST", "/2015-03-31/functions", {"Authorization": "Bearer x"}),
        (
            "POST",
            "/2015-03-31/functions",
            {"Authorization": "AWS4-HMAC-SHA256 Credential=a/20261201/us-east-1/lambda/aws4_request"},
        ),
    ]
    for method, path, headers in not_signed:
        answer = exchange(url, request_bytes(method, path, headers, create_function_body()))
        assert answer.status == 403, (path, headers, answer.body)
    assert function_names(localcloud) == []
    assert bucket_names(localcloud) == []
    assert localcloud.client("logs").describe_log_groups()["logGroups"] == []


def test_what_is_public_without_a_signature_still_answers(localcloud):
    url = localcloud.endpoint_url
    assert exchange(url, request_bytes("GET", "/_localcloud/health")).status == 200
    # An HTTP API's invoke URL (curl from a terminal) and GetFunction's code download reach their service.
    answer = exchange(url, request_bytes("POST", "/_aws/execute-api/abcdefghij/mnist", body=b"{}"))
    assert (answer.status, json.loads(answer.body)) == (404, {"message": "Not Found"})
    answer = exchange(url, request_bytes("GET", "/_localcloud/lambda/code/nothing.zip"))
    assert (answer.status, answer.headers["x-amzn-errortype"]) == (404, "ResourceNotFoundException")


def test_presigned_urls_of_both_signature_versions_are_signed_requests(localcloud):
    import urllib.request

    s3 = localcloud.client("s3")
    s3.create_bucket(Bucket="lake")
    s3.put_object(Bucket="lake", Key="k", Body=b"shared")
    v4 = localcloud.client("s3", config=BotoConfig(signature_version="s3v4"))
    for client in (s3, v4):  # boto3 presigns S3 URLs with SigV2 unless told s3v4
        url = client.generate_presigned_url("get_object", Params={"Bucket": "lake", "Key": "k"}, ExpiresIn=60)
        with urllib.request.urlopen(url) as response:  # noqa: S310 (loopback)
            assert response.read() == b"shared"


# --- the Lambda Runtime API's own ports -------------------------------------------------------------


@pytest.mark.slow
def test_the_runtime_api_ports_refuse_browsers_and_other_host_names():
    served: list[str] = []
    server = RuntimeApiServer(
        lambda method, path, headers, body: served.append(path) or json_response({"ok": True}), "test"
    )
    url = f"http://{server.address}"
    own_host = server.address
    try:
        for headers in (
            {"Host": own_host, "Origin": EVIL},
            {"Host": own_host, "Sec-Fetch-Site": "cross-site"},
            {"Host": "evil.example:9001"},
        ):
            answer = exchange(url, request_bytes("GET", "/2018-06-01/runtime/invocation/next", headers), 3)
            assert (answer.status, answer.closed) == (403, True), headers
        # The worker's own client, which connects after, is still served.
        answer = exchange(
            url, request_bytes("GET", "/2018-06-01/runtime/invocation/next", {"Host": own_host})
        )
        assert answer.status == 200
        assert served == ["/2018-06-01/runtime/invocation/next"]
    finally:
        server.close()


@pytest.mark.slow
def test_a_page_that_connects_first_does_not_block_the_worker():
    """The Runtime API serves one connection at a time: a refused one must be closed at once."""
    server = RuntimeApiServer(lambda *args: json_response({}), "test")
    host, port = server.address.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3) as page:
            page.sendall(request_bytes("GET", "/x", {"Host": server.address, "Origin": EVIL}))
            started = time.perf_counter()
            assert read_answer(page, started).status == 403
            result: dict[str, int] = {}
            worker = threading.Thread(
                target=lambda: result.update(
                    status=exchange(
                        f"http://{server.address}", request_bytes("GET", "/x", {"Host": server.address})
                    ).status
                )
            )
            worker.start()
            worker.join(3)
            assert result == {"status": 200}
    finally:
        server.close()


@pytest.mark.slow
def test_the_serve_command_takes_the_settings_as_flags_and_names_a_bad_one(tmp_path):
    command = [sys.executable, "-m", "localcloud", "serve", "--port", "0", "--data-dir", str(tmp_path)]
    for flag, value, setting in [
        ("--allowed-origins", "http://localhost:3000,*", "LOCALCLOUD_ALLOWED_ORIGINS"),
        ("--allowed-hosts", "localcloud,https://evil.example/", "LOCALCLOUD_ALLOWED_HOSTS"),
    ]:
        result = subprocess.run([*command, flag, value], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert result.returncode == 2 and setting in result.stderr, result.stderr
