"""localcloud's SageMaker through boto3, moto and the Airflow amazon provider, with jobs that really run.

Training jobs run the official sagemaker-training toolkit. Most tests use a stand-in script that
starts in a fraction of a second (no torch), so stopping, time limits, queueing and restarts stay
cheap; one module-scoped job trains model_code/train.py on a small real-MNIST sample (one epoch),
and one fails on a corrupt shard.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, WaiterError

from localcloud.processes import live_members
from localcloud.sagemaker.runner import INTERRUPTED
from mnist_pipeline.train import pack_source_dir
from model_code.metric_definitions import METRIC_DEFINITIONS
from model_code.shards import shard_bytes
from tests.fixtures.localcloud import LocalCloudHandle, use_as_aws_default
from tests.fixtures.model import MODEL_CODE

ROLE = "arn:aws:iam::000000000000:role/localcloud-sagemaker"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312"
BUCKET = "mnist-jobs"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
FAST_WAITER = {"Delay": 1, "MaxAttempts": 120}

# A stand-in training script: starts fast, shows what it was given, runs as long as asked.
STAND_IN_TRAIN_PY = """
import argparse, json, os, pathlib, time

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=0)
parser.add_argument("--quiet", default="false")
args = parser.parse_args()
model_dir = pathlib.Path(os.environ["SM_MODEL_DIR"])
(model_dir / "pid").write_text(str(os.getpid()))
(model_dir / "weights.txt").write_text("partial")
env = {name: os.environ.get(name) for name in ("GREETING", "AWS_ENDPOINT_URL", "AWS_PROFILE", "TRAINING_JOB_NAME")}
print("environment " + json.dumps(env, sort_keys=True), flush=True)
for channel in json.loads(os.environ["SM_CHANNELS"]):
    root = pathlib.Path(os.environ["SM_CHANNEL_" + channel.upper()])
    files = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    print("channel " + channel + " " + json.dumps(files), flush=True)
step, deadline = 0, time.time() + args.seconds
while True:
    step += 1
    if args.quiet.lower() != "true":  # the toolkit passes JSON true as "True"
        print(f"step={step} loss={1 / step:.4f}", flush=True)
    if time.time() >= deadline:
        break
    time.sleep(0.2)
(model_dir / "weights.txt").write_text(f"steps={step}")
print("done", flush=True)
"""
STAND_IN_METRICS = [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]


def error_of(excinfo: pytest.ExceptionInfo) -> tuple[str, str]:
    error = excinfo.value.response["Error"]
    return error["Code"], error["Message"]


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def source_tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb") as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for name, text in files.items():
            data = text.encode()
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def job_request(name: str, source_uri: str, channels: dict[str, tuple[str, str]], **overrides: Any) -> dict:
    """A CreateTrainingJob request as the pipeline builds it; channels: name -> (S3DataType, S3Uri)."""
    hyperparameters = {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(source_uri),
        **overrides.pop("HyperParameters", {}),
    }
    request = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": STAND_IN_METRICS,
        },
        "RoleArn": ROLE,
        "HyperParameters": hyperparameters,
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    if channels:
        request["InputDataConfig"] = [
            {
                "ChannelName": channel,
                "DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": uri}},
                "InputMode": "File",
            }
            for channel, (data_type, uri) in channels.items()
        ]
    request.update(overrides)
    return request


@pytest.fixture
def clients(localcloud):
    """(sagemaker, s3, logs) clients, a bucket with one data file and the stand-in script's source."""
    sm, s3, logs = (localcloud.client(name) for name in ("sagemaker", "s3", "logs"))
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/train/part-0.bin", Body=b"\x00" * 16)
    s3.put_object(
        Bucket=BUCKET, Key="code/sourcedir.tar.gz", Body=source_tarball({"train.py": STAND_IN_TRAIN_PY})
    )
    return sm, s3, logs


STAND_IN_SOURCE = f"s3://{BUCKET}/code/sourcedir.tar.gz"
STAND_IN_CHANNELS = {"train": ("S3Prefix", f"s3://{BUCKET}/data/train/")}


def stand_in_job(
    sm, name: str, seconds: float = 0, channels: dict = STAND_IN_CHANNELS, **overrides: Any
) -> str:
    hyperparameters = {"seconds": str(seconds), **overrides.pop("HyperParameters", {})}
    request = job_request(name, STAND_IN_SOURCE, channels, HyperParameters=hyperparameters, **overrides)
    return sm.create_training_job(**request)["TrainingJobArn"]


def log_lines(logs, job: str) -> list[str]:
    try:
        streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job}/")[
            "logStreams"
        ]
    except logs.exceptions.ResourceNotFoundException:
        return []
    lines = []
    for stream in streams:
        events = logs.get_log_events(
            logGroupName=LOG_GROUP, logStreamName=stream["logStreamName"], startFromHead=True
        )["events"]
        lines += [event["message"] for event in events]
    return lines


def training_pid(localcloud, job: str) -> int:
    """The stand-in script's pid, which it writes into its model dir as soon as it starts."""
    pid_file = localcloud.data_dir / "sagemaker" / "training-jobs" / job / "model" / "pid"
    return int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what=f"{job} to start"))


def process_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # a zombie has stopped running; only its parent's wait is missing


def archive_members(s3, uri: str) -> dict[str, bytes]:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}


# --- the API contract ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"TrainingJobName": "bad_name"}, "failed to satisfy constraint"),
        ({"TrainingJobName": "x" * 64}, "failed to satisfy constraint"),
        ({"RoleArn": "arn:aws:iam::000000000000:user/someone"}, "roleArn"),
        (
            {"AlgorithmSpecification": {"AlgorithmName": "xgboost", "TrainingInputMode": "File"}},
            "AlgorithmName",
        ),
        ({"AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "Pipe"}}, "Pipe"),
        (
            {
                "AlgorithmSpecification": {
                    "TrainingImage": IMAGE,
                    "TrainingInputMode": "File",
                    "MetricDefinitions": [{"Name": "acc", "Regex": "acc=(["}],
                }
            },
            "'acc' is not a valid regular expression",
        ),
        ({"ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}}, "InstanceCount must be 1"),
        ({"OutputDataConfig": {"S3OutputPath": "/local/path"}}, "s3OutputPath"),
        ({"EnableManagedSpotTraining": True}, "Invalid MaxWaitTimeInSeconds"),
        (
            {"StoppingCondition": {"MaxRuntimeInSeconds": 60, "MaxWaitTimeInSeconds": 120}},
            "EnableManagedSpotTraining",
        ),
    ],
)
def test_create_training_job_refuses_what_sagemaker_refuses(clients, change, message):
    sm, _, _ = clients
    request = job_request("valid-name", STAND_IN_SOURCE, STAND_IN_CHANNELS)
    request.update(change)
    with pytest.raises(ClientError) as excinfo:
        sm.create_training_job(**request)
    code, text = error_of(excinfo)
    assert code == "ValidationException"
    assert message in text
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []


def test_missing_jobs_answer_validation_exception_as_the_provider_expects(clients):
    sm, _, _ = clients
    with pytest.raises(ClientError) as excinfo:
        sm.describe_training_job(TrainingJobName="no-such-job")
    assert error_of(excinfo) == ("ValidationException", "Requested resource not found.")
    with pytest.raises(ClientError) as excinfo:
        sm.stop_training_job(TrainingJobName="no-such-job")
    assert error_of(excinfo)[0] == "ValidationException"
    with pytest.raises(WaiterError) as waited:
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="no-such-job", WaiterConfig=FAST_WAITER
        )
    assert "ValidationException" in str(waited.value)


def test_unsupported_operations_name_themselves(clients):
    sm, _, _ = clients
    with pytest.raises(ClientError) as excinfo:
        sm.list_endpoints()
    code, message = error_of(excinfo)
    assert code == "NotImplemented"
    assert "SageMaker.ListEndpoints" in message


def test_missing_input_data_fails_the_job_with_sagemakers_client_error(clients):
    sm, _, _ = clients
    request = job_request("no-data", STAND_IN_SOURCE, {"train": ("S3Prefix", f"s3://{BUCKET}/nothing/here/")})
    sm.create_training_job(**request)
    with pytest.raises(WaiterError):
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="no-data", WaiterConfig=FAST_WAITER
        )
    job = sm.describe_training_job(TrainingJobName="no-data")
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith(
        f'ClientError: No S3 objects found under S3 URL "s3://{BUCKET}/nothing/here/"'
    )
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == ["Starting", "Downloading", "Failed"]
    assert "ModelArtifacts" not in job

    with pytest.raises(ClientError) as excinfo:
        sm.create_training_job(**request)
    code, message = error_of(excinfo)
    assert code == "ValidationException"
    assert "already exists" in message and job["TrainingJobArn"] in message
    with pytest.raises(ClientError) as excinfo:
        sm.stop_training_job(TrainingJobName="no-data")
    assert "status Failed" in error_of(excinfo)[1]


@pytest.mark.slow
def test_a_job_gets_its_channels_environment_and_hyperparameters_and_uploads_its_model(
    localcloud, clients, monkeypatch
):
    sm, s3, logs = clients
    monkeypatch.setenv("AWS_PROFILE", "the-hosts-real-profile")
    s3.put_object(Bucket=BUCKET, Key="data/train/nested/part-1.bin", Body=b"\x01")
    s3.put_object(Bucket=BUCKET, Key="lake/a.bin", Body=b"a")
    s3.put_object(Bucket=BUCKET, Key="lake/deep/b.bin", Body=b"b")
    manifest = [{"prefix": f"s3://{BUCKET}/lake/"}, "a.bin", "deep/b.bin"]
    s3.put_object(Bucket=BUCKET, Key="manifests/test.manifest", Body=json.dumps(manifest).encode())
    request = job_request(
        "stand-in-1",
        STAND_IN_SOURCE,
        {**STAND_IN_CHANNELS, "test": ("ManifestFile", f"s3://{BUCKET}/manifests/test.manifest")},
        HyperParameters={"seconds": "0.5"},
        Environment={"GREETING": "hello"},
        Tags=[{"Key": "run_id", "Value": "manual__2024-01-01"}],
    )
    arn = sm.create_training_job(**request)["TrainingJobArn"]
    assert arn == "arn:aws:sagemaker:us-east-1:000000000000:training-job/stand-in-1"
    started = sm.describe_training_job(TrainingJobName="stand-in-1")
    assert started["TrainingJobStatus"] == "InProgress"
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName="stand-in-1", WaiterConfig=FAST_WAITER
    )

    job = sm.describe_training_job(TrainingJobName="stand-in-1")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
    ]
    assert job["CreationTime"] <= job["TrainingStartTime"] < job["TrainingEndTime"] <= job["LastModifiedTime"]
    assert job["TrainingTimeInSeconds"] == job["BillableTimeInSeconds"] >= 0
    assert job["HyperParameters"] == request["HyperParameters"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE

    lines = log_lines(logs, "stand-in-1")
    environment = json.loads(next(line for line in lines if line.startswith("environment "))[12:])
    assert environment == {
        "AWS_ENDPOINT_URL": localcloud.endpoint_url,
        "AWS_PROFILE": None,
        "GREETING": "hello",
        "TRAINING_JOB_NAME": "stand-in-1",
    }
    assert f"channel train {json.dumps(['nested/part-1.bin', 'part-0.bin'])}" in lines
    assert f"channel test {json.dumps(['a.bin', 'deep/b.bin'])}" in lines
    last_loss = [line for line in lines if line.startswith("step=")][-1].split("loss=")[1]
    assert [(m["MetricName"], m["Value"]) for m in job["FinalMetricDataList"]] == [
        ("train:loss", float(last_loss))
    ]

    model = archive_members(s3, job["ModelArtifacts"]["S3ModelArtifacts"])
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/output/stand-in-1/output/model.tar.gz"
    assert model["weights.txt"].startswith(b"steps=")
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "run_id", "Value": "manual__2024-01-01"}]


@pytest.mark.slow
def test_list_training_jobs_filters_sorts_and_pages(clients):
    sm, _, _ = clients
    names = ["list-b", "list-a", "other-c"]
    for name in names:
        stand_in_job(sm, name, channels={})
        time.sleep(0.01)  # distinct CreationTimes (milliseconds, as on AWS)
    waiter = sm.get_waiter("training_job_completed_or_stopped")
    for name in names:
        waiter.wait(TrainingJobName=name, WaiterConfig=FAST_WAITER)
    oldest_first = [s["TrainingJobName"] for s in sm.list_training_jobs()["TrainingJobSummaries"]]
    assert oldest_first == names
    pages = sm.get_paginator("list_training_jobs").paginate(
        NameContains="LIST", SortBy="Name", SortOrder="Descending", PaginationConfig={"PageSize": 1}
    )
    assert [[s["TrainingJobName"] for s in page["TrainingJobSummaries"]] for page in pages] == [
        ["list-b"],
        ["list-a"],
    ]
    summary = sm.list_training_jobs(StatusEquals="Completed", MaxResults=1)["TrainingJobSummaries"][0]
    assert summary["TrainingJobStatus"] == "Completed" and summary["SecondaryStatus"] == "Completed"
    assert sm.list_training_jobs(StatusEquals="InProgress")["TrainingJobSummaries"] == []
    created = sm.describe_training_job(TrainingJobName="list-a")["CreationTime"]
    after = sm.list_training_jobs(CreationTimeAfter=created)["TrainingJobSummaries"]
    assert [s["TrainingJobName"] for s in after] == ["other-c"]
    with pytest.raises(ClientError) as excinfo:
        sm.list_training_jobs(SortBy="Size")
    assert error_of(excinfo)[0] == "ValidationException"


@pytest.mark.slow
def test_stop_training_job_ends_the_process_tree_and_frees_the_slot_for_the_queued_job(localcloud, clients):
    sm, s3, _ = clients
    stand_in_job(sm, "runs-long", seconds=120)
    stand_in_job(sm, "waits-its-turn", seconds=0)
    pid = training_pid(localcloud, "runs-long")

    queued = sm.describe_training_job(TrainingJobName="waits-its-turn")
    assert (queued["TrainingJobStatus"], queued["SecondaryStatus"]) == ("InProgress", "Starting")
    assert "at most 1 job(s) at once" in queued["SecondaryStatusTransitions"][-1]["StatusMessage"]

    sm.stop_training_job(TrainingJobName="runs-long")
    stopping = sm.describe_training_job(TrainingJobName="runs-long")
    assert (stopping["TrainingJobStatus"], stopping["SecondaryStatus"]) in (
        ("Stopping", "Stopping"),
        ("Stopped", "Stopped"),
    )
    sm.stop_training_job(TrainingJobName="runs-long")  # stopping twice is fine
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName="runs-long", WaiterConfig=FAST_WAITER
    )
    stopped = sm.describe_training_job(TrainingJobName="runs-long")
    assert (stopped["TrainingJobStatus"], stopped["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert "FailureReason" not in stopped
    assert wait_until(lambda: process_gone(pid), timeout=15, what="the script to end")
    # What the model dir held when the job was stopped is kept, as on SageMaker.
    assert archive_members(s3, stopped["ModelArtifacts"]["S3ModelArtifacts"])["weights.txt"] == b"partial"

    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName="waits-its-turn", WaiterConfig=FAST_WAITER
    )
    assert sm.describe_training_job(TrainingJobName="waits-its-turn")["TrainingJobStatus"] == "Completed"


@pytest.mark.slow
def test_max_runtime_stops_the_job(localcloud, clients):
    sm, _, _ = clients
    stand_in_job(sm, "too-slow", seconds=120, StoppingCondition={"MaxRuntimeInSeconds": 2})
    pid = training_pid(localcloud, "too-slow")
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName="too-slow", WaiterConfig=FAST_WAITER
    )
    job = sm.describe_training_job(TrainingJobName="too-slow")
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert "MaxRuntimeInSeconds of 2 s" in job["FailureReason"]
    assert 2 <= job["TrainingTimeInSeconds"] <= 10
    assert process_gone(pid)


@pytest.mark.slow
def test_requirements_the_host_lacks_fail_fast_without_the_network(clients):
    sm, s3, _ = clients
    source = {"train.py": STAND_IN_TRAIN_PY, "requirements.txt": "surely-not-installed-package==1.0\n"}
    s3.put_object(Bucket=BUCKET, Key="code/needs-more.tar.gz", Body=source_tarball(source))
    sm.create_training_job(
        **job_request("needs-more", f"s3://{BUCKET}/code/needs-more.tar.gz", STAND_IN_CHANNELS)
    )
    with pytest.raises(WaiterError):
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="needs-more", WaiterConfig=FAST_WAITER
        )
    job = sm.describe_training_job(TrainingJobName="needs-more")
    assert job["FailureReason"].startswith("AlgorithmError: InstallRequirementsError")
    assert "PIP_NO_INDEX=1" in job["FailureReason"]
    assert len(job["FailureReason"]) <= 1024


# --- durability ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_restart_fails_the_running_job_and_keeps_the_registry(localcloud, clients):
    sm, _, _ = clients
    stand_in_job(sm, "cut-short", seconds=120)
    pid = training_pid(localcloud, "cut-short")
    sm.create_model_package_group(ModelPackageGroupName="survivors")
    package = sm.create_model_package(
        ModelPackageGroupName="survivors",
        ModelApprovalStatus="Approved",
        CustomerMetadataProperties={"run_id": "r1"},
    )["ModelPackageArn"]

    localcloud.restart()
    sm = localcloud.client("sagemaker")
    job = sm.describe_training_job(TrainingJobName="cut-short")
    assert (job["TrainingJobStatus"], job["FailureReason"]) == ("Failed", INTERRUPTED)
    assert job["SecondaryStatusTransitions"][-1]["Status"] == "Failed"
    assert process_gone(pid)
    described = sm.describe_model_package(ModelPackageName=package)
    assert (described["ModelPackageVersion"], described["ModelApprovalStatus"]) == (1, "Approved")
    assert described["CustomerMetadataProperties"] == {"run_id": "r1"}
    assert sm.create_model_package(ModelPackageGroupName="survivors")["ModelPackageArn"].endswith(
        "/survivors/2"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(data_dir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOCALCLOUD_")},
    )

    def healthy() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return server.poll() is not None  # a dead server ends the wait; the test then fails loudly
        return True

    wait_until(healthy, timeout=30, what="localcloud to listen")
    assert server.poll() is None, "localcloud exited at start"
    return server


# --- RetryStrategy ---------------------------------------------------------------------------------

# Runs long on its first attempt and finishes on the next; the marker file, outside the job directory
# (which every attempt starts afresh), counts the attempts.
RETRIED_TRAIN_PY = """
import argparse, os, pathlib, time

parser = argparse.ArgumentParser()
parser.add_argument("--marker")
parser.add_argument("--fail", default="false")
args = parser.parse_args()
if args.fail.lower() == "true":
    raise SystemExit(1)
marker, model_dir = pathlib.Path(args.marker), pathlib.Path(os.environ["SM_MODEL_DIR"])
attempt = int(marker.read_text()) + 1 if marker.exists() else 1
marker.write_text(str(attempt))
(model_dir / f"from-attempt-{attempt}.txt").write_text("partial")
(model_dir / "pid").write_text(str(os.getpid()))
if attempt == 1:
    time.sleep(300)
"""


def retried_job(sm, s3, name: str, marker: Path, attempts: int, **hyperparameters: str) -> None:
    s3.put_object(
        Bucket=BUCKET, Key="code/retried.tar.gz", Body=source_tarball({"train.py": RETRIED_TRAIN_PY})
    )
    sm.create_training_job(
        **job_request(
            name,
            f"s3://{BUCKET}/code/retried.tar.gz",
            STAND_IN_CHANNELS,
            HyperParameters={"marker": json.dumps(str(marker)), **hyperparameters},
            RetryStrategy={"MaximumRetryAttempts": attempts},
        )
    )


def transitions(job: dict) -> list[str]:
    return [transition["Status"] for transition in job["SecondaryStatusTransitions"]]


@pytest.mark.slow
def test_retry_strategy_restarts_an_interrupted_job_in_place_until_it_completes(
    localcloud, clients, tmp_path
):
    sm, s3, _ = clients
    marker = tmp_path / "attempts"
    retried_job(sm, s3, "retried", marker, attempts=2)
    first = training_pid(localcloud, "retried")

    localcloud.restart()  # an internal failure: the job is restarted, not failed
    sm = localcloud.client("sagemaker")
    assert process_gone(first)
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName="retried", WaiterConfig=FAST_WAITER
    )
    job = sm.describe_training_job(TrainingJobName="retried")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert transitions(job) == [
        "Starting",
        "Downloading",
        "Training",
        "Restarting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
    ]
    restarting = job["SecondaryStatusTransitions"][3]
    assert (
        restarting["StatusMessage"] == "Restarting the training job after an internal error (attempt 2 of 3)"
    )
    assert marker.read_text() == "2"
    # A fresh job directory: the model holds what the second attempt wrote, nothing of the first.
    assert set(archive_members(s3, job["ModelArtifacts"]["S3ModelArtifacts"])) == {
        "from-attempt-2.txt",
        "pid",
    }
    assert [summary["TrainingJobName"] for summary in sm.list_training_jobs()["TrainingJobSummaries"]] == [
        "retried"
    ]


@pytest.mark.slow
def test_retry_strategy_fails_the_job_as_interrupted_once_its_attempts_are_used_up(
    localcloud, clients, tmp_path
):
    sm, _, _ = clients
    stand_in_job(
        sm,
        "unlucky",
        seconds=300,
        HyperParameters={"quiet": "true"},
        RetryStrategy={"MaximumRetryAttempts": 1},
    )
    first = training_pid(localcloud, "unlucky")
    localcloud.restart()
    pid_file = localcloud.data_dir / "sagemaker" / "training-jobs" / "unlucky" / "model" / "pid"
    # The restart gives the next attempt a fresh job directory before start() returns, so nothing of the
    # first attempt can be mistaken for the second's.
    assert not pid_file.exists() or int(pid_file.read_text()) != first
    second = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="the second attempt"))
    assert second != first
    localcloud.restart()
    job = localcloud.client("sagemaker").describe_training_job(TrainingJobName="unlucky")
    assert (job["TrainingJobStatus"], job["FailureReason"]) == ("Failed", INTERRUPTED)
    assert transitions(job).count("Restarting") == 1
    assert "(attempt 2 of 2)" in job["SecondaryStatusTransitions"][3]["StatusMessage"]
    assert process_gone(second)


@pytest.mark.slow
def test_a_restarted_job_that_waits_for_a_slot_keeps_nothing_of_its_last_attempt(localcloud, clients):
    localcloud.restart(max_training_jobs=2)  # Config.max_training_jobs, LOCALCLOUD_MAX_TRAINING_JOBS
    sm, _, _ = clients
    for name in ("ahead", "behind"):
        stand_in_job(sm, name, seconds=300, RetryStrategy={"MaximumRetryAttempts": 1})
    first = {name: training_pid(localcloud, name) for name in ("ahead", "behind")}
    # "ahead" restarts first; "behind" waits in Starting for the one slot
    localcloud.restart(max_training_jobs=1)
    behind = localcloud.data_dir / "sagemaker" / "training-jobs" / "behind"
    assert not behind.exists(), sorted(str(path.relative_to(behind)) for path in behind.rglob("*"))
    assert training_pid(localcloud, "ahead") != first["ahead"]
    job = localcloud.client("sagemaker").describe_training_job(TrainingJobName="behind")
    assert transitions(job)[-2:] == ["Restarting", "Starting"]  # waiting for the slot


@pytest.mark.slow
def test_retry_strategy_never_retries_a_job_that_failed_for_its_own_reasons(localcloud, clients, tmp_path):
    sm, s3, _ = clients
    retried_job(sm, s3, "bad-data", tmp_path / "attempts", attempts=3, fail="true")
    with pytest.raises(WaiterError):
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="bad-data", WaiterConfig=FAST_WAITER
        )
    localcloud.restart()
    job = localcloud.client("sagemaker").describe_training_job(TrainingJobName="bad-data")
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("AlgorithmError: ExecuteUserScriptError")
    assert "Restarting" not in transitions(job)


@pytest.mark.parametrize(
    ("attempts", "constraint"), [(0, "greater than or equal to 1"), (31, "less than or equal to 30")]
)
def test_retry_strategy_allows_1_to_30_attempts_as_sagemaker_does(localcloud, clients, attempts, constraint):
    from botocore.config import Config as BotoConfig

    sm = localcloud.client("sagemaker", config=BotoConfig(parameter_validation=False))  # boto3 checks the 1
    request = job_request("valid-name", STAND_IN_SOURCE, STAND_IN_CHANNELS)
    with pytest.raises(ClientError) as excinfo:
        sm.create_training_job(**request, RetryStrategy={"MaximumRetryAttempts": attempts})
    code, message = error_of(excinfo)
    assert code == "ValidationException"
    assert f"Value '{attempts}' at 'retryStrategy.maximumRetryAttempts'" in message and constraint in message


# A training script that starts a process of its own, says who is who, and sleeps (quietly: a script
# that kept printing would die of the broken pipe by itself once localcloud is gone).
SPAWNING_TRAIN_PY = """
import json, os, pathlib, subprocess, sys, time

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
pids = {"script": os.getpid(), "group": os.getpgrp(), "child": child.pid}
pathlib.Path(os.environ["SM_MODEL_DIR"], "pids.json").write_text(json.dumps(pids))
time.sleep(300)
"""
# A Lambda function that does the same.
SPAWNING_FUNCTION = """
import os, subprocess

def handler(event, context):
    child = subprocess.Popen(["sleep", "300"])
    return {"worker": os.getpid(), "group": os.getpgrp(), "child": child.pid}
"""


@pytest.mark.slow
def test_a_killed_localcloud_leaves_no_worker_or_training_process_behind(tmp_path):
    from localcloud.app import make_client
    from tests.localcloud.test_awslambda import create_function, invoke, make_zip

    data_dir, port = tmp_path / "data", free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = serve(data_dir, port)
    groups: dict[str, int] = {}
    try:
        sm, s3, lam = (make_client(endpoint, name) for name in ("sagemaker", "s3", "lambda"))
        create_function(lam, "spawner", make_zip({"app.py": SPAWNING_FUNCTION}))
        _, worker = invoke(lam, "spawner")
        groups["Lambda worker"] = worker["group"]
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="data/train/part-0.bin", Body=b"\x00")
        s3.put_object(
            Bucket=BUCKET, Key="code/spawner.tar.gz", Body=source_tarball({"train.py": SPAWNING_TRAIN_PY})
        )
        sm.create_training_job(
            **job_request("orphaned", f"s3://{BUCKET}/code/spawner.tar.gz", STAND_IN_CHANNELS)
        )
        pids_file = data_dir / "sagemaker" / "training-jobs" / "orphaned" / "model" / "pids.json"
        job = json.loads(wait_until(lambda: pids_file.exists() and pids_file.read_text(), what="the job"))
        groups["training job"] = job["group"]
        assert job["group"] != job["script"], "the toolkit leads the job's group, the script is in it"
        for pid in (worker["worker"], worker["child"], job["script"], job["child"]):
            assert not process_gone(pid)
        # Queued behind it (one job trains at a time), one that may be retried after a crash.
        s3.put_object(
            Bucket=BUCKET, Key="code/sourcedir.tar.gz", Body=source_tarball({"train.py": STAND_IN_TRAIN_PY})
        )
        stand_in_job(sm, "retried-after-crash", seconds=0, RetryStrategy={"MaximumRetryAttempts": 1})

        server.send_signal(signal.SIGKILL)
        server.wait()
        killed_at = time.monotonic()

        def survivors() -> dict[str, list[int]]:
            alive = {what: [stat.pid for stat in live_members(group)] for what, group in groups.items()}
            return {what: pids for what, pids in alive.items() if pids}

        while survivors() and time.monotonic() < killed_at + 2:
            time.sleep(0.01)
        assert not survivors(), f"still running 2 s after localcloud was SIGKILLed: {survivors()}"
        print(f"every worker and training process ended {time.monotonic() - killed_at:.3f} s after kill -9")

        server = serve(data_dir, port)
        job = sm.describe_training_job(TrainingJobName="orphaned")
        assert (job["TrainingJobStatus"], job["FailureReason"]) == ("Failed", INTERRUPTED)
        assert job["SecondaryStatusTransitions"][-1]["Status"] == "Failed"
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="retried-after-crash", WaiterConfig=FAST_WAITER
        )
        retried = sm.describe_training_job(TrainingJobName="retried-after-crash")
        assert retried["TrainingJobStatus"] == "Completed"
        statuses = [transition["Status"] for transition in retried["SecondaryStatusTransitions"]]
        assert statuses.count("Restarting") == 1 and statuses[-1] == "Completed", statuses
    finally:
        server.terminate()
        server.wait(timeout=30)
        for group in groups.values():  # if the test failed, nothing it started outlives it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def test_start_never_kills_a_process_only_because_it_runs_in_a_job_directory(localcloud, clients):
    from localcloud.sagemaker.jobs import JOB_KIND
    from localcloud.store import Store

    sm, _, _ = clients
    stand_in_job(sm, "was-running", seconds=0)
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName="was-running", WaiterConfig=FAST_WAITER
    )
    localcloud.stop()
    store = Store(localcloud.data_dir)  # as if localcloud had died while the job ran
    doc = store.get(JOB_KIND, "was-running")
    store.put(JOB_KIND, "was-running", {**doc, "status": "InProgress", "secondary": "Training"})
    store.close()
    job_dir = localcloud.data_dir / "sagemaker" / "training-jobs" / "was-running"
    bystander = subprocess.Popen(["sleep", "60"], cwd=job_dir / "code")  # not started by localcloud
    try:
        localcloud.restart()
        job = localcloud.client("sagemaker").describe_training_job(TrainingJobName="was-running")
        assert (job["TrainingJobStatus"], job["FailureReason"]) == ("Failed", INTERRUPTED)
        time.sleep(0.2)
        assert bystander.poll() is None, "a process localcloud did not start was killed for its directory"
    finally:
        bystander.kill()
        bystander.wait()


# --- a real model_code job -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_job(mnist, tmp_path_factory):
    """model_code/train.py trained by localcloud on 2000 real MNIST images (one epoch, 500 holdout).

    The train channel is a ManifestFile over two shards and the test channel an S3Prefix, as the
    pipeline lays them out. Yields (handle, job description).
    """
    handle = LocalCloudHandle(tmp_path_factory.mktemp("mnist-job") / "localcloud")
    try:
        s3, sm = handle.client("s3"), handle.client("sagemaker")
        s3.create_bucket(Bucket=BUCKET)
        for index, (start, stop) in enumerate(((0, 1000), (1000, 2000))):
            body = shard_bytes(mnist.train_images[start:stop], mnist.train_labels[start:stop])
            s3.put_object(Bucket=BUCKET, Key=f"lake/base/part-{index}.npz", Body=body)
        s3.put_object(
            Bucket=BUCKET,
            Key="snapshots/run-1/train.manifest",
            Body=json.dumps(
                [{"prefix": f"s3://{BUCKET}/"}, "lake/base/part-0.npz", "lake/base/part-1.npz"]
            ).encode(),
        )
        s3.put_object(
            Bucket=BUCKET,
            Key="holdout/part-0.npz",
            Body=shard_bytes(mnist.test_images[:500], mnist.test_labels[:500]),
        )
        source, _ = pack_source_dir(MODEL_CODE)
        s3.put_object(Bucket=BUCKET, Key="code/model_code.tar.gz", Body=source)
        request = job_request(
            "mnist-quick-1",
            f"s3://{BUCKET}/code/model_code.tar.gz",
            {
                "train": ("ManifestFile", f"s3://{BUCKET}/snapshots/run-1/train.manifest"),
                "test": ("S3Prefix", f"s3://{BUCKET}/holdout/"),
            },
            HyperParameters={"epochs": "1", "augment": "false", "seed": "1"},
        )
        request["AlgorithmSpecification"]["MetricDefinitions"] = METRIC_DEFINITIONS
        sm.create_training_job(**request)
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="mnist-quick-1", WaiterConfig={"Delay": 1, "MaxAttempts": 300}
        )
        yield handle, sm.describe_training_job(TrainingJobName="mnist-quick-1")
    finally:
        handle.stop()


@pytest.mark.slow
def test_a_real_job_trains_model_code_and_uploads_the_three_artifacts(mnist_job):
    handle, job = mnist_job
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    model = archive_members(handle.client("s3"), job["ModelArtifacts"]["S3ModelArtifacts"])
    assert sorted(model) == ["model.onnx", "model.pt", "model_card.json"]
    card = json.loads(model["model_card.json"])
    assert card["training_job"] == "mnist-quick-1"
    assert card["data"]["train"]["samples_used"] == 2000
    assert [shard["file"] for shard in card["data"]["train"]["shards"]] == [
        "lake/base/part-0.npz",
        "lake/base/part-1.npz",
    ]


@pytest.mark.slow
def test_a_real_job_logs_the_epoch_line_and_reports_its_metrics(mnist_job):
    handle, job = mnist_job
    lines = log_lines(handle.client("logs"), "mnist-quick-1")
    epoch_line = next(line for line in lines if line.startswith("METRICS epoch=1/1"))
    logged = float(epoch_line.split("test_accuracy=")[1].split()[0])
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert set(metrics) == {"train:loss", "test:loss", "test:accuracy"}
    assert metrics["test:accuracy"] == logged
    assert logged > 0.5  # far above chance (0.1) even after one epoch on 2000 images


@pytest.mark.slow
def test_a_corrupt_shard_fails_the_job_with_a_reason_naming_the_shard(localcloud, clients, mnist):
    sm, s3, _ = clients
    s3.put_object(Bucket=BUCKET, Key="bad/train/part-0.npz", Body=b"this is not an npz file")
    s3.put_object(
        Bucket=BUCKET,
        Key="bad/test/part-0.npz",
        Body=shard_bytes(mnist.test_images[:50], mnist.test_labels[:50]),
    )
    source, _ = pack_source_dir(MODEL_CODE)
    s3.put_object(Bucket=BUCKET, Key="code/model_code.tar.gz", Body=source)
    request = job_request(
        "corrupt-input",
        f"s3://{BUCKET}/code/model_code.tar.gz",
        {
            "train": ("S3Prefix", f"s3://{BUCKET}/bad/train/"),
            "test": ("S3Prefix", f"s3://{BUCKET}/bad/test/"),
        },
        HyperParameters={"epochs": "1"},
    )
    sm.create_training_job(**request)
    with pytest.raises(WaiterError):
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="corrupt-input", WaiterConfig=FAST_WAITER
        )
    job = sm.describe_training_job(TrainingJobName="corrupt-input")
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("AlgorithmError: ")
    assert "train shard part-0.npz" in job["FailureReason"]
    assert "not a readable .npz shard" in job["FailureReason"]


# --- the model registry --------------------------------------------------------------------------

INFERENCE = {
    "Containers": [{"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/output/job-1/output/model.tar.gz"}],
    "SupportedContentTypes": ["application/json"],
    "SupportedResponseMIMETypes": ["application/json"],
}
METRICS = {
    "ModelQuality": {
        "Statistics": {"ContentType": "application/json", "S3Uri": f"s3://{BUCKET}/evaluation/job-1.json"}
    }
}


def registry_story(sm) -> dict[str, Any]:
    """The registry calls the pipeline makes, and what it reads back, with ARNs made account-neutral."""

    def neutral(arn: str) -> str:
        return arn.split(":", 5)[5]

    seen: dict[str, Any] = {}
    group = sm.create_model_package_group(
        ModelPackageGroupName="mnist-classifier", ModelPackageGroupDescription="digits"
    )
    seen["group_arn"] = neutral(group["ModelPackageGroupArn"])
    arns = [
        sm.create_model_package(
            ModelPackageGroupName="mnist-classifier",
            ModelPackageDescription=f"run {run}",
            ModelApprovalStatus="PendingManualApproval",
            InferenceSpecification=INFERENCE,
            ModelMetrics=METRICS,
            CustomerMetadataProperties={"run_id": f"run-{run}", "accuracy": f"0.9{run}"},
        )["ModelPackageArn"]
        for run in range(3)
    ]
    seen["arns"] = [neutral(arn) for arn in arns]
    sm.update_model_package(
        ModelPackageArn=arns[1],
        ModelApprovalStatus="Approved",
        ApprovalDescription="passed the quality gate",
        CustomerMetadataProperties={"run_id": "run-1", "accuracy": "0.91", "lambda_version": "3"},
    )
    sm.update_model_package(
        ModelPackageArn=arns[2], ModelApprovalStatus="Rejected", ApprovalDescription="worse"
    )
    approved = sm.describe_model_package(ModelPackageName=arns[1])
    seen["approved"] = {
        key: approved.get(key)
        for key in (
            "ModelPackageGroupName",
            "ModelPackageVersion",
            "ModelPackageDescription",
            "ModelApprovalStatus",
            "ApprovalDescription",
            "CustomerMetadataProperties",
            "InferenceSpecification",
            "ModelMetrics",
            "ModelPackageStatus",
        )
    }
    seen["approved"]["arn"] = neutral(approved["ModelPackageArn"])
    seen["rejected_status"] = sm.describe_model_package(ModelPackageName=arns[2])["ModelApprovalStatus"]
    pages = sm.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName="mnist-classifier",
        SortBy="CreationTime",
        SortOrder="Descending",
        PaginationConfig={"PageSize": 1},
    )
    seen["newest_first"] = [
        (
            s["ModelPackageVersion"],
            s["ModelApprovalStatus"],
            s["ModelPackageGroupName"],
            neutral(s["ModelPackageArn"]),
        )
        for page in pages
        for s in page["ModelPackageSummaryList"]
    ]
    only_approved = sm.list_model_packages(
        ModelPackageGroupName="mnist-classifier", ModelApprovalStatus="Approved"
    )
    seen["only_approved"] = [s["ModelPackageVersion"] for s in only_approved["ModelPackageSummaryList"]]
    described_group = sm.describe_model_package_group(ModelPackageGroupName="mnist-classifier")
    seen["group"] = {
        key: described_group[key]
        for key in ("ModelPackageGroupName", "ModelPackageGroupDescription", "ModelPackageGroupStatus")
    }
    seen["groups"] = [
        g["ModelPackageGroupName"] for g in sm.list_model_package_groups()["ModelPackageGroupSummaryList"]
    ]
    errors = {}
    for label, call in {
        "describe_missing_group": lambda: sm.describe_model_package_group(ModelPackageGroupName="absent"),
        "describe_missing_package": lambda: sm.describe_model_package(ModelPackageName=arns[0][:-1] + "9"),
        "package_in_missing_group": lambda: sm.create_model_package(ModelPackageGroupName="absent"),
        "describe_missing_job": lambda: sm.describe_training_job(TrainingJobName="absent"),
    }.items():
        with pytest.raises(ClientError) as excinfo:
            call()
        errors[label] = error_of(excinfo)[0]
    seen["errors"] = errors
    return seen


def test_the_registry_behaves_like_moto_where_the_pipeline_looks(localcloud, aws):
    import boto3

    assert registry_story(localcloud.client("sagemaker")) == registry_story(boto3.client("sagemaker"))


def test_registry_versions_approval_and_metadata(clients):
    sm, _, _ = clients
    with pytest.raises(ClientError) as excinfo:
        sm.create_model_package(ModelPackageGroupName="not-yet")
    assert error_of(excinfo)[0] == "ValidationException"
    sm.create_model_package_group(ModelPackageGroupName="mnist", Tags=[{"Key": "team", "Value": "ml"}])
    with pytest.raises(ClientError) as excinfo:
        sm.create_model_package_group(ModelPackageGroupName="mnist")
    # SageMakerHook.create_model_package_group treats exactly this as "already there".
    assert error_of(excinfo)[1].startswith("Model Package Group already exists")

    first = sm.create_model_package(
        ModelPackageGroupName="mnist", CustomerMetadataProperties={"a": "1", "b": "2"}
    )
    retried = sm.create_model_package(ModelPackageGroupName="mnist", ClientToken="retry-1")["ModelPackageArn"]
    again = sm.create_model_package(ModelPackageGroupName="mnist", ClientToken="retry-1")["ModelPackageArn"]
    assert retried == again and retried.endswith("/mnist/2")

    described = sm.describe_model_package(ModelPackageName="mnist/1")
    assert described["ModelPackageArn"] == first["ModelPackageArn"]
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    assert "ModelPackageName" not in described and "LastModifiedTime" not in described

    sm.update_model_package(
        ModelPackageArn=first["ModelPackageArn"],
        ModelApprovalStatus="Approved",
        CustomerMetadataProperties={"c": "3"},
        CustomerMetadataPropertiesToRemove=["a"],
    )
    updated = sm.describe_model_package(ModelPackageName=first["ModelPackageArn"])
    assert updated["CustomerMetadataProperties"] == {"b": "2", "c": "3"}
    assert updated["ModelApprovalStatus"] == "Approved" and "LastModifiedTime" in updated
    with pytest.raises(ClientError) as excinfo:
        sm.update_model_package(ModelPackageArn=first["ModelPackageArn"], ModelApprovalStatus="Maybe")
    assert error_of(excinfo)[0] == "ValidationException"

    newest = sm.list_model_packages(ModelPackageGroupName="mnist", SortOrder="Descending", MaxResults=1)
    assert [s["ModelPackageVersion"] for s in newest["ModelPackageSummaryList"]] == [2]
    rest = sm.list_model_packages(
        ModelPackageGroupName="mnist", SortOrder="Descending", NextToken=newest["NextToken"]
    )
    assert [s["ModelPackageVersion"] for s in rest["ModelPackageSummaryList"]] == [
        1
    ] and "NextToken" not in rest

    with pytest.raises(ClientError) as excinfo:
        sm.delete_model_package_group(ModelPackageGroupName="mnist")
    assert error_of(excinfo)[0] == "ConflictException"
    sm.create_model_package_group(ModelPackageGroupName="rolled-back")
    sm.delete_model_package_group(ModelPackageGroupName="rolled-back")
    groups = sm.list_model_package_groups()["ModelPackageGroupSummaryList"]
    assert [g["ModelPackageGroupName"] for g in groups] == ["mnist"]


def test_tags_on_packages_and_jobs(clients):
    sm, _, _ = clients
    group = sm.create_model_package_group(
        ModelPackageGroupName="tagged", Tags=[{"Key": "team", "Value": "ml"}]
    )
    package = sm.create_model_package(ModelPackageGroupName="tagged", Tags=[{"Key": "run_id", "Value": "r1"}])
    arn = package["ModelPackageArn"]
    assert sm.list_tags(ResourceArn=group["ModelPackageGroupArn"])["Tags"] == [{"Key": "team", "Value": "ml"}]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "stage", "Value": "canary"}, {"Key": "run_id", "Value": "r2"}])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [
        {"Key": "run_id", "Value": "r2"},
        {"Key": "stage", "Value": "canary"},
    ]
    sm.delete_tags(ResourceArn=arn, TagKeys=["run_id", "never-there"])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "stage", "Value": "canary"}]

    job_arn = stand_in_job(
        sm, "tagged-job", channels={}, Tags=[{"Key": "dag_id", "Value": "mnist_retraining"}]
    )
    sm.add_tags(ResourceArn=job_arn, Tags=[{"Key": "attempt", "Value": "1"}])
    assert [t["Key"] for t in sm.list_tags(ResourceArn=job_arn)["Tags"]] == ["dag_id", "attempt"]
    missing = job_arn.replace("tagged-job", "absent-job")
    with pytest.raises(ClientError) as excinfo:
        sm.add_tags(ResourceArn=missing, Tags=[{"Key": "k", "Value": "v"}])
    assert error_of(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "aws:reserved", "Value": "v"}])
    assert error_of(excinfo)[0] == "ValidationException"


# --- the Airflow amazon provider -----------------------------------------------------------------


@pytest.mark.slow
def test_the_providers_training_operator_creates_a_job_and_renames_a_duplicate(
    localcloud, clients, monkeypatch
):
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator

    use_as_aws_default(monkeypatch, localcloud.endpoint_url)
    config = job_request("from-airflow", STAND_IN_SOURCE, STAND_IN_CHANNELS, HyperParameters={"seconds": "0"})
    operator = SageMakerTrainingOperator(
        task_id="train_model", config=dict(config), wait_for_completion=False, print_log=False
    )
    result = operator.execute({})
    assert result["Training"]["TrainingJobName"] == "from-airflow"
    assert result["Training"]["TrainingJobStatus"] == "InProgress"

    # The operator checks for an existing job by expecting ValidationException from describe.
    again = SageMakerTrainingOperator(
        task_id="train_model", config=dict(config), wait_for_completion=False, print_log=False
    )
    renamed = again.execute({})["Training"]["TrainingJobName"]
    assert renamed.startswith("from-airflow-") and renamed != "from-airflow"

    hook = SageMakerHook(aws_conn_id="aws_default")
    assert hook.describe_training_job("from-airflow")["TrainingJobArn"].endswith(":training-job/from-airflow")


@pytest.mark.slow
def test_the_providers_log_reader_and_sensor_read_a_finished_job(mnist_job, monkeypatch):
    from airflow.providers.amazon.aws.hooks.sagemaker import LogState, SageMakerHook
    from airflow.providers.amazon.aws.sensors.sagemaker import SageMakerTrainingSensor

    class PrintedLines:
        """Stands in for the hook's logger only, to see the lines it prints (whatever the logging
        setup of the session, which structlog's capture depends on)."""

        def __init__(self):
            self.lines = []

        def info(self, message, *args, **kwargs):
            self.lines.append(str(message))

        def __getattr__(self, level):
            return lambda *args, **kwargs: None

    handle, job = mnist_job
    use_as_aws_default(monkeypatch, handle.endpoint_url)
    hook = SageMakerHook(aws_conn_id="aws_default")
    hook._log = printed = PrintedLines()
    positions, streams = {}, []
    state, description, _ = hook.describe_training_job_with_log(
        "mnist-quick-1", positions, streams, 1, LogState.JOB_COMPLETE, job, time.monotonic()
    )
    assert state == LogState.COMPLETE
    assert list(positions) == [f"mnist-quick-1/algo-1-{int(job['TrainingStartTime'].timestamp())}"]
    assert any(message.startswith("METRICS epoch=1/1") for message in printed.lines)

    sensor = SageMakerTrainingSensor(task_id="wait_for_training", job_name="mnist-quick-1", print_log=True)
    assert sensor.poke({}) is True
