"""localcloud's core: server, routing, errors, store, safe files, CLI, and STS."""

import base64
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from localcloud.app import LocalCloud, make_client
from localcloud.cli import main as cli_main
from localcloud.config import Config
from localcloud.files import UnsafePath, extract_archive, safe_join
from localcloud.routing import Router
from localcloud.server import HttpServer
from localcloud.service import Backend, Service, operation, route
from localcloud.store import DataDirInUse, Store
from localcloud.wire import Request, Response, ServiceError, json_response
from tests.fixtures.raw_http import signed

REPO = Path(__file__).resolve().parents[1]


def http(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- health, CLI, lifecycle ---------------------------------------------------------------------


def test_health_reports_services_counts_and_data_dir(localcloud):
    localcloud.client("s3").create_bucket(Bucket="lake")
    status, body = http("GET", f"{localcloud.endpoint_url}/_localcloud/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "running"
    assert health["data_dir"] == str(localcloud.data_dir)
    assert health["services"]["s3"] == {"buckets": 1, "objects": 0}
    assert {"s3", "logs", "sts"} <= set(health["services"])


def test_cli_status_prints_services_or_fails_when_nothing_listens(localcloud, capsys):
    localcloud.client("s3").create_bucket(Bucket="lake")
    assert cli_main(["status", "--endpoint-url", localcloud.endpoint_url]) == 0
    printed = capsys.readouterr().out
    assert "running" in printed and "buckets=1" in printed and str(localcloud.data_dir) in printed

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert cli_main(["status", "--endpoint-url", f"http://127.0.0.1:{free_port}"]) == 1
    assert "not running" in capsys.readouterr().err


def test_python_m_localcloud_serves_until_sigterm(tmp_path):
    env = {**os.environ, "LOCALCLOUD_DATA_DIR": str(tmp_path / "state")}
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "serve", "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, server.stderr.read()
        endpoint = line.split("listening on ")[1].split()[0]
        print(f"python -m localcloud serve ready in {time.perf_counter() - started:.2f} s")
        status = subprocess.run(
            [sys.executable, "-m", "localcloud", "status", "--endpoint-url", endpoint],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0 and str(tmp_path / "state") in status.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    assert (tmp_path / "state" / "localcloud.db").exists()


def start_server_process(data_dir: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "serve", "--port", "0", "--data-dir", str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = server.stdout.readline()
    assert "listening on" in line, line
    return server, line.split("listening on ")[1].split()[0]


def test_a_killed_server_loses_nothing_it_acknowledged(tmp_path):
    server, endpoint = start_server_process(tmp_path)
    try:
        s3 = make_client(endpoint, "s3")
        s3.create_bucket(Bucket="lake")
        s3.put_object(Bucket="lake", Key="audit/run-1.json", Body=b'{"decision": "deploy"}')
        logs = make_client(endpoint, "logs")
        logs.create_log_group(logGroupName="g")
        logs.create_log_stream(logGroupName="g", logStreamName="s")
        logs.put_log_events(
            logGroupName="g",
            logStreamName="s",
            logEvents=[{"timestamp": int(time.time() * 1000), "message": "ok"}],
        )
    finally:
        server.kill()  # SIGKILL: no shutdown hook, no clean close
        server.wait(timeout=10)

    server, endpoint = start_server_process(tmp_path)  # the data-dir lock died with the process
    try:
        s3 = make_client(endpoint, "s3")
        assert (
            s3.get_object(Bucket="lake", Key="audit/run-1.json")["Body"].read() == b'{"decision": "deploy"}'
        )
        events = make_client(endpoint, "logs").get_log_events(logGroupName="g", logStreamName="s")["events"]
        assert [e["message"] for e in events] == ["ok"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_non_loopback_bind_needs_the_explicit_flag(tmp_path, capsys):
    with pytest.raises(ValueError, match="--allow-non-loopback"):
        LocalCloud(Config(data_dir=tmp_path, host="0.0.0.0", port=0)).start()
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)]) == 2
    assert "--allow-non-loopback" in capsys.readouterr().err


def test_one_data_dir_one_server_and_busy_ports_are_explained(localcloud, tmp_path):
    with pytest.raises(DataDirInUse, match="in use by another localcloud"):
        LocalCloud(Config(data_dir=localcloud.data_dir, port=0)).start()
    port = int(localcloud.endpoint_url.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match=f"port {port} .* in use"):
        LocalCloud(Config(data_dir=tmp_path / "other", port=port)).start()


def test_stop_returns_promptly_with_idle_keep_alive_connections(tmp_path):
    cloud = LocalCloud(Config(data_dir=tmp_path, port=0)).start()
    client = cloud.client("sts")
    client.get_caller_identity()  # leaves a pooled keep-alive connection open
    started = time.perf_counter()
    cloud.stop()
    assert time.perf_counter() - started < 2


# --- routing and errors -------------------------------------------------------------------------


def test_sts_get_caller_identity_uses_the_configured_account(tmp_path):
    with LocalCloud(Config(data_dir=tmp_path, port=0, account_id="123456789012")) as cloud:
        identity = cloud.client("sts").get_caller_identity()
    assert identity["Account"] == "123456789012"
    assert identity["Arn"] == "arn:aws:iam::123456789012:root"


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


# --- the service framework, as later services use it ---------------------------------------------


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


def test_config_reads_environment_and_names_bad_values(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALCLOUD_PORT", "4999")
    monkeypatch.setenv("LOCALCLOUD_DATA_DIR", str(tmp_path))
    config = Config.from_env(region="eu-west-1")
    assert (config.port, config.data_dir, config.region) == (4999, tmp_path, "eu-west-1")
    assert Config.from_env(port=5000).port == 5000  # flags win
    monkeypatch.setenv("LOCALCLOUD_PORT", "forty")
    with pytest.raises(ValueError, match="LOCALCLOUD_PORT must be an integer, got 'forty'"):
        Config.from_env()


# --- store ---------------------------------------------------------------------------------------


def test_store_documents_transactions_and_ordering(tmp_path):
    store = Store(tmp_path)
    try:
        for key in ["b/2", "b/10", "a", "b/ü", "b0", "b/"]:
            store.put("things", key, {"key": key})
        assert [k for k, _ in store.scan("things", prefix="b/")] == ["b/", "b/10", "b/2", "b/ü"]
        assert [k for k, _ in store.scan("things", prefix="b/", after="b/10", limit=2)] == ["b/2", "b/ü"]
        assert store.count("things") == 6 and store.count("things", prefix="b") == 5
        assert store.insert("things", "a", {"key": "other"}) is False
        assert store.get("things", "a") == {"key": "a"}

        with pytest.raises(RuntimeError), store.transaction():
            store.put("things", "new", {"x": 1})
            store.delete("things", "a")
            raise RuntimeError("abort")
        assert store.get("things", "new") is None and store.get("things", "a") == {"key": "a"}
    finally:
        store.close()

    reopened = Store(tmp_path)  # a restart loses nothing
    try:
        assert reopened.count("things") == 6
    finally:
        reopened.close()


def test_blobs_are_atomic_and_crash_leftovers_are_cleared(tmp_path):
    store = Store(tmp_path)
    blob = store.write_blob(b"complete")
    with store.blob_writer() as writer:
        writer.write(b"half-writ")  # never committed, as if the upload failed
    assert list((tmp_path / "tmp").iterdir()) == []
    leftover = store.blob_writer()
    leftover.write(b"a crash happened here")  # neither committed nor cleaned up
    copy = store.copy_blob(blob)
    store.close()

    store = Store(tmp_path)
    try:
        assert list((tmp_path / "tmp").iterdir()) == []
        assert store.open_blob(blob).read() == b"complete"
        store.delete_blob(blob)
        assert store.open_blob(copy).read() == b"complete"
        with pytest.raises(ValueError, match="not a blob id"):
            store.blob_path("../../etc/passwd")
    finally:
        store.close()


# --- safe paths and archives ---------------------------------------------------------------------


def test_safe_join_refuses_escapes(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    assert safe_join(tmp_path / "root", "a/b.txt") == tmp_path / "root" / "a" / "b.txt"
    for bad in ["../x", "/etc/passwd", "a/../../x", "", "out/escape", "a\\..\\..\\x"]:
        with pytest.raises(UnsafePath):
            safe_join(tmp_path / "root", bad)


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100755 if name.endswith(".sh") else 0o100644) << 16
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        build(tf)
    return path


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_extract_archive_unpacks_zip_and_tar(tmp_path):
    archive = make_zip(
        tmp_path / "code.zip", {"handler.py": b"print(1)", "bin/run.sh": b"#!/bin/sh"}, {"link": "handler.py"}
    )
    assert sorted(extract_archive(archive, tmp_path / "zip")) == ["bin/run.sh", "handler.py", "link"]
    assert (tmp_path / "zip" / "link").read_bytes() == b"print(1)"
    assert os.access(tmp_path / "zip" / "bin" / "run.sh", os.X_OK)

    tarball = make_tar(tmp_path / "model.tar.gz", lambda tf: add_file(tf, "model.onnx", b"onnx"))
    extract_archive(tarball, tmp_path / "tar")
    assert (tmp_path / "tar" / "model.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize(
    "build",
    [
        lambda p: make_zip(p / "a.zip", {"../escape.py": b"x"}),
        lambda p: make_zip(p / "a.zip", {"/abs.py": b"x"}),
        lambda p: make_zip(p / "a.zip", {}, {"evil": "../../outside"}),
        lambda p: make_tar(p / "a.tgz", lambda tf: add_file(tf, "../escape", b"x")),
        lambda p: make_tar(p / "a.tgz", lambda tf: tf.addfile(_symlink("evil", "/etc"))),
        lambda p: make_zip(p / "a.zip", {"big.bin": b"0" * 2048}),
        lambda p: (p / "not-an-archive").write_bytes(b"plain text") and p / "not-an-archive",
    ],
    ids=[
        "zip-dotdot",
        "zip-absolute",
        "zip-symlink-out",
        "tar-dotdot",
        "tar-symlink-out",
        "too-big",
        "not-archive",
    ],
)
def test_extract_archive_refuses_unsafe_archives(tmp_path, build):
    archive = build(tmp_path)
    with pytest.raises(UnsafePath):
        extract_archive(archive, tmp_path / "dest", max_bytes=1024)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "escape.py").exists()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info
