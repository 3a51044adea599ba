"""localcloud's Lambda: the control plane through boto3, and real execution through awslambdaric workers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, WaiterError

from localcloud.app import LocalCloud, make_client
from localcloud.config import Config
from localcloud.lambda_ import LambdaBackend
from mnist_pipeline.lambda_deploy import alias_state
from mnist_pipeline.lambda_zip import HANDLER, build_lambda_zip, code_sha256

ROLE = "arn:aws:iam::000000000000:role/lambda-test"
HANDLER_FILE = Path(__file__).resolve().parents[1] / "lambda_package" / "handler.py"
FAST = {"Delay": 0.05, "MaxAttempts": 200}  # waiter polling for tests: AWS's 1-5 s delays, scaled down

ECHO = """
import json, os, time

def handler(event, context):
    if event.get("print"):
        print(event["print"])
    if event.get("marker"):
        open(event["marker"], "w").close()
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise ValueError(event["fail"])
    return {"answer": os.environ.get("ANSWER", "one"), "event": event,
            "arn": context.invoked_function_arn, "request_id": context.aws_request_id,
            "pid": os.getpid(),
            "env": {k: v for k, v in os.environ.items() if k.startswith(("AWS_LAMBDA_", "LAMBDA_", "_HANDLER"))}}
"""


def make_zip(files: dict[str, str]) -> bytes:
    """A zip of `files`; the same files always give the same bytes (and so the same CodeSha256)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


def create_function(lam, name: str, code: bytes | None = None, wait: bool = True, **settings):
    settings = {"Runtime": "python3.12", "Handler": "app.handler", "Role": ROLE, **settings}
    created = lam.create_function(
        FunctionName=name, Code={"ZipFile": code or make_zip({"app.py": ECHO})}, **settings
    )
    if wait:
        lam.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=FAST)
    return created


def invoke(lam, name: str, event: dict | None = None, **kwargs) -> tuple[dict, dict]:
    response = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}).encode(), **kwargs)
    return response, json.loads(response["Payload"].read())


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def publish(lam, name: str, **kwargs) -> dict:
    version = lam.publish_version(FunctionName=name, **kwargs)
    lam.get_waiter("published_version_active").wait(
        FunctionName=name, Qualifier=version["Version"], WaiterConfig=FAST
    )
    return version


def wait_for_log(logs, group: str, needle: str, timeout: float = 10.0) -> list[dict]:
    """The events of `group` once one contains `needle` (worker output is shipped in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            events = logs.filter_log_events(logGroupName=group)["events"]
        except logs.exceptions.ResourceNotFoundException:
            events = []
        if any(needle in event["message"] for event in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


# --- functions: create, get, update, delete ----------------------------------------------------------


def test_create_function_reports_the_code_as_lambda_does_and_becomes_active(localcloud):
    lam = localcloud.client("lambda")
    code = make_zip({"app.py": ECHO})
    created = create_function(lam, "echo", code, wait=False, Description="echoes", Timeout=7, MemorySize=256)

    assert (
        created["CodeSha256"] == base64.b64encode(hashlib.sha256(code).digest()).decode() == code_sha256(code)
    )
    assert created["CodeSize"] == len(code)
    assert (created["State"], created["StateReasonCode"], created["Version"]) == (
        "Pending",
        "Creating",
        "$LATEST",
    )
    assert created["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert (created["Timeout"], created["MemorySize"], created["Description"]) == (7, 256, "echoes")

    lam.get_waiter("function_active_v2").wait(FunctionName="echo", WaiterConfig=FAST)
    function = lam.get_function(FunctionName="echo")
    config = function["Configuration"]
    assert (config["State"], config["LastUpdateStatus"]) == ("Active", "Successful")
    assert config["RevisionId"] != created["RevisionId"]  # the state change is a new revision
    assert config["LoggingConfig"]["LogGroup"] == "/aws/lambda/echo"
    with urllib.request.urlopen(function["Code"]["Location"]) as download:
        assert download.read() == code
    assert (
        lam.get_function_configuration(FunctionName=config["FunctionArn"])["CodeSha256"]
        == created["CodeSha256"]
    )
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == ["echo"]

    with pytest.raises(lam.exceptions.ResourceConflictException, match="Function already exist: echo"):
        create_function(lam, "echo", code, wait=False)
    with pytest.raises(lam.exceptions.ResourceNotFoundException, match="function:nothing"):
        lam.get_function(FunctionName="nothing")


def test_bad_settings_are_refused_with_lambdas_errors(localcloud):
    lam = localcloud.client("lambda")
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="Could not unzip"):
        lam.create_function(
            FunctionName="f",
            Runtime="python3.12",
            Handler="app.handler",
            Role=ROLE,
            Code={"ZipFile": b"not a zip"},
        )
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="Python functions only"):
        create_function(lam, "f", wait=False, Runtime="nodejs20.x")
    with pytest.raises(ClientError, match="at 'timeout' failed to satisfy constraint") as excinfo:
        create_function(lam, "f", wait=False, Timeout=901)
    assert error_code(excinfo) == "ValidationException"
    with pytest.raises(
        lam.exceptions.InvalidParameterValueException, match="Reserved keys used in this request: AWS_REGION"
    ):
        create_function(lam, "f", wait=False, Environment={"Variables": {"AWS_REGION": "eu-west-1"}})
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="NoSuchBucket"):
        lam.create_function(
            FunctionName="f",
            Runtime="python3.12",
            Handler="app.handler",
            Role=ROLE,
            Code={"S3Bucket": "no-such-bucket", "S3Key": "code.zip"},
        )
    assert lam.list_functions()["Functions"] == []


def test_a_zip_without_the_handler_module_fails_the_function_with_a_reason(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "broken", wait=False, Handler="missing.handler")
    with pytest.raises(WaiterError, match="Failed"):
        lam.get_waiter("function_active_v2").wait(FunctionName="broken", WaiterConfig=FAST)
    config = lam.get_function_configuration(FunctionName="broken")
    assert (config["State"], config["StateReasonCode"]) == ("Failed", "FunctionError.InvalidEntryPoint")
    assert "missing.py" in config["StateReason"]
    with pytest.raises(lam.exceptions.ResourceConflictException, match="following state: Failed"):
        invoke(lam, "broken")


def test_update_code_and_configuration_go_in_progress_then_run_the_new_settings(localcloud):
    lam = localcloud.client("lambda")
    s3 = localcloud.client("s3")
    create_function(lam, "f")
    assert invoke(lam, "f")[1]["answer"] == "one"
    first = lam.get_function_configuration(FunctionName="f")

    new_code = make_zip({"app.py": ECHO.replace('"one"', '"two"')})
    s3.create_bucket(Bucket="code")
    s3.put_object(Bucket="code", Key="f.zip", Body=new_code)
    with pytest.raises(lam.exceptions.PreconditionFailedException):
        lam.update_function_code(FunctionName="f", S3Bucket="code", S3Key="f.zip", RevisionId="stale")
    updated = lam.update_function_code(
        FunctionName="f", S3Bucket="code", S3Key="f.zip", RevisionId=first["RevisionId"]
    )
    assert (updated["LastUpdateStatus"], updated["CodeSha256"]) == ("InProgress", code_sha256(new_code))
    lam.get_waiter("function_updated_v2").wait(FunctionName="f", WaiterConfig=FAST)
    assert invoke(lam, "f")[1]["answer"] == "two"

    lam.update_function_configuration(
        FunctionName="f", Environment={"Variables": {"ANSWER": "three"}}, Timeout=9
    )
    lam.get_waiter("function_updated_v2").wait(FunctionName="f", WaiterConfig=FAST)
    assert invoke(lam, "f")[1]["answer"] == "three"
    assert lam.get_function_configuration(FunctionName="f")["Timeout"] == 9

    # An update that cannot run fails the update; the function keeps running what it ran before.
    lam.update_function_code(FunctionName="f", ZipFile=make_zip({"other.py": ECHO}))
    with pytest.raises(WaiterError, match="Failed"):
        lam.get_waiter("function_updated_v2").wait(FunctionName="f", WaiterConfig=FAST)
    config = lam.get_function_configuration(FunctionName="f")
    assert (config["State"], config["LastUpdateStatusReasonCode"]) == (
        "Active",
        "FunctionError.InvalidEntryPoint",
    )
    assert invoke(lam, "f")[1]["answer"] == "three"


def test_updates_under_concurrent_load_lose_no_invocation(localcloud):
    # Each update retires the workers of the old code while invocations are queued, running and
    # arriving; every invocation must still get an answer, from the old code or the new.
    lam = localcloud.client("lambda", config=BotoConfig(retries={"max_attempts": 1}, max_pool_connections=8))
    create_function(lam, "f")
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                response, answer = invoke(lam, "f")
            except Exception as error:  # noqa: BLE001 - any failure is what this test looks for
                failures.append(repr(error))
                continue
            if "FunctionError" in response:
                failures.append(str(answer))
            else:
                answers.append(answer["answer"])

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        for answer in ("two", "three", "four"):
            time.sleep(0.3)
            lam.update_function_code(
                FunctionName="f", ZipFile=make_zip({"app.py": ECHO.replace('"one"', f'"{answer}"')})
            )
            lam.get_waiter("function_updated_v2").wait(FunctionName="f", WaiterConfig=FAST)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    assert failures == []
    assert set(answers) == {"one", "two", "three", "four"} and answers[-1] == "four"


def test_delete_function_removes_versions_aliases_and_workers(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "f")
    publish(lam, "f")
    lam.create_alias(FunctionName="f", Name="live", FunctionVersion="1")
    pid = invoke(lam, "f", Qualifier="live")[1]["pid"]

    with pytest.raises(lam.exceptions.ResourceConflictException, match=r"aliases reference it: \['live'\]"):
        lam.delete_function(FunctionName="f", Qualifier="1")
    lam.delete_function(FunctionName="f")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="f")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        invoke(lam, "f", Qualifier="live")
    assert_process_ends(pid)


# --- versions and aliases -------------------------------------------------------------------------------


def test_publish_version_checks_preconditions_and_reuses_an_unchanged_version(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "f")
    latest = lam.get_function_configuration(FunctionName="f")

    with pytest.raises(
        lam.exceptions.InvalidParameterValueException, match="is different from current CodeSHA256"
    ):
        lam.publish_version(FunctionName="f", CodeSha256="c29tZXRoaW5nIGVsc2U=")
    with pytest.raises(
        lam.exceptions.PreconditionFailedException, match="does not match the latest Revision Id"
    ):
        lam.publish_version(FunctionName="f", RevisionId="stale")

    first = lam.publish_version(
        FunctionName="f", CodeSha256=latest["CodeSha256"], RevisionId=latest["RevisionId"], Description="v1"
    )
    assert (first["Version"], first["State"], first["Description"]) == ("1", "Pending", "v1")
    assert first["FunctionArn"].endswith(":function:f:1")
    lam.get_waiter("published_version_active").wait(FunctionName="f", Qualifier="1", WaiterConfig=FAST)
    assert lam.publish_version(FunctionName="f")["Version"] == "1"  # nothing changed since

    new_code = make_zip({"app.py": ECHO.replace('"one"', '"two"')})
    lam.update_function_code(FunctionName="f", ZipFile=new_code)
    lam.get_waiter("function_updated_v2").wait(FunctionName="f", WaiterConfig=FAST)
    second = publish(lam, "f")
    assert second["Version"] == "2"

    pages = lam.get_paginator("list_versions_by_function").paginate(
        FunctionName="f", PaginationConfig={"PageSize": 1}
    )
    versions = [version for page in pages for version in page["Versions"]]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]
    assert [v["CodeSha256"] for v in versions] == [
        code_sha256(new_code),
        latest["CodeSha256"],
        code_sha256(new_code),
    ]
    assert versions[0]["FunctionArn"].endswith(":function:f:$LATEST")
    assert (
        lam.get_function_configuration(FunctionName="f", Qualifier="1")["CodeSha256"] == latest["CodeSha256"]
    )
    assert invoke(lam, "f", Qualifier="1")[1]["answer"] == "one"
    assert invoke(lam, "f", Qualifier="2")[0]["ExecutedVersion"] == "2"


def test_aliases_route_by_weight_and_guard_their_revision(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "f")
    publish(lam, "f")
    lam.update_function_configuration(FunctionName="f", Description="second")
    lam.get_waiter("function_updated_v2").wait(FunctionName="f", WaiterConfig=FAST)
    publish(lam, "f")

    created = lam.create_alias(FunctionName="f", Name="live", FunctionVersion="1", Description="prod")
    assert created["AliasArn"] == "arn:aws:lambda:us-east-1:000000000000:function:f:live"
    with pytest.raises(lam.exceptions.ResourceConflictException, match="Alias already exists"):
        lam.create_alias(FunctionName="f", Name="live", FunctionVersion="1")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.create_alias(FunctionName="f", Name="next", FunctionVersion="7")
    with pytest.raises(lam.exceptions.PreconditionFailedException):
        lam.update_alias(FunctionName="f", Name="live", RevisionId="stale", FunctionVersion="2")
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="cannot be greater than 1"):
        lam.update_alias(
            FunctionName="f", Name="live", RoutingConfig={"AdditionalVersionWeights": {"1": 0.1, "2": 0.1}}
        )
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="already included"):
        lam.update_alias(
            FunctionName="f", Name="live", RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}
        )

    canary = lam.update_alias(
        FunctionName="f",
        Name="live",
        RevisionId=created["RevisionId"],
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.3}},
    )
    assert alias_state(canary)["weights"] == {"2": 0.3}
    assert canary["RevisionId"] != created["RevisionId"]
    assert alias_state(lam.get_alias(FunctionName="f", Name="live")) == alias_state(canary)

    executed = Counter(invoke(lam, "f", Qualifier="live")[0]["ExecutedVersion"] for _ in range(300))
    # Binomial(300, 0.3): mean 90, standard deviation 7.9; this band is more than 4 deviations wide.
    assert set(executed) == {"1", "2"} and 55 <= executed["2"] <= 125, executed
    assert invoke(lam, "f", Qualifier="live")[1]["arn"].endswith(":function:f:live")

    promoted = lam.update_alias(
        FunctionName="f", Name="live", FunctionVersion="2", RoutingConfig={"AdditionalVersionWeights": {}}
    )
    assert alias_state(promoted) | {"revision_id": None} == {
        "exists": True,
        "version": "2",
        "weights": {},
        "revision_id": None,
    }
    assert {invoke(lam, "f", Qualifier="live")[0]["ExecutedVersion"] for _ in range(5)} == {"2"}
    assert [a["Name"] for a in lam.list_aliases(FunctionName="f", FunctionVersion="2")["Aliases"]] == ["live"]
    lam.delete_alias(FunctionName="f", Name="live")
    with pytest.raises(lam.exceptions.ResourceNotFoundException, match="Alias not found"):
        lam.get_alias(FunctionName="f", Name="live")


# --- invoking ---------------------------------------------------------------------------------------


def test_invoke_runs_the_handler_with_lambdas_environment_and_logs(localcloud):
    lam, logs = localcloud.client("lambda"), localcloud.client("logs")
    create_function(lam, "f", MemorySize=512)
    response, answer = invoke(lam, "f", {"print": "hello from the handler"}, LogType="Tail")

    assert (response["StatusCode"], response["ExecutedVersion"], "FunctionError" in response) == (
        200,
        "$LATEST",
        False,
    )
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/json"
    assert answer["event"] == {"print": "hello from the handler"}
    env = answer["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "f"
    assert (env["AWS_LAMBDA_FUNCTION_VERSION"], env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]) == ("$LATEST", "512")
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/f"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", env["AWS_LAMBDA_LOG_STREAM_NAME"])
    assert env["_HANDLER"] == "app.handler" and os.path.isfile(
        os.path.join(env["LAMBDA_TASK_ROOT"], "app.py")
    )

    tail = base64.b64decode(response["LogResult"]).decode()
    request_id = answer["request_id"]
    assert f"START RequestId: {request_id} Version: $LATEST" in tail
    assert "hello from the handler" in tail and f"END RequestId: {request_id}" in tail
    report = re.search(
        rf"REPORT RequestId: {request_id}\tDuration: [\d.]+ ms\tBilled Duration: \d+ ms\t"
        r"Memory Size: 512 MB\tMax Memory Used: \d+ MB\tInit Duration: ([\d.]+) ms",
        tail,
    )
    assert report, tail  # a cold start reports its init time
    second = base64.b64decode(invoke(lam, "f", LogType="Tail")[0]["LogResult"]).decode()
    assert "Init Duration" not in second  # the worker is warm now

    events = wait_for_log(logs, "/aws/lambda/f", "hello from the handler")
    streams = {event["logStreamName"] for event in events}
    assert streams == {env["AWS_LAMBDA_LOG_STREAM_NAME"]}
    assert any(event["message"].startswith(f"REPORT RequestId: {request_id}") for event in events)


def test_a_raised_error_is_an_unhandled_function_error(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "f")
    response, error = invoke(lam, "f", {"fail": "no digits here"}, LogType="Tail")
    assert (response["StatusCode"], response["FunctionError"]) == (200, "Unhandled")
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "no digits here")
    assert any("raise ValueError" in line for line in error["stackTrace"])
    assert "[ERROR] ValueError: no digits here" in base64.b64decode(response["LogResult"]).decode()


def test_an_import_error_is_reported_as_the_invocations_error(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "f", make_zip({"app.py": "raise RuntimeError('model file is corrupt')\n"}))
    response, error = invoke(lam, "f")
    assert response["FunctionError"] == "Unhandled"
    assert (error["errorType"], error["errorMessage"]) == ("RuntimeError", "model file is corrupt")


def test_a_timeout_kills_the_worker_and_a_new_one_takes_over(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "slow", Timeout=1)
    old_pid = invoke(lam, "slow")[1]["pid"]

    started = time.monotonic()
    response, error = invoke(lam, "slow", {"sleep": 30}, LogType="Tail")
    assert 1.0 <= time.monotonic() - started < 5
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Sandbox.Timedout"
    assert error["errorMessage"].endswith("Task timed out after 1.00 seconds")
    assert "Status: timeout" in base64.b64decode(response["LogResult"]).decode()
    assert_process_ends(old_pid)

    response, answer = invoke(lam, "slow", LogType="Tail")
    assert answer["pid"] != old_pid
    assert "Init Duration" in base64.b64decode(response["LogResult"]).decode()


def test_invocation_types_payload_limits_and_missing_targets(localcloud):
    lam, logs = localcloud.client("lambda"), localcloud.client("logs")
    create_function(lam, "f")
    assert lam.invoke(FunctionName="f", InvocationType="DryRun")["StatusCode"] == 204
    queued = lam.invoke(FunctionName="f", InvocationType="Event", Payload=b'{"print": "ran later"}')
    assert queued["StatusCode"] == 202
    assert any("ran later" in e["message"] for e in wait_for_log(logs, "/aws/lambda/f", "ran later"))

    with pytest.raises(ClientError) as excinfo:
        lam.invoke(FunctionName="f", Payload=b'{"x": "' + b"a" * (6 * 1024 * 1024) + b'"}')
    assert error_code(excinfo) == "RequestEntityTooLargeException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke(FunctionName="f", Payload=b"{not json")
    with pytest.raises(lam.exceptions.ResourceNotFoundException, match="function:f:nope"):
        lam.invoke(FunctionName="f", Qualifier="nope")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="other")


def test_workers_scale_to_the_limit_and_throttle_past_the_queue(tmp_path, monkeypatch):
    # Two workers per version, and one invocation may wait for them.
    monkeypatch.setenv("LOCALCLOUD_LAMBDA_WORKERS_PER_VERSION", "2")
    monkeypatch.setenv("LOCALCLOUD_LAMBDA_QUEUE_PER_VERSION", "1")
    with LocalCloud(Config(data_dir=tmp_path / "lc", port=0)) as cloud:
        lam = cloud.client("lambda", config=BotoConfig(retries={"max_attempts": 1}))
        create_function(lam, "f", Timeout=30)
        results: dict[str, dict] = {}

        def call(key: str, event: dict) -> None:
            results[key] = invoke(lam, "f", event)[1]

        markers = [tmp_path / "a", tmp_path / "b"]
        started = time.monotonic()
        running = [
            threading.Thread(target=call, args=(str(m), {"sleep": 2, "marker": str(m)})) for m in markers
        ]
        for thread in running:
            thread.start()
        deadline = time.monotonic() + 20
        while not all(m.exists() for m in markers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(m.exists() for m in markers), "both invocations should run at once, on two workers"
        waiting = threading.Thread(target=call, args=("queued", {}))
        waiting.start()
        time.sleep(0.3)
        with pytest.raises(lam.exceptions.TooManyRequestsException):
            lam.invoke(FunctionName="f", Payload=b"{}")
        for thread in [*running, waiting]:
            thread.join(timeout=30)
        assert time.monotonic() - started < 3.9  # two 2 s sleeps side by side, not one after the other
        assert len({results[str(m)]["pid"] for m in markers}) == 2
        assert results["queued"]["pid"] in {results[str(m)]["pid"] for m in markers}  # waited for a warm one
        # Invoked one at a time, the worker that answered last takes every invocation, as its caches are
        # warm; the other stays idle rather than taking turns.
        assert len({invoke(lam, "f", {})[1]["pid"] for _ in range(20)}) == 1


# --- a real Lambda: the MNIST handler and a trained model -----------------------------------------------


def test_the_mnist_lambda_predicts_real_digits_through_an_alias(localcloud, trained_model_dir, mnist):
    import onnxruntime as ort

    lam = localcloud.client("lambda")
    code = build_lambda_zip(
        HANDLER_FILE, trained_model_dir / "model.onnx", trained_model_dir / "model_card.json"
    )
    create_function(lam, "mnist", code, Handler=HANDLER, MemorySize=512, Timeout=30)
    version = publish(lam, "mnist", CodeSha256=code_sha256(code))
    lam.create_alias(FunctionName="mnist", Name="live", FunctionVersion=version["Version"])

    images, labels = mnist.test_images[:200], mnist.test_labels[:200]
    response, answer = invoke(
        lam, "mnist", {"inputs": images.reshape(200, -1).tolist()}, Qualifier="live", LogType="Tail"
    )
    assert (response["ExecutedVersion"], answer["statusCode"]) == ("1", 200)
    body = json.loads(answer["body"])
    output = json.loads((trained_model_dir / "model_card.json").read_text())["output"]["name"]
    session = ort.InferenceSession(str(trained_model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = images.reshape(200, -1).astype(np.float32)
    (scores,) = session.run([output], {session.get_inputs()[0].name: pixels})
    assert body["predictions"] == scores.argmax(axis=1).tolist()  # exactly the model's answers
    assert np.mean(np.array(body["predictions"]) == labels) > 0.9
    assert body["model"]["version"] == "1"
    assert '"message": "mnist request"' in base64.b64decode(response["LogResult"]).decode()

    _, rejected = invoke(lam, "mnist", {"input": [1, 2, 3]}, Qualifier="live")
    assert rejected["statusCode"] == 400
    assert json.loads(rejected["body"])["error"]["code"] == "wrong_length"


# --- durability and clean shutdown ---------------------------------------------------------------------


def test_functions_versions_and_aliases_survive_a_restart(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "f", Environment={"Variables": {"ANSWER": "kept"}})
    publish(lam, "f")
    lam.create_alias(FunctionName="f", Name="live", FunctionVersion="1")
    before = lam.get_function_configuration(FunctionName="f")

    localcloud.restart()
    lam = localcloud.client("lambda")
    after = lam.get_function_configuration(FunctionName="f")
    assert (after["RevisionId"], after["CodeSha256"], after["State"]) == (
        before["RevisionId"],
        before["CodeSha256"],
        "Active",
    )
    assert lam.get_alias(FunctionName="f", Name="live")["FunctionVersion"] == "1"
    response, answer = invoke(lam, "f", Qualifier="live")
    assert (response["ExecutedVersion"], answer["answer"]) == ("1", "kept")


def test_no_worker_outlives_the_server(tmp_path):
    cloud = LocalCloud(Config(data_dir=tmp_path / "lc", port=0)).start()
    try:
        lam = cloud.client("lambda", config=BotoConfig(retries={"max_attempts": 1}))
        create_function(lam, "f")
        create_function(lam, "g")
        pids = [invoke(lam, name)[1]["pid"] for name in ("f", "g")]
        outcome: list[Exception] = []

        def interrupted_call() -> None:
            try:
                lam.invoke(FunctionName="f", Payload=b'{"sleep": 30}')
            except Exception as error:  # the server goes away under it
                outcome.append(error)

        busy = threading.Thread(target=interrupted_call)
        busy.start()  # one worker is in the middle of an invocation when the server stops
        time.sleep(0.5)
        pids += [pid for pool in cloud.lambda_.runtime.pools() for pid in pool.worker_pids()]
    finally:
        cloud.stop()
    busy.join(timeout=10)
    assert outcome, "the interrupted invocation should fail, not hang"
    for pid in set(pids):
        assert_process_ends(pid)


def test_workers_die_with_a_killed_server(tmp_path):
    """Even a SIGKILLed localcloud, which stops nothing, leaves no worker behind (parent-death signal)."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from localcloud.app import LocalCloud; "
            "cloud = LocalCloud(data_dir=sys.argv[1], port=0).start(); print(cloud.endpoint_url, flush=True); "
            "time.sleep(60)",
            str(tmp_path / "lc"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lam = make_client(server.stdout.readline().strip(), "lambda")
        create_function(lam, "f", Timeout=60)
        interrupted: list[Exception] = []

        def busy_call() -> None:
            try:
                invoke(lam, "f", {"sleep": 30})
            except Exception as error:  # the server dies under it
                interrupted.append(error)

        busy = threading.Thread(target=busy_call)
        busy.start()
        deadline = time.monotonic() + 10
        while not _worker_pids_of(server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = invoke(lam, "f")[1]["pid"]  # a second worker, since the first is busy in its handler
        workers = _worker_pids_of(server.pid)
        assert idle in workers and len(workers) == 2
    finally:
        server.kill()
        server.wait()
    for pid in workers:
        assert_process_ends(pid)
    busy.join(timeout=30)
    assert interrupted, "the interrupted invocation should fail, not hang"


def _worker_pids_of(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"\nPPid:\t{parent}\n" in (entry / "status").read_text():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def assert_process_ends(pid: int, timeout: float = 5.0) -> None:
    """Wait for `pid` to be gone; a zombie counts as gone (orphans may not be reaped in a container)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            return
        if state == "Z":
            return
        time.sleep(0.02)
    pytest.fail(f"worker process {pid} is still running")


# --- differential: the same control-plane calls against moto and localcloud --------------------------


def control_plane_story(lam) -> list:
    """Create, update, publish, alias with routing: what the pipeline does, and what it reads back."""
    code_one, code_two = make_zip({"app.py": ECHO}), make_zip({"app.py": ECHO.replace('"one"', '"two"')})
    seen: list = []
    created = create_function(lam, "story", code_one, wait=False)
    lam.get_waiter("function_active_v2").wait(FunctionName="story", WaiterConfig=FAST)
    config = lam.get_function_configuration(FunctionName="story")
    seen.append(
        {k: config[k] for k in ("FunctionName", "Handler", "Runtime", "Timeout", "MemorySize", "Version")}
    )
    seen.append((created["CodeSha256"], created["CodeSize"], config["FunctionArn"].split(":function:")[1]))
    first = lam.publish_version(FunctionName="story", Description="first")
    seen.append((first["Version"], first["CodeSha256"], first["Description"]))
    seen.append(lam.publish_version(FunctionName="story")["Version"])  # unchanged: the same version
    updated = lam.update_function_code(FunctionName="story", ZipFile=code_two)
    seen.append((updated["CodeSha256"], updated["CodeSize"]))
    lam.get_waiter("function_updated_v2").wait(FunctionName="story", WaiterConfig=FAST)
    lam.get_waiter("published_version_active").wait(FunctionName="story", Qualifier="1", WaiterConfig=FAST)
    second = lam.publish_version(FunctionName="story", CodeSha256=updated["CodeSha256"])
    seen.append((second["Version"], second["FunctionArn"].split(":function:")[1]))
    versions = [
        v
        for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName="story")
        for v in page["Versions"]
    ]
    seen.append([(v["Version"], v["CodeSha256"]) for v in versions])
    alias = lam.create_alias(
        FunctionName="story",
        Name="live",
        FunctionVersion="1",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.25}},
    )
    seen.append((alias["AliasArn"].split(":function:")[1], alias_state(alias) | {"revision_id": None}))
    got = lam.get_alias(FunctionName="story", Name="live")
    seen.append(alias_state(got) | {"revision_id": None})
    moved = lam.update_alias(
        FunctionName="story", Name="live", FunctionVersion="2", RoutingConfig={"AdditionalVersionWeights": {}}
    )
    seen.append(alias_state(moved) | {"revision_id": None})
    seen.append(
        [(a["Name"], a["FunctionVersion"]) for a in lam.list_aliases(FunctionName="story")["Aliases"]]
    )
    for call in (
        lambda: lam.get_function(FunctionName="absent"),
        lambda: lam.get_alias(FunctionName="story", Name="absent"),
        lambda: lam.get_function_configuration(FunctionName="story", Qualifier="9"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        seen.append((error_code(excinfo), excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]))
    lam.delete_function(FunctionName="story")
    with pytest.raises(ClientError) as excinfo:
        lam.get_function(FunctionName="story")
    seen.append(error_code(excinfo))
    return seen


def test_control_plane_matches_moto(localcloud, monkeypatch):
    import boto3
    from moto import mock_aws

    ours = control_plane_story(localcloud.client("lambda"))
    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("iam").create_role(RoleName="lambda-test", AssumeRolePolicyDocument="{}")
        moto_role = boto3.client("iam").get_role(RoleName="lambda-test")["Role"]["Arn"]
        moto_lambda = boto3.client("lambda")
        original = moto_lambda.create_function

        def create_with_moto_role(**kwargs):
            return original(**{**kwargs, "Role": moto_role})

        moto_lambda.create_function = create_with_moto_role
        theirs = control_plane_story(moto_lambda)
    assert ours == theirs


def test_lambda_backend_reads_its_pool_sizes_from_the_environment(tmp_path, monkeypatch):
    from localcloud.store import Store

    monkeypatch.setenv("LOCALCLOUD_LAMBDA_WORKERS_PER_VERSION", "none")
    store = Store(tmp_path)
    try:
        with pytest.raises(ValueError, match="LOCALCLOUD_LAMBDA_WORKERS_PER_VERSION must be an integer >= 1"):
            LambdaBackend(store, Config(data_dir=tmp_path), s3=None, logs=None)
    finally:
        store.close()


def test_an_injected_fault_fails_only_the_invocations_it_names(localcloud):
    lam = localcloud.client("lambda")
    create_function(lam, "faulty")
    lam.publish_version(FunctionName="faulty")
    lam.get_waiter("published_version_active").wait(FunctionName="faulty", Qualifier="1", WaiterConfig=FAST)
    lam.create_alias(FunctionName="faulty", Name="live", FunctionVersion="1")
    faults = f"{localcloud.endpoint_url}/_localcloud/chaos/faults"
    rule = {"service": "lambda", "operation": "Invoke", "function_name": "faulty", "qualifier": "live"}
    request = urllib.request.Request(faults, data=json.dumps([rule]).encode(), method="POST")
    with urllib.request.urlopen(request) as answer:
        assert json.load(answer)[0]["error_type"] == "InjectedFault"

    through_alias, payload = invoke(lam, "faulty", {"x": 1}, Qualifier="live")
    assert through_alias["FunctionError"] == "Unhandled" and through_alias["ExecutedVersion"] == "1"
    assert payload == {"errorMessage": "fault injected by localcloud", "errorType": "InjectedFault"}
    direct, payload = invoke(lam, "faulty", {"x": 1}, Qualifier="1")  # another qualifier: not named
    assert "FunctionError" not in direct and payload["event"] == {"x": 1}

    with urllib.request.urlopen(urllib.request.Request(faults, method="DELETE")) as answer:
        assert json.load(answer) == []
    assert "FunctionError" not in invoke(lam, "faulty", {}, Qualifier="live")[0]


def test_a_fault_rule_naming_an_unknown_field_is_refused(localcloud):
    request = urllib.request.Request(
        f"{localcloud.endpoint_url}/_localcloud/chaos/faults",
        data=json.dumps({"service": "lambda", "operation": "Invoke", "functoin_name": "x"}).encode(),
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request)
    assert error.value.code == 400 and "functoin_name" in error.value.read().decode()
