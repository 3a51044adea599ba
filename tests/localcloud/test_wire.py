"""The front door's parser and resources: strict framing, bounded heads, connections, time, queues, caches.

Each test sends what a hostile or broken client could, and checks what the server answers and that it
neither waits for bytes that never come nor holds memory or threads without bound.
"""

from __future__ import annotations

import json
import random
import socket
import string
import time

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from localcloud.app import LocalCloud
from localcloud.config import Config
from tests.fixtures.raw_http import address, exchange, read_answer, request_bytes, signed
from tests.localcloud.test_apigateway import lambda_with_alias
from tests.localcloud.test_awslambda import ECHO, create_function, error_code, make_zip

STS_BODY = b"Action=GetCallerIdentity&Version=2011-06-15"
STS_HEADERS = {"Authorization": signed("sts"), "Content-Type": "application/x-www-form-urlencoded"}


def sts_request(extra_headers: str, body: bytes) -> bytes:
    """A signed STS GetCallerIdentity whose framing headers are given raw."""
    head = "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in STS_HEADERS.items())
    return (head + extra_headers + "\r\n").encode() + body


# --- framing ----------------------------------------------------------------------------------------


def test_a_well_framed_request_is_served(localcloud):
    answer = exchange(localcloud.endpoint_url, sts_request(f"Content-Length: {len(STS_BODY)}\r\n", STS_BODY))
    assert answer.status == 200 and b"<Account>" in answer.body


@pytest.mark.parametrize("value", ["-1", "+43", "0x2b", "4 3", "4e1", "1_0", "", "4" * 20, "43, 44"])
def test_content_length_must_be_plain_digits(localcloud, value):
    # "-1" once made the server read the stream to its end: the answer must come without that.
    raw = sts_request(f"Content-Length: {value}\r\n", STS_BODY)
    answer = exchange(localcloud.endpoint_url, raw, timeout=3)
    assert (answer.status, answer.closed) == (400, True), answer.body
    assert b"Content-Length" in answer.body


def test_conflicting_framing_is_refused_as_request_smuggling(localcloud):
    url = localcloud.endpoint_url
    body_length = len(STS_BODY)
    same_twice = f"Content-Length: {body_length}\r\nContent-Length: {body_length}\r\n"
    assert exchange(url, sts_request(same_twice, STS_BODY)).status == 200

    different = f"Content-Length: {body_length}\r\nContent-Length: 5\r\n"
    answer = exchange(url, sts_request(different, STS_BODY), timeout=3)
    assert (answer.status, answer.closed) == (400, True)

    chunked = f"{body_length:x}\r\n".encode() + STS_BODY + b"\r\n0\r\n\r\n"
    both = f"Content-Length: {len(chunked)}\r\nTransfer-Encoding: chunked\r\n"
    answer = exchange(url, sts_request(both, chunked), timeout=3)
    assert (answer.status, answer.closed) == (400, True)

    answer = exchange(url, sts_request("Transfer-Encoding: gzip, chunked\r\n", chunked), timeout=3)
    assert (answer.status, answer.closed) == (501, True)
    answer = exchange(
        url, sts_request("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", chunked), 3
    )
    assert (answer.status, answer.closed) == (400, True)
    answer = exchange(url, sts_request(f"Content-Length : {body_length}\r\n", STS_BODY), timeout=3)
    assert (answer.status, answer.closed) == (400, True)


def test_chunked_bodies_with_extensions_are_read(localcloud):
    body = b"14;name=value\r\n" + STS_BODY[:20] + b"\r\n" + f"{len(STS_BODY) - 20:X}\r\n".encode()
    body += STS_BODY[20:] + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
    answer = exchange(localcloud.endpoint_url, sts_request("Transfer-Encoding: chunked\r\n", body))
    assert answer.status == 200


@pytest.mark.parametrize("size_line", ["-1", "+2b", "0x2b", " 2b", "2 b", "1" * 17, "2b\x00", "g"])
def test_chunk_sizes_must_be_plain_hex(localcloud, size_line):
    body = size_line.encode() + b"\r\n" + STS_BODY + b"\r\n0\r\n\r\n"
    answer = exchange(localcloud.endpoint_url, sts_request("Transfer-Encoding: chunked\r\n", body), timeout=3)
    assert (answer.status, answer.closed) == (400, True), answer.body


# --- heads ------------------------------------------------------------------------------------------


def test_the_header_block_is_bounded_in_size_not_only_per_line(localcloud):
    fits = "".join(f"X-Pad-{i}: {'a' * 4000}\r\n" for i in range(15))  # ~60 KB
    assert (
        exchange(localcloud.endpoint_url, sts_request(fits + "Content-Length: 43\r\n", STS_BODY)).status
        == 200
    )
    too_much = "".join(f"X-Pad-{i}: {'a' * 4000}\r\n" for i in range(20))  # ~80 KB in lines of 4 KB
    answer = exchange(localcloud.endpoint_url, sts_request(too_much + "Content-Length: 43\r\n", STS_BODY))
    assert (answer.status, answer.closed) == (431, True)


@pytest.mark.slow
def test_a_request_head_trickled_a_byte_at_a_time_is_cut_off(tmp_path):
    with LocalCloud(Config(data_dir=tmp_path, port=0, request_head_timeout_s=1)) as cloud:
        with socket.create_connection(address(cloud.endpoint_url), timeout=10) as slow:
            started = time.monotonic()
            slow.sendall(b"GET /_localcloud/health HTTP/1.1\r\n")
            closed = False
            while time.monotonic() - started < 5:
                try:
                    slow.sendall(b"X")  # one byte of a header line every 0.1 s: every read succeeds
                except OSError:
                    closed = True
                    break
                slow.settimeout(0.1)
                try:
                    if slow.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed = True
                    break
            assert closed and time.monotonic() - started < 3

        # A connection that sends nothing at all is closed as well.
        with socket.create_connection(address(cloud.endpoint_url), timeout=5) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b""
            assert time.monotonic() - started < 3


@pytest.mark.slow
def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(tmp_path):
    with (
        LocalCloud(Config(data_dir=tmp_path, port=0, idle_timeout_s=1)) as cloud,
        socket.create_connection(address(cloud.endpoint_url), timeout=5) as idle,
    ):
        idle.sendall(request_bytes("GET", "/_localcloud/health"))
        first = read_answer(idle, time.perf_counter())
        assert (first.status, first.closed) == (200, False)  # kept open for the next request...
        started = time.monotonic()
        idle.settimeout(5)
        assert idle.recv(1) == b""  # ...until it has been idle for a second
        assert 0.3 < time.monotonic() - started < 3


# --- connections ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_connections_beyond_the_cap_are_refused_fast_and_the_slot_comes_back(tmp_path):
    with LocalCloud(Config(data_dir=tmp_path, port=0, max_connections=3)) as cloud:
        held = [socket.create_connection(address(cloud.endpoint_url), timeout=5) for _ in range(3)]
        try:
            time.sleep(0.3)  # let the server accept them
            answer = exchange(cloud.endpoint_url, b"", timeout=3)
            assert (answer.status, answer.closed) == (503, True)
            assert "LOCALCLOUD_MAX_CONNECTIONS" in json.loads(answer.body)["message"]
            assert answer.seconds < 1
            held.pop().close()
            time.sleep(0.3)
            assert exchange(cloud.endpoint_url, request_bytes("GET", "/_localcloud/health")).status == 200
        finally:
            for sock in held:
                sock.close()


# --- per-operation body limits ------------------------------------------------------------------------


def test_an_invoke_body_is_held_to_invokes_limit_before_it_is_read(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "f")
    headers = {"Authorization": signed("lambda"), "Content-Type": "application/json"}
    for invocation_type, length, words in [
        ("RequestResponse", 60_000_000, "smaller than 6291456 bytes for the InvokeFunction operation"),
        ("Event", 2_000_000, "too large for the Event invocation type (limit 1048576 bytes)"),
    ]:
        head = {**headers, "X-Amz-Invocation-Type": invocation_type, "Content-Length": str(length)}
        # Only the head is sent: an answer that waited for 60 MB would never come.
        raw = request_bytes("POST", "/2015-03-31/functions/f/invocations", head)
        answer = exchange(localcloud.endpoint_url, raw, timeout=3)
        assert answer.status == 413, answer.body
        assert answer.headers["x-amzn-errortype"] == "RequestEntityTooLargeException"
        assert words in json.loads(answer.body)["message"]

    # A deployment package keeps its own, larger limit: the server asks for that body.
    head = {**headers, "Content-Length": "60000000", "Expect": "100-continue"}
    with socket.create_connection(address(localcloud.endpoint_url), timeout=3) as sock:
        sock.sendall(request_bytes("POST", "/2015-03-31/functions", head))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")


@pytest.mark.slow
def test_event_invocations_beyond_the_queue_are_throttled(tmp_path):
    with LocalCloud(Config(data_dir=tmp_path, port=0, lambda_event_queue=2)) as cloud:
        lam = cloud.client("lambda", config=BotoConfig(retries={"max_attempts": 1}))  # a retry would wait
        create_function(lam, "slow")
        payload = json.dumps({"sleep": 3}).encode()
        for _ in range(2):
            assert (
                lam.invoke(FunctionName="slow", InvocationType="Event", Payload=payload)["StatusCode"] == 202
            )
        with pytest.raises(ClientError) as excinfo:
            lam.invoke(FunctionName="slow", InvocationType="Event", Payload=payload)
        assert error_code(excinfo) == "TooManyRequestsException"
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert "LOCALCLOUD_LAMBDA_EVENT_QUEUE" in excinfo.value.response["Error"]["Message"]


# --- API Gateway -------------------------------------------------------------------------------------


def test_unknown_api_ids_are_not_remembered(localcloud):
    import http.client

    lam, apis = localcloud.client("lambda"), localcloud.client("apigatewayv2")
    target = lambda_with_alias(lam, "echo", make_zip({"app.py": ECHO}))
    api = apis.create_api(Name="real", ProtocolType="HTTP", Target=target, RouteKey="POST /echo")
    host, port = address(localcloud.endpoint_url)
    connection = http.client.HTTPConnection(host, port, timeout=10)
    for _ in range(2000):
        api_id = "".join(random.choices(string.ascii_lowercase + string.digits, k=10))  # noqa: S311
        connection.request("POST", f"/_aws/execute-api/{api_id}/echo", body=b"{}")
        response = connection.getresponse()
        assert (response.status, response.read()) == (404, b'{"message":"Not Found"}')
    connection.request("POST", f"/_aws/execute-api/{api['ApiId']}/echo", body=b"{}")
    assert connection.getresponse().status == 200
    connection.close()
    assert len(localcloud.cloud.apigateway._live) <= 1  # only the API that exists


def test_an_http_api_body_over_lambdas_limit_gets_413_and_invokes_nothing(localcloud):
    lam, apis = localcloud.client("lambda"), localcloud.client("apigatewayv2")
    target = lambda_with_alias(lam, "mnist", make_zip({"app.py": ECHO}))
    api = apis.create_api(Name="mnist", ProtocolType="HTTP", Target=target, RouteKey="POST /mnist")
    path = f"/_aws/execute-api/{api['ApiId']}/mnist"

    nine_mb = json.dumps({"input": [0] * 3_000_000}).encode()  # the report's 9 MB body
    # A 5 MB binary body is base64-encoded into the event: 6.7 MB, over Lambda's limit too.
    binary = bytes(5_000_000)
    for body, content_type in [(nine_mb, "application/json"), (binary, "application/octet-stream")]:
        raw = request_bytes("POST", path, {"Content-Type": content_type}, body)
        answer = exchange(localcloud.endpoint_url, raw, timeout=10)
        assert answer.status == 413, answer.body[:200]
        assert json.loads(answer.body) == {"message": "Request Entity Too Large"}
        assert "apigw-requestid" in answer.headers
    assert localcloud.cloud.lambda_.runtime.worker_count() == 0  # the function never ran
