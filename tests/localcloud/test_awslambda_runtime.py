"""localcloud's Lambda execution: awslambdaric workers, their logs, timeouts, scaling, shutdown and faults."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from localcloud.app import LocalCloud, make_client
from localcloud.config import Config
from mnist_pipeline.lambda_zip import HANDLER, build_lambda_zip, code_sha256
from tests.localcloud.test_awslambda import (
    FAST,
    HANDLER_FILE,
    assert_process_ends,
    create_function,
    error_code,
    invoke,
    make_zip,
    publish,
    wait_for_log,
)

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


@pytest.mark.slow
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
    # The tail is the log's last 4 KB, less than a 200-image request's line (its features): one image.
    response, _ = invoke(
        lam, "mnist", {"input": pixels[0].astype(int).tolist()}, Qualifier="live", LogType="Tail"
    )
    assert '"message": "mnist request"' in base64.b64decode(response["LogResult"]).decode()

    _, rejected = invoke(lam, "mnist", {"input": [1, 2, 3]}, Qualifier="live")
    assert rejected["statusCode"] == 400
    assert json.loads(rejected["body"])["error"]["code"] == "wrong_length"


# --- clean shutdown ---------------------------------------------------------------------------------------


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- injected faults ----------------------------------------------------------------------------------


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
