"""The front door (server.py) and routing (routing.py): unsupported and unknown operations, body limits,
slow uploads, malformed requests and HTTP rules."""

import json
import socket
import time

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from localcloud.app import LocalCloud
from localcloud.config import Config
from tests.fixtures.raw_http import http, signed


def test_unsupported_operations_are_named_never_silently_accepted(localcloud):
    with pytest.raises(ClientError) as excinfo:
        localcloud.client("s3").put_bucket_policy(Bucket="lake", Policy="{}")
    assert excinfo.value.response["Error"]["Code"] == "NotImplemented"
    assert "S3.PutBucketPolicy" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as excinfo:
        localcloud.client("sts").assume_role(
            RoleArn="arn:aws:iam::000000000000:role/r", RoleSessionName="session"
        )
    assert excinfo.value.response["Error"]["Code"] == "NotImplemented"
    assert "STS.AssumeRole" in excinfo.value.response["Error"]["Message"]


def test_unknown_operation_and_unknown_service(localcloud):
    status, body = http(
        "POST",
        localcloud.endpoint_url,
        b"{}",
        {
            "X-Amz-Target": "Logs_20140328.MakeCoffee",
            "Content-Type": "application/x-amz-json-1.1",
            "Authorization": signed("logs"),
        },
    )
    error = json.loads(body)
    assert (
        status == 400 and error["__type"] == "UnknownOperationException" and "MakeCoffee" in error["message"]
    )

    status, body = http(
        "POST", localcloud.endpoint_url, b"Action=DescribeInstances", {"Authorization": signed("ec2")}
    )
    assert status == 501 and "does not implement the ec2 service" in json.loads(body)["message"]


@pytest.mark.slow
def test_oversized_api_body_gets_the_services_error(tmp_path):
    with LocalCloud(Config(data_dir=tmp_path, port=0, max_request_bytes=4096)) as cloud:
        logs = cloud.client("logs", config=BotoConfig(retries={"max_attempts": 1}))
        logs.create_log_group(logGroupName="g")
        logs.create_log_stream(logGroupName="g", logStreamName="s")
        with pytest.raises(ClientError) as excinfo:
            logs.put_log_events(
                logGroupName="g",
                logStreamName="s",
                logEvents=[{"timestamp": int(time.time() * 1000), "message": "x" * 8192}],
            )
        assert excinfo.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_a_stalled_upload_does_not_block_other_requests(localcloud):
    s3 = localcloud.client("s3")
    s3.create_bucket(Bucket="lake")
    host, port = localcloud.endpoint_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as slow:
        head = f"PUT /lake/slow HTTP/1.1\r\nHost: {host}\r\nAuthorization: {signed('s3')}\r\n"
        slow.sendall(head.encode() + b"Content-Length: 1000000\r\n\r\n" + b"a" * 1000)
        started = time.perf_counter()
        s3.put_object(Bucket="lake", Key="fast", Body=b"quick")
        assert s3.get_object(Bucket="lake", Key="fast")["Body"].read() == b"quick"
        assert time.perf_counter() - started < 2
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="lake")["Contents"]] == ["fast"]


def test_the_front_door_answers_malformed_requests_and_keeps_http_rules(localcloud):
    host, port = localcloud.endpoint_url.removeprefix("http://").split(":")

    def exchange(raw: bytes) -> tuple[int, bytes, bool]:
        """(status, whole answer, whether the server closed the connection) for one raw request."""
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(raw)
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(
                next(
                    (
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    b"0",
                )
            )
            while len(body) < length:
                body += sock.recv(65536)
            sock.settimeout(0.5)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                closed = False
            return int(answer.split(b" ", 2)[1]), answer, closed

    assert exchange(b"NONSENSE\r\n\r\n")[0] == 400
    assert exchange(b"GET /_localcloud/health HTTP/1.x\r\n\r\n")[0] == 400
    assert exchange(b"GET /_localcloud/health HTTP/2.0\r\n\r\n")[0] == 505
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    assert exchange(b"GET /_localcloud/health HTTP/1.1\r\n" + many + b"\r\n")[0] == 431
    assert exchange(b"GET /_localcloud/health HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")[0] == 431

    # HTTP/1.1 keeps the connection unless asked to close it; HTTP/1.0 closes unless asked to keep it.
    assert exchange(b"GET /_localcloud/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")[::2] == (200, False)
    assert exchange(b"GET /_localcloud/health HTTP/1.1\r\nConnection: close\r\n\r\n")[::2] == (200, True)
    assert exchange(b"GET /_localcloud/health HTTP/1.0\r\n\r\n")[::2] == (200, True)
    assert exchange(b"GET /_localcloud/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")[::2] == (
        200,
        False,
    )

    # Header names are case-insensitive and a folded line continues its header: this signed request
    # reaches STS because the Authorization header's credential scope survives both.
    signed = (
        b"POST / HTTP/1.1\r\nhost: localhost\r\nCONTENT-TYPE: application/x-www-form-urlencoded\r\n"
        b"authorization: AWS4-HMAC-SHA256\r\n Credential=a/20260101/us-east-1/sts/aws4_request,\r\n"
        b" SignedHeaders=host, Signature=0\r\n"
        b"Content-Length: 43\r\n\r\nAction=GetCallerIdentity&Version=2011-06-15"
    )
    status, answer, _ = exchange(signed)
    assert status == 200 and b"<Account>" in answer
