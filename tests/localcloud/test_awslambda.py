"""localcloud's Lambda control plane through boto3: functions, versions, aliases, durability, moto parity.

Execution (invoking, workers, timeouts, faults) is in test_awslambda_runtime.py; both share the helpers here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, WaiterError

from localcloud.awslambda import LambdaBackend
from localcloud.config import Config
from mnist_pipeline.lambda_zip import code_sha256
from mnist_pipeline.live_alias import alias_state

ROLE = "arn:aws:iam::000000000000:role/lambda-test"
HANDLER_FILE = Path(__file__).resolve().parents[2] / "lambda_package" / "handler.py"
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


# --- durability -----------------------------------------------------------------------------------------


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
